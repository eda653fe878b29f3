"""Where the Genesis parameters are drawn: today's CPU stream kept, and ``draw_on="batch"``.

``sample_genesis_params`` draws on its generator's device. A CPU generator must keep giving the
parameters every release drew (checked against digests recorded before the sampler became
device-generic: update them only for a deliberate, announced change of the stream). A generator
on another device (CUDA: Philox, which cannot replay the CPU's Mersenne Twister) passes its
uniforms through the same code, so the rates must be the published ones; checked here on every
device present. ``transform_batch`` with ``draw_on="batch"`` seeds such a generator with one word
of the caller's generator: reproducible, and equal to the reference applied to those draws.
"""

import hashlib
import math
from dataclasses import fields

import pytest
import torch

from kernels.genesis import (
    GenesisTransformConfig,
    apply_genesis_reference,
    sample_genesis_params,
    transform_batch,
)
from tests.kernels.genesis_parity import assert_matches, gen

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# sha256 (first 16 hex digits) of every drawn field, recorded with the CPU-only sampler.
CPU_DIGESTS = [
    ((3, 1, 64, 64, 32), {}, 0, "f3ac2a4c1f5b17c2"),
    ((2, 1, 17, 18, 19), {"flip_mode": "faithful", "shuffle_blocks": 50}, 123, "d679f5bedef741a9"),
]


def digest(params) -> str:
    h = hashlib.sha256()
    for f in fields(params):
        if f.init:
            h.update(getattr(params, f.name).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(("shape", "kw", "seed", "want"), CPU_DIGESTS)
def test_cpu_drawing_is_unchanged(shape, kw, seed, want):
    params = sample_genesis_params(shape, GenesisTransformConfig(**kw), gen(seed))
    assert digest(params) == want


def assert_binomial(hits: int, trials: int, p: float, what: str) -> None:
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(hits - trials * p) <= 4.5 * sigma + 1e-9, f"{what}: {hits}/{trials} vs p={p}"


@pytest.mark.parametrize("device", DEVICES)
def test_rates_on_the_generators_device(device):
    """The published rates from a generator on ``device``, with the parameters left there."""
    g = torch.Generator(device=device).manual_seed(2024)
    n = 2000
    params = sample_genesis_params((n, 1, 14, 14, 14), GenesisTransformConfig(shuffle_blocks=4), g)
    assert params.noise.device.type == device and params.shuffle_draws.device.type == device
    p = params.to("cpu")
    assert_binomial(int(p.do_shuffle.sum()), n, 0.5, "local shuffle")
    assert_binomial(int(p.do_nonlinear.sum()), n, 0.9, "nonlinear")
    assert_binomial(int(p.inverted.sum()), n, 0.5, "inverted")
    assert_binomial(int(p.do_paint.sum()), n, 0.9, "paint")
    assert_binomial(int(p.inpaint[p.do_paint].sum()), int(p.do_paint.sum()), 0.2, "inpaint")
    n_flips = (p.flips >= 0).sum(1)
    for k, q in enumerate([0.6, 0.4 * 0.6, 0.4**2 * 0.6, 0.4**3]):
        assert_binomial(int((n_flips == k).sum()), n, q, f"{k} flips")
    sizes = p.shuffle_boxes[..., 3:].flatten()  # 1 each: 14 // 10 = 1
    assert (sizes == 1).all() and ((p.shuffle_seed >= 0) & (p.shuffle_seed < 2**31)).all()
    words = p.shuffle_draws
    assert words.min() >= 0 and words.max() < 2**32
    assert_binomial(int((words >= 2**31).sum()), words.numel(), 0.5, "top bit of the words")
    assert 0.49 < float(p.noise.mean()) < 0.51


@pytest.mark.parametrize("device", DEVICES)
def test_draw_on_batch_reproducible_and_equal_to_reference_on_its_draws(device):
    """On CUDA this runs the whole GPU data path: Philox draws and the Triton kernel."""
    config = GenesisTransformConfig(shuffle_blocks=200, draw_on="batch")
    cubes = torch.rand((3, 1, 24, 22, 20), generator=gen(0))
    x1, y1 = transform_batch(cubes.to(device), config, gen(5))
    x2, y2 = transform_batch(cubes.to(device), config, gen(5))
    assert x1.device.type == device
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # restated: one 63-bit word of the caller's generator seeds the batch-device generator
    seed = int(torch.randint(0, 2**63 - 1, (), generator=gen(5)))
    drawn = torch.Generator(device=device).manual_seed(seed)
    params = sample_genesis_params(cubes.shape, config, drawn).to("cpu")
    x_ref, y_ref = apply_genesis_reference(cubes, params, config)
    assert_matches(y1, y_ref, exact=True)
    assert_matches(x1, x_ref, exact=False)
    x_cpu, _ = transform_batch(cubes, GenesisTransformConfig(shuffle_blocks=200), gen(5))
    assert not torch.equal(x1.cpu(), x_cpu)  # another stream, by design


def test_draw_on_is_checked():
    with pytest.raises(ValueError, match="draw_on"):
        GenesisTransformConfig(draw_on="gpu")
