"""The measurements behind ``python -m kernels.bench`` (its docstring says what each row is):
Genesis transform rates against the per-cube NumPy loop, and PEAC grid matching rates."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

import torch

from ._dispatch import numba_available
from .genesis import (
    GenesisTransformConfig,
    apply_genesis,
    sample_genesis_params,
    transform_batch,
)
from .grid import match_patches

BASELINE = Path(__file__).resolve().parents[1] / "bench" / "genesis_numpy_loop.py"


def _baseline():
    spec = importlib.util.spec_from_file_location("genesis_numpy_loop", BASELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.transform_batch_loop


def _best(fn, repeat: int, sync=lambda: None) -> float:
    fn()  # warm-up (compilation, caches)
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _forced(path: str, fn):
    def run():
        old = os.environ.get("ANATOMIX_KERNELS")
        os.environ["ANATOMIX_KERNELS"] = path
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop("ANATOMIX_KERNELS", None)
            else:
                os.environ["ANATOMIX_KERNELS"] = old

    return run


def _apply_only(dev: torch.Tensor, cfg: GenesisTransformConfig, calls: int):
    """Applying parameters drawn beforehand and already on the cubes' device: each call gets a
    fresh set, as in training (the kernels derive the shuffle permutations from the drawn words;
    the reference builds its table in every timed call)."""
    gen = torch.Generator().manual_seed(1)
    drawn = [sample_genesis_params(dev.shape, cfg, gen).to(dev.device) for _ in range(calls)]
    if dev.is_cuda:
        torch.cuda.synchronize()

    def run():
        return apply_genesis(dev, drawn.pop(), cfg)

    return run


def transform_rates(
    batch: int, shape: tuple[int, int, int], repeat: int, baseline_cubes: int
) -> tuple[list[tuple[str, float]], list[str]]:
    """Genesis transforms in cubes/s on every path this machine has, the released per-cube loop
    first (the baseline, ``bench/genesis_numpy_loop.py``), as ``(rows of (path, rate), notes)``."""
    cfg = GenesisTransformConfig()
    cubes = torch.rand((batch, 1, *shape))
    rows = []

    loop = _baseline()
    small = cubes[:baseline_cubes].numpy().copy()  # float32, as the released loader gives them
    t = _best(lambda: loop(small, seed=0), 1)
    rows.append(("(a) released per-cube loop (NumPy), CPU", baseline_cubes / t))
    gen = torch.Generator().manual_seed(0)
    t = _best(_forced("torch", lambda: transform_batch(cubes, cfg, gen)), repeat)
    rows.append(("(b) PyTorch reference, CPU, batched", batch / t))
    gbs = []
    moved = 4 * cubes.numel() * cubes.element_size()  # cube + noise in, x + y out
    if numba_available():
        t = _best(_forced("numba", lambda: transform_batch(cubes, cfg, gen)), repeat)
        rows.append(("(b2) Numba CPU kernel (compiled, parallel over cubes)", batch / t))
        t = _best(_forced("numba", _apply_only(cubes, cfg, repeat + 1)), repeat)
        rows.append(("(b3) Numba CPU kernel, apply only", batch / t))
        big = torch.empty(64 << 20)  # 256 MB: past the caches, so the copy is memory speed
        copy_t = _best(lambda: big.clone(), repeat)
        copy_gbs = 2 * big.numel() * big.element_size() / copy_t / 1e9
        del big
        gbs.append(f"(b3) {moved / t / 1e9:.2f} GB/s for the bytes the op must move; memory copy "
                   f"{copy_gbs:.1f} GB/s ({moved / t / 1e9 / copy_gbs:.0%})")  # fmt: skip
    else:
        rows.append(("(b2) Numba CPU kernel: numba is not installed", float("nan")))
    t = _best(lambda: sample_genesis_params(cubes.shape, cfg, gen), repeat)
    rows.append(("(s) drawing the parameters alone, CPU", batch / t))

    if torch.cuda.is_available():
        dev = cubes.cuda()
        sync = torch.cuda.synchronize
        t = _best(_forced("torch", lambda: transform_batch(dev, cfg, gen)), repeat, sync)
        rows.append(("(c) PyTorch reference, GPU", batch / t))
        try:
            t = _best(_forced("triton", lambda: transform_batch(dev, cfg, gen)), repeat, sync)
            rows.append(("(d) Triton kernel, GPU", batch / t))
            on_gpu = dataclasses.replace(cfg, draw_on="batch")
            t = _best(_forced("triton", lambda: transform_batch(dev, on_gpu, gen)), repeat, sync)
            rows.append(("(d3) Triton kernel, drawing on the GPU (draw_on=batch)", batch / t))
            for label, path in (
                ("(c2) PyTorch reference", "torch"),
                ("(d2) Triton kernel", "triton"),
            ):
                t = _best(_forced(path, _apply_only(dev, cfg, repeat + 1)), repeat, sync)
                rows.append((f"{label}, GPU, apply only", batch / t))
            copy_t = _best(lambda: dev.clone(), repeat, sync)
            copy_gbs = 2 * dev.numel() * dev.element_size() / copy_t / 1e9
            gbs.append(
                f"(d2) {moved / t / 1e9:.1f} GB/s for the bytes the op must move (cubes and noise "
                f"in, x and y out); device copy {copy_gbs:.1f} GB/s "
                f"({moved / t / 1e9 / copy_gbs:.0%})"
            )
        except RuntimeError as exc:
            rows.append((f"(d) Triton kernel unavailable: {exc}", float("nan")))
    else:
        rows.append(("(c)/(d) GPU paths: no CUDA device on this machine", float("nan")))

    return rows, gbs


def grid_rates(batch: int, repeat: int) -> list[tuple[str, float]]:
    """PEAC grid matching, forward + backward, in samples/s per path (CPU reference first):
    14×14 token maps of 1024 channels per view."""
    gen = torch.Generator().manual_seed(0)
    tokens1 = torch.rand(batch, 14, 14, 1024, generator=gen)
    tokens2 = torch.rand(batch, 14, 14, 1024, generator=gen)
    box1 = torch.randint(0, 5, (batch, 2), generator=gen)
    box2 = torch.randint(0, 5, (batch, 2), generator=gen)

    def step(t1, t2):
        a, b = t1.clone().requires_grad_(), t2.clone().requires_grad_()
        match_patches(a, b, box1.to(t1.device), box2.to(t1.device)).backward()

    rows = [
        ("reference, CPU", batch / _best(_forced("torch", lambda: step(tokens1, tokens2)), repeat))
    ]
    if torch.cuda.is_available():
        d1, d2 = tokens1.cuda(), tokens2.cuda()
        sync = torch.cuda.synchronize
        rows.append(
            ("reference, GPU", batch / _best(_forced("torch", lambda: step(d1, d2)), repeat, sync))
        )
        rows.append(
            ("Triton, GPU", batch / _best(_forced("triton", lambda: step(d1, d2)), repeat, sync))
        )
    else:
        rows.append(("GPU paths: no CUDA device on this machine", float("nan")))
    return rows
