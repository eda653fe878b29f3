"""Throughput of the kernels' ops: Genesis transforms (vs a per-cube NumPy loop), grid matching.

    python -m kernels.bench [--batch 32] [--repeat 3]

Prints cubes/s for (a) the released per-cube loop restated (``bench/genesis_numpy_loop.py``:
float32 cubes, the release's RNG calls; tests/reference/test_genesis_release_loop.py), (b) the
PyTorch reference batched on CPU, (b2) the Numba CPU kernel (``kernels/genesis_cpu.py``; where
Numba imports), and where CUDA exists (c) the reference on the GPU, (d) the Triton kernel and (d3)
the Triton kernel with the parameters drawn on the GPU, with ratios to (a) measured in the same
run (these rows include drawing the parameters: ``transform_batch``); then (b3)/(c2)/(d2) each
kernel applying parameters already on its device, with the achieved GB/s for the bytes the op
must move against a measured copy, and (s) the drawing alone (CPU). Not part of the test suite.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--baseline-cubes",
        type=int,
        default=32,
        help="cubes timed for the slow NumPy loop (its rate is per cube)",
    )
    args = parser.parse_args()
    from .rates import grid_rates, transform_rates  # torch: after --help

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


if __name__ == "__main__":
    main()
