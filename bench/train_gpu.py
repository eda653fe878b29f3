"""Training-step throughput on a CUDA GPU at the published settings, custom kernels vs references.

    python -m bench.train_gpu [--steps 20] [--warmup 3]

Models Genesis (configs/genesis/paper.yaml: 3D U-Net, batch 6 of 64x64x32 cubes, 10,000 shuffle
blocks) and PEAC (configs/peac/paper.yaml: Swin-B at 448, batch 8 of 608 px films, expanders of
8192 and 512). One step is what the engine does per batch: the method's loss (transforms or views
included), backward, an SGD step, and for PEAC the teacher's EMA update. Each row runs with the
Triton kernels (``ANATOMIX_KERNELS=triton``) or the PyTorch references (``=torch``), in fp32 or
under bf16 autocast; ratios are measured in this one run. Inputs are random in [0, 1] at the
published shapes (throughput does not depend on anatomy). Needs CUDA; not part of the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from train.config import load_config
from train.engine import StepContext, step_generator
from train.genesis.config import GenesisConfig
from train.genesis.method import GenesisMethod
from train.peac.config import PEACConfig
from train.peac.method import PEACMethod

ROOT = Path(__file__).resolve().parents[1]


def _method(name: str, run_dir: Path, batch_size: int | None):
    over = [f"loop.batch_size={batch_size}"] if batch_size else []
    if name == "genesis":
        cfg = load_config(GenesisConfig, ROOT / "configs/genesis/paper.yaml", over)
        method = GenesisMethod(cfg, run_dir)

        def batch(g):
            return torch.rand((cfg.loop.batch_size, 1, *cfg.data.cube_size), generator=g)

        return method, batch
    cfg = load_config(PEACConfig, ROOT / "configs/peac/paper.yaml", over)
    method = PEACMethod(cfg, run_dir)

    def batch(g):
        size = cfg.load_size
        return torch.rand((cfg.loop.batch_size, 1, size, size), generator=g)

    return method, batch


def time_steps(name: str, kernels: str, amp: str, args) -> dict:
    """Median step time of ``args.steps`` steps after ``args.warmup`` untimed ones."""
    os.environ["ANATOMIX_KERNELS"] = kernels
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    with tempfile.TemporaryDirectory() as tmp:
        method, make_batch = _method(name, Path(tmp), args.batch)
        total = args.warmup + args.steps
        model = method.build_model()[0].to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        data_gen = torch.Generator().manual_seed(0)
        batches = [make_batch(data_gen).to(device) for _ in range(4)]  # rotate: no cache effects
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(total):
            sync()
            start = time.perf_counter()
            ctx = StepContext(
                epoch=0, phase=0, step_in_phase=i, steps_in_phase=total, global_step=i,
                epochs=1, phases=1,
            )  # fmt: skip
            with autocast:
                loss = method.loss(model, batches[i % 4], step_generator(0, i), ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(model, ctx)  # the engine's hook: PEAC's EMA teacher update
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{name} {kernels} {amp}: loss {loss.item()} at step {i}")
        step = statistics.median(times)
        return {
            "step_s": step,
            "spread": (max(times) - min(times)) / step,
            "samples_s": batches[0].shape[0] / step,
            "peak_gib": (
                torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            ),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["genesis", "peac"])
    parser.add_argument("--batch", type=int, default=None, help="override the published batch")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script out")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench.train_gpu needs a CUDA GPU; none is visible on this machine")
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{card}, torch {torch.__version__}, triton kernels vs torch references")
    print(
        f"{'method':<8} {'amp':<5} {'kernels':<8} {'step ms':>8} {'samples/s':>10} "
        f"{'× torch':>8} {'spread':>7} {'peak GiB':>9}"
    )
    for method in args.methods:
        for amp in ("off", "bf16"):
            paths = ("torch", "triton") if args.device.startswith("cuda") else ("torch",)
            rows = {k: time_steps(method, k, amp, args) for k in paths}
            for kernels, r in rows.items():
                ratio = rows["torch"]["step_s"] / r["step_s"]
                print(
                    f"{method:<8} {amp:<5} {kernels:<8} {r['step_s'] * 1e3:>8.1f} "
                    f"{r['samples_s']:>10.1f} {ratio:>8.2f} {r['spread']:>7.0%} "
                    f"{r['peak_gib']:>9.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
