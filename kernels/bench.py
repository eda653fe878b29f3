"""Throughput of the kernels' ops: Genesis transforms (vs a per-cube NumPy loop), grid matching.

    python -m kernels.bench [--batch 32] [--repeat 3]

Prints cubes/s for (a) the per-cube NumPy loop with the published pipeline's structure
(``bench/genesis_numpy_loop.py``), (b) the PyTorch reference batched on CPU, (b2) the Numba CPU
kernel (``kernels/genesis_cpu.py``; where Numba imports), and where CUDA exists (c) the reference
on the GPU and (d) the Triton kernel, with ratios to (a) measured in the same run (these rows
include drawing the parameters: ``transform_batch``); then (s) the drawing alone (CPU), and
(c2)/(d2) the two GPU paths applying parameters already on the GPU, with (d2)'s achieved GB/s for
the bytes the op must move against a measured device-to-device copy. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
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
    """Applying parameters drawn beforehand and already on the GPU: each call gets a fresh set, so
    the permutation table is still built on the device in every timed call, as in training."""
    gen = torch.Generator().manual_seed(1)
    drawn = [sample_genesis_params(dev.shape, cfg, gen).to(dev.device) for _ in range(calls)]
    torch.cuda.synchronize()

    def run():
        return apply_genesis(dev, drawn.pop(), cfg)

    return run


def transform_rates(
    batch: int, shape: tuple[int, int, int], repeat: int, baseline_cubes: int
) -> tuple[list[tuple[str, float]], list[str]]:
    """Genesis transforms in cubes/s on every path this machine has, NumPy loop first (the
    baseline), as ``(rows of (path, rate), notes)``."""
    cfg = GenesisTransformConfig()
    cubes = torch.rand((batch, 1, *shape))
    rows = []

    loop = _baseline()
    small = cubes[:baseline_cubes].numpy().astype(np.float64)
    t = _best(lambda: loop(small, seed=0), 1)
    rows.append(("(a) NumPy per-cube loop, CPU", baseline_cubes / t))
    gen = torch.Generator().manual_seed(0)
    t = _best(_forced("torch", lambda: transform_batch(cubes, cfg, gen)), repeat)
    rows.append(("(b) PyTorch reference, CPU, batched", batch / t))
    if numba_available():
        t = _best(_forced("numba", lambda: transform_batch(cubes, cfg, gen)), repeat)
        rows.append(("(b2) Numba CPU kernel (compiled, parallel over cubes)", batch / t))
    else:
        rows.append(("(b2) Numba CPU kernel: numba is not installed", float("nan")))

    gbs = []
    if torch.cuda.is_available():
        t = _best(lambda: sample_genesis_params(cubes.shape, cfg, gen), repeat)
        rows.append(("(s) drawing the parameters alone, CPU", batch / t))
        dev = cubes.cuda()
        sync = torch.cuda.synchronize
        t = _best(_forced("torch", lambda: transform_batch(dev, cfg, gen)), repeat, sync)
        rows.append(("(c) PyTorch reference, GPU", batch / t))
        try:
            t = _best(_forced("triton", lambda: transform_batch(dev, cfg, gen)), repeat, sync)
            rows.append(("(d) Triton kernel, GPU", batch / t))
            for label, path in (
                ("(c2) PyTorch reference", "torch"),
                ("(d2) Triton kernel", "triton"),
            ):
                t = _best(_forced(path, _apply_only(dev, cfg, repeat + 1)), repeat, sync)
                rows.append((f"{label}, GPU, apply only", batch / t))
            moved = 4 * dev.numel() * dev.element_size()  # cube + noise in, x + y out
            copy_t = _best(lambda: dev.clone(), repeat, sync)
            copy_gbs = 2 * dev.numel() * dev.element_size() / copy_t / 1e9
            gbs = [
                f"(d2) {moved / t / 1e9:.1f} GB/s for the bytes the op must move (cubes and noise "
                f"in, x and y out; the permutation table excluded); device copy {copy_gbs:.1f} "
                f"GB/s ({moved / t / 1e9 / copy_gbs:.0%})"
            ]
        except RuntimeError as exc:
            rows.append((f"(d) Triton kernel unavailable: {exc}", float("nan")))
    else:
        rows.append(("(c)/(d) GPU paths: no CUDA device on this machine", float("nan")))

    return rows, gbs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--baseline-cubes",
        type=int,
        default=8,
        help="cubes timed for the slow NumPy loop (its rate is per cube)",
    )
    args = parser.parse_args()
    rows, notes = transform_rates(args.batch, tuple(args.shape), args.repeat, args.baseline_cubes)
    base = rows[0][1]
    print(f"Genesis transforms, cubes {tuple(args.shape)}, batch {args.batch}")
    print(f"{'path':<54} {'cubes/s':>10} {'× (a)':>8}")
    for name, rate in rows:
        print(f"{name:<54} {rate:>10.1f} {rate / base:>8.1f}")
    for line in notes:
        print(line)
    grid = grid_rates(args.batch, args.repeat)
    print(f"\nPEAC grid matching fwd+bwd, batch {args.batch}, 14×14×1024 tokens per view")
    print(f"{'path':<54} {'samples/s':>10} {'× ref CPU':>10}")
    for name, rate in grid:
        print(f"{name:<54} {rate:>10.1f} {rate / grid[0][1]:>10.2f}")


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


if __name__ == "__main__":
    main()
