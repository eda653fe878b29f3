"""ONNX Runtime against PyTorch eager on CPU: latency, throughput and the accuracy cost of INT8.

    python -m bench.export [--quick] [--repeats N] [--no-accuracy] [--families genesis ark peac]

Issue #8, item 7: is serving through an export worth it on a CPU? For each model family at its
CPU-sized ("tiny") and published ("paper") size, a randomly initialised model is saved, exported
with ``export.bundle.build_export`` (fp32 ONNX and an INT8 ONNX, both parity-checked by the
exporter) and timed three ways on the same inputs: PyTorch eager fp32 (the model as trained; for
the Models Genesis U-Net that is the released batch-statistics model, which is not batch
independent), ONNX Runtime fp32 and ONNX Runtime INT8 (both through ``export.runtime.load``, the
path serving uses). Latency is the median of batch-1 calls, throughput batch 8 over the median
batch-8 call. The contenders alternate call by call (rotating order, a short pause between calls),
so a busy machine slows all of them alike and only ratios from one run are compared. PyTorch and
ONNX Runtime get the same number of intra-op threads (default: every core).

Speed does not depend on the weights, but the cost of INT8 in accuracy does: with ``--accuracy``
(the default) two tiny models are trained with the project's CLI (``python -m train.run``; a
finished run under ``<out>/runs`` is reused), exported with ``precision="int8"``, and scored
with ONNX Runtime fp32 and INT8 on identical preprocessed inputs: Dice on the synthetic
nodule-segmentation test cubes (Models Genesis fine-tuning) and mean AUROC on the Ark synthetic
validation sets.

Targets (issue #8), printed as PASS/MISS: ONNX Runtime fp32 >= 1.3x PyTorch eager throughput per
family; INT8 >= 2x PyTorch eager throughput with an AUROC/Dice drop <= 0.5 points. Writes
``<out>/results.json``. Not part of the test suite. Run it as a module from the repository root
(``python bench/export.py`` would let this file shadow the ``export`` package).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: keep bench/ from shadowing the export package

from export.adapters import build_graph  # noqa: E402
from export.bundle import ExportOptions, build_export  # noqa: E402
from export.manifest import read_manifest  # noqa: E402
from export.runtime import Runtime, load  # noqa: E402
from export.source import ModelSource, resolve_source  # noqa: E402
from models.ark import ARK  # noqa: E402
from models.checkpoint import save_weights  # noqa: E402
from models.peac import PEAC  # noqa: E402
from models.registry import build_model, family_names, get_family  # noqa: E402
from models.unet3d import GENESIS_CLASSIFIER, GENESIS_UNET  # noqa: E402

FAMILIES = tuple(family_names())
CONTENDERS = ("torch", "ort_fp32", "ort_int8")
BATCHES = (1, 8)
SLOW_S = 5.0  # a warm-up call slower than this gets at most SLOW_REPEATS timed calls
SLOW_REPEATS = 3
PAUSE_S = 0.05  # between timed calls: lets ONNX Runtime's spinning worker threads go idle
FP32_TARGET, INT8_TARGET, DROP_TARGET = 1.3, 2.0, 0.5
#: Ark head sizes: the tiny preset's synthetic datasets (synth_cxpt, synth_nih, synth_vindr) and
#: Ark-6 as published (MIMIC, CheXpert, ChestX-ray14: 14; RSNA: 3; VinDr "ark": 6; Shenzhen: 1).
ARK_HEADS = {"tiny": [5, 3, 4], "paper": [14, 14, 14, 3, 6, 1]}
FINETUNE_ARGS = ["finetune", "--config", "configs/genesis/finetune_tiny.yaml"]
ARK_ARGS = ["pretrain", "--method", "ark", "--config", "configs/ark/tiny.yaml"]


@dataclass(frozen=True)
class Spec:
    """One model to time.

    Attributes:
        key: row name (and folder under ``<out>/models``).
        family: ``genesis``, ``ark`` or ``peac``.
        model_name: registry name.
        model_args: constructor keyword arguments.
        input_shape: one sample, ``(C, X, Y, Z)`` or ``(C, H, W)``.
        calibration: phantom inputs for INT8 calibration and the exporter's agreement check.
    """

    key: str
    family: str
    model_name: str
    model_args: dict
    input_shape: tuple[int, ...]
    calibration: int = 16


def _preset(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))


def _ark_spec(size: str) -> Spec:
    cfg = _preset(f"configs/ark/{size}.yaml")
    px = int(cfg["views"]["size"])
    args = {k: cfg["model"][k] for k in ("backbone", "embed_dim", "projector")}
    args |= {"img_size": px, "head_sizes": ARK_HEADS[size]}
    n = 16 if size == "tiny" else 4
    return Spec(f"ark_{size}", ARK.family, ARK.model_name, args, (3, px, px), n)


def _peac_spec(size: str) -> Spec:
    m = _preset(f"configs/peac/{size}.yaml")["model"]
    args = {k: m[k] for k in ("backbone", "img_size", "global_dims", "local_dims")}
    px = int(m["img_size"])
    n = 16 if size == "tiny" else 4
    return Spec(f"peac_{size}", PEAC.family, PEAC.model_name, args, (3, px, px), n)


def _genesis_specs(cube: tuple[int, int, int]) -> list[Spec]:
    tag = "x".join(map(str, cube))
    unet, cls = GENESIS_UNET, GENESIS_CLASSIFIER
    return [
        Spec(f"genesis_unet_{tag}", unet.family, unet.model_name, {"norm": "batch_stats"},
             (1, *cube)),
        Spec(f"genesis_cls_{tag}", cls.family, cls.model_name, {"n_classes": 1}, (1, *cube)),
    ]  # fmt: skip


def build_specs(families, quick: bool) -> list[Spec]:
    """The models to time: tiny and paper sizes, or tiny only (``quick``)."""
    sizes = ("tiny",) if quick else ("tiny", "paper")
    specs = _genesis_specs((32, 32, 16) if quick else (64, 64, 32))
    specs += [_ark_spec(s) for s in sizes] + [_peac_spec(s) for s in sizes]
    return [s for s in specs if s.family in families]


# -- export ------------------------------------------------------------------------------------


def _current_export(export_dir: Path, sha256: str) -> bool:
    """An export of exactly these weights, with its INT8 file, is already there."""
    try:
        m = read_manifest(export_dir)
    except Exception:  # absent, partial or stale: export again
        return False
    return m.source.get("sha256") == sha256 and m.file("onnx", "int8") is not None


def export_int8(source: ModelSource, export_dir: Path, options: ExportOptions) -> float | None:
    """Export fp32 + INT8 unless already exported; the seconds it took (None when reused)."""
    if _current_export(export_dir, source.sha256):
        print(f"  reusing {export_dir}", flush=True)
        return None
    result = build_export(source, export_dir, options, log=lambda m: print(f"  {m}", flush=True))
    return result.seconds


def prepare(spec: Spec, out: Path) -> tuple[ModelSource, Path, float | None]:
    """Random weights (seed 0, saved once) → ``ModelSource`` → fp32 + INT8 export."""
    folder = out / "models" / spec.key
    weights = folder / "weights.safetensors"
    if not weights.is_file():
        torch.manual_seed(0)
        model = build_model(spec.model_name, **spec.model_args)
        save_weights(model, weights, model_name=spec.model_name, model_args=spec.model_args)
        del model
    source = resolve_source(weights)
    roi = tuple(spec.input_shape[1:]) if len(spec.input_shape) == 4 else None
    options = ExportOptions(
        precision="int8", roi_size=roi, calibration_samples=spec.calibration, name=spec.key
    )
    return source, folder / "export", export_int8(source, folder / "export", options)


# -- timing ------------------------------------------------------------------------------------


def torch_predictor(source: ModelSource) -> Callable[[np.ndarray], list[np.ndarray]]:
    """PyTorch eager fp32 on the model as trained, returning what the export returns.

    Genesis: the loaded model itself (batch-statistics normalisation, as released) plus the
    output sigmoid. Ark / PEAC: the export wrapper around the trained model (embedding and head
    probabilities; PEAC's token map), i.e. the same forward without the training-only heads.
    """
    model = source.model.eval()
    if get_family(source.model_name).family == GENESIS_UNET.family:
        logits = source.model_name == GENESIS_CLASSIFIER.model_name or model.out_activation is None

        def module(x):
            y = model(x)
            return torch.sigmoid(y) if logits else y

    else:
        module = build_graph(model, source.model_name, card=source.card).module.eval()

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            y = module(torch.from_numpy(x))
        return [t.numpy() for t in (y if isinstance(y, (tuple, list)) else (y,))]

    return run


def ort_predictor(rt: Runtime) -> Callable[[np.ndarray], list[np.ndarray]]:
    """``Runtime.predict`` (the serving path: input checks, then the session) as a list."""
    return lambda x: list(rt.predict(x).values())


def _timed(fn: Callable, x: np.ndarray) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    y = fn(x)
    return time.perf_counter() - start, y


def time_interleaved(fns: dict[str, Callable], x: np.ndarray, repeats: int) -> dict[str, list]:
    """Seconds of ``repeats`` calls per contender, alternating, the order rotating each round."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(PAUSE_S)
            times[k].append(_timed(fns[k], x)[0])
    return times


def _max_abs(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(p.astype(np.float64) - q).max()) for p, q in zip(a, b, strict=True))


def _loadavg() -> float:
    """The 1-minute load average (the machine is shared: recorded beside each measurement)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def measure_batch(fns: dict[str, Callable], shape, batch: int, repeats: int) -> dict:
    """One warm-up call each (their outputs compared), then the interleaved timed calls."""
    load_before = _loadavg()
    x = np.random.default_rng(batch).random((batch, *shape), dtype=np.float32)
    warm = {k: _timed(fn, x) for k, fn in fns.items()}
    n = repeats if max(s for s, _ in warm.values()) <= SLOW_S else min(repeats, SLOW_REPEATS)
    times = time_interleaved(fns, x, n)
    return {
        "batch": batch,
        "repeats": n,
        "load_1min": [load_before, _loadavg()],
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "seconds": times,
        "max_abs_fp32_vs_torch": _max_abs(warm["ort_fp32"][1], warm["torch"][1]),
        "max_abs_int8_vs_fp32": _max_abs(warm["ort_int8"][1], warm["ort_fp32"][1]),
    }


def bench_model(spec: Spec, out: Path, repeats: int, threads: int) -> dict:
    """Export (or reuse) one model and time the three contenders at batch 1 and 8."""
    print(f"[bench] {spec.key}: {spec.model_name} {spec.model_args}", flush=True)
    source, export_dir, export_s = prepare(spec, out)
    runtimes = {
        p: load(export_dir, backend="ort-cpu", precision=p, threads=threads)
        for p in ("fp32", "int8")
    }
    fns = {"torch": torch_predictor(source)}
    fns |= {f"ort_{p}": ort_predictor(rt) for p, rt in runtimes.items()}
    manifest = runtimes["fp32"].manifest
    row = {
        "key": spec.key,
        "family": spec.family,
        "model_name": spec.model_name,
        "model_args": spec.model_args,
        "input": list(spec.input_shape),
        "export_s": export_s,
        "quantization": (manifest.quantization or {}).get("mode"),
        "int8_agreement_vs_fp32": (manifest.quantization or {}).get("agreement_vs_fp32"),
        "batch_norm": manifest.inference.get("batch_norm"),
    }
    for b in BATCHES:
        row[f"b{b}"] = measure_batch(fns, spec.input_shape, b, repeats)
        med = row[f"b{b}"]["median_s"]
        print(
            f"  batch {b}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()),
            flush=True,
        )
    b8 = row["b8"]["median_s"]
    row["latency_ms"] = {k: v * 1e3 for k, v in row["b1"]["median_s"].items()}
    row["throughput"] = {k: 8 / v for k, v in b8.items()}
    row["ratio_fp32"] = b8["torch"] / b8["ort_fp32"]
    row["ratio_int8"] = b8["torch"] / b8["ort_int8"]
    return row


# -- accuracy ----------------------------------------------------------------------------------


def _finished(run_dir: Path) -> bool:
    """The run wrote its weights and its last checkpoint is past its last epoch."""
    latest = run_dir / "checkpoints" / "latest"
    if not (run_dir / "model.safetensors").is_file() or not latest.is_file():
        return False
    state = torch.load(
        run_dir / "checkpoints" / latest.read_text().strip() / "state.pt",
        map_location="cpu",
        weights_only=True,
    )
    epochs = yaml.safe_load((run_dir / "config.yaml").read_text())["loop"]["epochs"]
    progress = state["progress"]
    return bool(progress["finished"] or progress["epoch"] >= epochs)


def ensure_run(cli_args: list[str], run_dir: Path) -> dict:
    """Train with ``python -m train.run`` unless ``run_dir`` holds a finished run."""
    cmd = [sys.executable, "-m", "train.run", *cli_args, "--run-dir", str(run_dir)]
    if _finished(run_dir):
        print(f"  reusing the finished run {run_dir}", flush=True)
        return {"command": " ".join(cmd[1:]), "trained_s": None}
    if (run_dir / "checkpoints" / "latest").is_file():
        cmd.append("--resume")
    print(f"  training: {' '.join(cmd[1:])} (log: {run_dir}.log)", flush=True)
    start = time.perf_counter()
    with open(f"{run_dir}.log", "w", encoding="utf-8") as logf:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=logf, stderr=subprocess.STDOUT)
    return {"command": " ".join(cmd[1:]), "trained_s": time.perf_counter() - start}


def _accuracy_export(run_dir: Path, out: Path, threads: int) -> tuple[ModelSource, dict]:
    source = resolve_source(run_dir)
    export_dir = out / "accuracy" / run_dir.name
    export_int8(source, export_dir, ExportOptions(precision="int8", name=run_dir.name))
    rts = {
        p: load(export_dir, backend="ort-cpu", precision=p, threads=threads)
        for p in ("fp32", "int8")
    }
    return source, rts


def genesis_dice(run_dir: Path, out: Path, threads: int) -> dict:
    """Test-cube Dice of a fine-tuned U-Net: ORT fp32 and INT8, and PyTorch as a reference."""
    from train.config import load_config
    from train.finetune.config import FinetuneConfig
    from train.finetune.method import score_cubes
    from train.finetune.tasks import build_task
    from train.metrics import dice

    cfg = load_config(FinetuneConfig, run_dir / "config.yaml")
    task = build_task(cfg.task.name, **cfg.task.args)
    source, rts = _accuracy_export(run_dir, out, threads)
    x, y = task.test.batch(range(len(task.test)))
    x, truth = x.numpy(), y.numpy() >= 0.5
    thr = cfg.eval.threshold
    scores = {
        p: float(dice(rt.predict(x)["probabilities"] >= thr, truth).mean()) for p, rt in rts.items()
    }
    ref = score_cubes(source.model.eval(), task.test, "segmentation", thr, torch.device("cpu"))
    return {
        "metric": "dice",
        "set": f"{task.name} test cubes ({len(task.test)}, {'x'.join(map(str, task.cube_size))})",
        "fp32": scores["fp32"],
        "int8": scores["int8"],
        "torch_eager_batch_stats": float(ref["dice"]),
        "quantization": rts["int8"].manifest.quantization["mode"],
    }


def ark_auroc(run_dir: Path, out: Path, threads: int) -> dict:
    """Mean validation AUROC over the Ark synthetic datasets: ORT fp32 and INT8, and PyTorch."""
    from train.ark.config import ArkConfig
    from train.ark.data import build_sources, eval_resize
    from train.ark.evaluate import score_probs, score_sources
    from train.config import load_config
    from train.views2d import normalize, resize_center_crop

    cfg = load_config(ArkConfig, run_dir / "config.yaml")
    size = cfg.views.size
    cache = cfg.data.cache_dir or str(run_dir / "cache")
    sources = build_sources(cfg.data, cache, splits=("val",), show=False)["val"]
    source, rts = _accuracy_export(run_dir, out, threads)
    heads = [o.name for o in rts["fp32"].manifest.outputs if o.head is not None]
    per: dict[str, dict] = {p: {} for p in rts}
    for src in sources:
        images, _, _, head = src.batch(list(range(len(src))))
        x = normalize(resize_center_crop(images, eval_resize(size), size)).numpy()
        for p, rt in rts.items():
            probs = rt.predict(x)[heads[int(head[0])]]
            res = score_probs(
                probs, np.asarray(src.target), np.asarray(src.mask), src.label_names, src.task
            )
            per[p][src.name] = res["mean_auroc"]
    ref = score_sources(source.model.eval(), sources, torch.device("cpu"), size=size)
    mean = {p: float(np.nanmean(list(v.values()))) for p, v in per.items()}
    return {
        "metric": "mean_auroc",
        "set": "Ark synthetic val sets: " + ", ".join(f"{s.name} ({len(s)})" for s in sources),
        "fp32": mean["fp32"],
        "int8": mean["int8"],
        "per_dataset": per,
        "torch_eager": float(ref["mean_auroc"]),
        "quantization": rts["int8"].manifest.quantization["mode"],
    }


def run_accuracy(out: Path, threads: int, families) -> dict:
    """Train (or reuse) the tiny runs, export them INT8, and score fp32 against INT8."""
    jobs = {
        GENESIS_UNET.family: (FINETUNE_ARGS, "genesis_finetune_tiny", genesis_dice),
        ARK.family: (ARK_ARGS, "ark_tiny", ark_auroc),
    }
    results = {}
    for family, (cli_args, name, score) in jobs.items():
        if family not in families:
            continue
        print(f"[bench] accuracy: {family}", flush=True)
        run_dir = out / "runs" / name
        info = ensure_run(cli_args, run_dir)
        res = score(run_dir, out, threads) | info
        res["drop_points"] = 100.0 * (res["fp32"] - res["int8"])
        results[family] = res
    return results


# -- report ------------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets(rows: list[dict], accuracy: dict, families) -> list[dict]:
    """PASS/MISS per family: every measured model of the family must meet a speed target."""
    out = []
    for fam in families:
        fam_rows = [r for r in rows if r["family"] == fam]
        if not fam_rows:
            continue
        fp32 = {r["key"]: r["ratio_fp32"] for r in fam_rows}
        int8 = {r["key"]: r["ratio_int8"] for r in fam_rows}
        acc = accuracy.get(fam)
        speed_ok = all(v >= INT8_TARGET for v in int8.values())
        acc_ok = None if acc is None else acc["drop_points"] <= DROP_TARGET
        both = False if not speed_ok or acc_ok is False else (None if acc_ok is None else True)
        out += [
            {
                "family": fam,
                "target": f"ORT fp32 >= {FP32_TARGET}x torch (b8 img/s)",
                "measured": fp32,
                "verdict": _verdict(all(v >= FP32_TARGET for v in fp32.values())),
            },
            {
                "family": fam,
                "target": f"INT8 >= {INT8_TARGET}x torch (b8 img/s)",
                "measured": int8,
                "verdict": _verdict(speed_ok),
            },
            {
                "family": fam,
                "target": f"INT8 {acc['metric'] if acc else 'accuracy'} drop "
                f"<= {DROP_TARGET} points",
                "measured": None if acc is None else acc["drop_points"],
                "verdict": _verdict(acc_ok),
            },
            {
                "family": fam,
                "target": "INT8 target (speed and accuracy)",
                "measured": None,
                "verdict": _verdict(both),
            },
        ]
    return out


def format_speed(rows: list[dict]) -> str:
    """The speed table as printed."""
    head = (
        f"{'model':<22}{'input':<14}{'torch ms':>9}{'fp32 ms':>9}{'int8 ms':>9}"
        f"{'torch/s':>9}{'fp32/s':>9}{'int8/s':>9}{'fp32x':>7}{'int8x':>7}  q        n    load"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lat, thr = r["latency_ms"], r["throughput"]
        lines.append(
            f"{r['key']:<22}{'x'.join(map(str, r['input'])):<14}"
            + "".join(f"{lat[k]:>9.1f}" for k in CONTENDERS)
            + "".join(f"{thr[k]:>9.2f}" for k in CONTENDERS)
            + f"{r['ratio_fp32']:>7.2f}{r['ratio_int8']:>7.2f}  {r['quantization'] or '-':<8} "
            + f"{r['b1']['repeats']}/{r['b8']['repeats']}  "
            + f"{max(r[f'b{b}']['load_1min'][i] for b in BATCHES for i in (0, 1)):.1f}"
        )
    return "\n".join(lines)


def format_accuracy(accuracy: dict) -> str:
    """The INT8 accuracy table as printed."""
    lines = [
        f"{'family':<9}{'metric':<12}{'ORT fp32':>9}{'ORT int8':>9}{'drop pts':>9}{'torch':>8}  set"
    ]
    for fam, a in accuracy.items():
        ref = a.get("torch_eager", a.get("torch_eager_batch_stats"))
        lines.append(
            f"{fam:<9}{a['metric']:<12}{a['fp32']:>9.4f}{a['int8']:>9.4f}{a['drop_points']:>9.2f}"
            f"{ref:>8.4f}  {a['set']} [{a['quantization']} INT8]"
        )
        per = a.get("per_dataset")
        if per:
            lines.append(
                "         per dataset, fp32 -> int8: "
                + ", ".join(f"{k} {v:.4f} -> {per['int8'][k]:.4f}" for k, v in per["fp32"].items())
            )
    return "\n".join(lines)


def format_targets(verdicts: list[dict]) -> str:
    """The PASS/MISS lines."""
    lines = []
    for v in verdicts:
        m = v["measured"]
        if isinstance(m, dict):
            m = ", ".join(f"{k} {x:.3f}x" for k, x in m.items())
        elif isinstance(m, float):
            m = f"{m:.2f} points"
        lines.append(f"{v['verdict']:<5} {v['family']:<8} {v['target']:<42} {m or ''}")
    return "\n".join(lines)


def machine(threads: int) -> dict:
    """Date, load, CPU and library versions, recorded with the numbers."""
    import onnxruntime

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": {"torch_intra_op": torch.get_num_threads(), "ort_intra_op": threads},
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "gpu": "none: TensorRT and ORT-CUDA not measured",
    }


# -- main --------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything ``results.json`` holds."""

    command: str
    start: dict
    rows: list[dict] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)
    targets: list[dict] = field(default_factory=list)
    end: dict | None = None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, default=_json_default))
        os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.export",
        description="ONNX Runtime fp32 / INT8 against PyTorch eager on CPU: batch-1 latency, "
        "batch-8 throughput, and the Dice/AUROC cost of INT8 (issue #8, item 7).",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny models only (Genesis at 32x32x16), 3 repeats"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed calls per contender and batch (default 7, --quick 3; a warm-up "
        f"call over {SLOW_S:g} s caps it at {SLOW_REPEATS})",
    )
    p.add_argument(
        "--accuracy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train tiny runs (or reuse them) and measure the INT8 Dice/AUROC drop",
    )
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="intra-op threads for both PyTorch and ONNX Runtime (default: all cores)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench/out/export",
        help="exports, runs and results.json (default bench/out/export)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    report = Report(" ".join(["python -m bench.export", *sys.argv[1:]]), machine(args.threads))
    print(f"[bench] {report.start}", flush=True)
    for spec in build_specs(args.families, args.quick):
        report.rows.append(bench_model(spec, out, repeats, args.threads))
        report.write(out / "results.json")
        gc.collect()
    if args.accuracy:
        report.accuracy = run_accuracy(out, args.threads, args.families)
    report.targets = targets(report.rows, report.accuracy, args.families)
    report.end = machine(args.threads)
    report.write(out / "results.json")
    print(
        "\nLatency (batch 1, median ms) and throughput (batch 8, images/s), CPU, "
        f"{args.threads} threads for torch and ORT; ratios = batch-8 throughput / torch's; "
        "n = timed calls per contender (b1/b8); load = highest 1-min load average seen"
    )
    print(format_speed(report.rows))
    print(
        "genesis_unet torch = the released batch-statistics model (not batch independent); "
        "its exports normalise per sample. No GPU: TensorRT / ORT-CUDA not measured."
    )
    if report.accuracy:
        print("\nINT8 accuracy (ORT fp32 vs ORT INT8 on identical preprocessed inputs)")
        print(format_accuracy(report.accuracy))
    print("\nTargets")
    print(format_targets(report.targets))
    print(f"\nstart: {report.start['uptime']}\nend:   {report.end['uptime']}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
