"""Build an export directory: ``model.onnx`` (+ INT8, fp16, ``model.plan``), verified, with
``manifest.json``.

Every file is checked before the manifest that lists it is written: the fp32 ONNX graph against
PyTorch on random inputs at batch 1 and 3 (and another spatial size for the 3D U-Net) and on
realistic inputs (synthetic phantoms through the model's own preprocessing); INT8 and fp16 files
against the fp32 graph, with their agreement recorded; a TensorRT engine against ONNX Runtime.
An export whose fp32 parity fails is not written.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from imaging.distribution import phantom_statistics
from imaging.preprocess import Preprocessing, prepare_radiograph, prepare_volume
from imaging.sliding import WindowSpec
from models.registry import get_family

from .adapters import ExportGraph, build_graph
from .manifest import (
    Manifest,
    ModelFile,
    ParityRecord,
    TensorSpec,
    sha256_file,
    write_manifest,
)
from .onnx import (
    INPUT_NAME,
    ExportError,
    compare,
    export_onnx,
    ort_session,
    quantize_int8,
    torch_outputs,
    verify_onnx,
)
from .options import FORMATS, PRECISIONS, ExportOptions
from .source import ModelSource

__all__ = ["FORMATS", "PRECISIONS", "ExportOptions", "ExportResult", "build_export"]

FP32_TOL = 1e-4  # rtol and atol of the fp32 ONNX Runtime parity check (issue #8)
FP16_TOL = 1e-2


@dataclass
class ExportResult:
    """What was written."""

    out_dir: Path
    manifest: Manifest
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _versions(opset: int) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import onnx
    import onnxruntime

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return {
        "opset": int(opset),
        "anatomix": ver("anatomix"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxslim": ver("onnxslim"),
        "tensorrt": ver("tensorrt") if ver("tensorrt") != "not installed" else ver("tensorrt-cu13"),
        "python": platform.python_version(),
    }


def phantom_inputs(graph: ExportGraph, pre: Preprocessing, n: int, seed: int = 0) -> np.ndarray:
    """``n`` realistic model inputs: synthetic chest CTs / radiographs through ``pre``.

    Used for the realistic parity check and as INT8 calibration data.
    """
    from imaging.phantoms import make_chest_ct, make_radiograph

    shape = graph.example_shape[1:]
    items = []
    for i in range(n):
        ct = make_chest_ct(10_000 + seed + i, shape=(40, 96, 96), findings=("nodule",))
        if pre.kind == "ct":
            vol = prepare_volume(ct.volume, pre)  # (1, X, Y, Z)
            items.append(_centre_cube(vol, shape[1:]))
        else:
            film = make_radiograph(ct, size=(int(shape[-2] * 1.25), int(shape[-1] * 1.1)))
            x, _ = prepare_radiograph(film.pixels, pre)
            items.append(x)
    return np.stack(items).astype(np.float32)


def _centre_cube(vol: np.ndarray, size) -> np.ndarray:
    """Centre ``(C, X, Y, Z)`` crop of ``size``, zero-padded (air, 0 on [0, 1]) where smaller."""
    out = np.zeros((vol.shape[0], *size), np.float32)
    src, dst = [slice(None)], [slice(None)]
    for have, want in zip(vol.shape[1:], size, strict=True):
        a = max((have - want) // 2, 0)
        b = max((want - have) // 2, 0)
        m = min(have, want)
        src.append(slice(a, a + m))
        dst.append(slice(b, b + m))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def random_inputs(graph: ExportGraph, seed: int = 0) -> list[np.ndarray]:
    """Random batches of 1 and 3 (and, for dynamic 3D, a larger volume of batch 2)."""
    rng = np.random.default_rng(seed)
    shape = graph.example_shape[1:]
    xs = [rng.random((b, *shape), dtype=np.float32) for b in (1, 3)]
    if graph.dynamic_spatial:
        bigger = tuple(s + 8 for s in shape[1:])
        xs.append(rng.random((2, shape[0], *bigger), dtype=np.float32))
    return xs


def _file_entry(path: Path, fmt: str, precision: str) -> ModelFile:
    return ModelFile(path.name, fmt, precision, sha256_file(path), path.stat().st_size)


def _agreement(a: list[np.ndarray], b: list[np.ndarray], graph: ExportGraph) -> dict:
    """How far a reduced-precision graph's outputs are from fp32's (per output)."""
    out = {}
    for info, x, y in zip(graph.outputs, a, b, strict=True):
        d = np.abs(x.astype(np.float64) - y)
        entry = {"max_abs": float(d.max()), "mean_abs": float(d.mean())}
        if info.meaning == "mask_probabilities":
            p, q = x >= 0.5, y >= 0.5
            denom = p.sum() + q.sum()
            entry["dice_vs_fp32"] = float(2 * (p & q).sum() / denom) if denom else 1.0
        elif info.meaning == "probabilities" and x.shape[-1] > 1:
            entry["top1_agreement"] = float((x.argmax(-1) == y.argmax(-1)).mean())
        elif info.meaning in ("embedding", "token_map"):
            xf, yf = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
            cos = (xf * yf).sum(-1) / (
                np.linalg.norm(xf, axis=-1) * np.linalg.norm(yf, axis=-1) + 1e-12
            )
            entry["min_cosine"] = float(cos.min())
        out[info.name] = entry
    return out


def _run_ort(path: Path, xs: np.ndarray) -> list[np.ndarray]:
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(xs, np.float32)})


def build_export(
    source: ModelSource,
    out_dir: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``source`` into ``out_dir`` (see the module docstring).

    Raises:
        ExportError: a step failed or a parity check did not pass (no manifest is written).
        TensorRTError: TensorRT was asked for on a machine without it.
    """
    opts = options or ExportOptions()
    if opts.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {opts.precision!r}")
    if opts.formats not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {opts.formats!r}")
    if opts.max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    want_trt = opts.formats in ("tensorrt", "all")
    if want_trt:
        from .tensorrt import TensorRTError, tensorrt_available

        ok, why = tensorrt_available()
        if not ok and opts.formats == "tensorrt":
            raise TensorRTError(
                "TensorRT export needs an NVIDIA GPU and the tensorrt package "
                f"(pip install 'anatomix[gpu]'); here: {why}"
            )
        if not ok:
            log(f"[export] TensorRT skipped: {why}")
            want_trt = False
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_export_dir(out)  # an interrupted export leaves no manifest, a new one no stale files
    pre = Preprocessing.from_dict(source.card["preprocessing"])
    family = get_family(source.model_name)
    graph = build_graph(
        source.model,
        source.model_name,
        task=opts.task,
        card=source.card,
        head=opts.head,
        batch_norm=opts.batch_norm or source.card.get("batch_norm") or "per_sample",
        roi_size=opts.roi_size,
    )
    log(f"[export] {source.model_name} → {graph.task}: exporting ONNX (opset {opts.opset})")
    onnx_path = out / "model.onnx"
    info = export_onnx(graph, onnx_path, opset=opts.opset, simplify=opts.simplify)
    size = onnx_path.stat().st_size / 2**20
    slim = ", simplified" if info["simplified"] else ""
    log(f"[export] ONNX written ({size:.1f} MiB, {info['nodes']} nodes{slim}); checking parity")

    def reference(x: np.ndarray) -> list[np.ndarray]:
        return torch_outputs(graph.module, x)

    sess = ort_session(onnx_path)
    parity = verify_onnx(
        onnx_path, reference, random_inputs(graph), rtol=FP32_TOL, atol=FP32_TOL, session=sess
    )
    realistic = phantom_inputs(graph, pre, max(3, opts.calibration_samples))
    parity += verify_onnx(
        onnx_path,
        reference,
        [realistic[:3]],
        rtol=FP32_TOL,
        atol=FP32_TOL,
        label="phantom",
        session=sess,
    )
    bad = [p for p in parity if not p.passed]
    if bad:
        raise ExportError(
            "ONNX Runtime disagrees with PyTorch beyond rtol=atol=1e-4: "
            + "; ".join(f"batch {p.batch} ({p.inputs}) max_abs {p.max_abs:.3g}" for p in bad)
        )
    worst = max(p.max_abs for p in parity)
    log(f"[export] fp32 parity ok: max |ORT - torch| = {worst:.2e} over {len(parity)} batches")
    files = [_file_entry(onnx_path, "onnx", "fp32")]
    fp32_real = _run_ort(onnx_path, realistic)
    quant = None

    if opts.precision == "int8":
        mode = opts.quantization or ("dynamic" if _matmul_heavy(source) else "static")
        q_path = out / "model.int8.onnx"
        calib_note = f", calibrated on {len(realistic)} phantom inputs" if mode == "static" else ""
        log(f"[export] INT8 {mode} quantisation{calib_note}")
        calib = [realistic[i : i + 1] for i in range(len(realistic))]
        quant = quantize_int8(onnx_path, q_path, mode=mode, calibration=calib)
        quant["agreement_vs_fp32"] = _agreement(_run_ort(q_path, realistic), fp32_real, graph)
        quant["evaluated_on"] = f"{len(realistic)} synthetic phantom inputs"
        files.append(_file_entry(q_path, "onnx", "int8"))
        log(f"[export] INT8 agreement: {json.dumps(quant['agreement_vs_fp32'])}")
    if opts.precision == "fp16":
        from .tensorrt import convert_onnx_to_fp16

        h_path = out / "model.fp16.onnx"
        convert_onnx_to_fp16(onnx_path, h_path)
        got = _run_ort(h_path, realistic)
        rec = [compare(g, w, FP16_TOL, FP16_TOL) for g, w in zip(got, fp32_real, strict=True)]
        parity.append(
            ParityRecord(
                "onnxruntime-cpu",
                "fp16",
                len(realistic),
                max(r[0] for r in rec),
                max(r[1] for r in rec),
                FP16_TOL,
                FP16_TOL,
                all(r[2] for r in rec),
                "phantom",
            )
        )
        files.append(_file_entry(h_path, "onnx", "fp16"))
        log(f"[export] fp16 ONNX: max |fp16 - fp32| = {parity[-1].max_abs:.2e}")

    if want_trt:
        files_trt, rec = _tensorrt(graph, out, onnx_path, opts, realistic, log)
        files.append(files_trt)
        parity.append(rec)

    manifest = Manifest(
        name=opts.name or out.name,
        family=family.family,
        task=graph.task,
        model_name=source.model_name,
        model_args=json.loads(json.dumps(source.model_args)),
        inputs=[
            TensorSpec(
                INPUT_NAME,
                "float32",
                pre.layout,
                list(graph.input_shape),
                list(graph.multiple_of),
                int(opts.max_batch),
            )
        ],
        outputs=[replace(o, shape=list(o.shape)) for o in graph.outputs],
        preprocessing=pre,
        files=files,
        source=source.describe(),
        exporter=_versions(opts.opset) | {"simplified": info["simplified"]},
        parity=parity,
        serves=family.serves(graph.task),
        inference=_inference(source.card, graph, source.config),
        quantization=quant,
        config=source.config,
        input_statistics=phantom_statistics() if pre.kind == "radiograph" else None,
    )
    write_manifest(manifest, out)
    seconds = time.perf_counter() - start
    return ExportResult(
        out, manifest, [out / f.path for f in files] + [out / "manifest.json"], seconds
    )


def _matmul_heavy(source: ModelSource) -> bool:
    """Transformers (ViT/Swin) quantise well dynamically; conv nets need static calibration."""
    name = str(getattr(source.model, "backbone_name", ""))
    return any(k in name for k in ("vit", "swin", "deit", "beit"))


def _inference(card: dict, graph: ExportGraph, config: dict | None) -> dict:
    """The manifest's ``inference`` section: threshold and, for volumes, the sliding window
    (:class:`imaging.sliding.WindowSpec`) as the run evaluated it — from the card, else from the
    run's ``eval`` config (runs whose card predates these keys), else the defaults."""
    out = {k: card[k] for k in ("threshold",) if k in card}
    if graph.dynamic_spatial or "roi_size" in card:
        ev = (config or {}).get("eval") or {}
        spec = WindowSpec(
            tuple(card.get("roi_size") or graph.example_shape[2:]),
            float(card.get("overlap", ev.get("overlap", 0.5))),
            str(card.get("blend", ev.get("blend", "gaussian"))),
            float(card.get("pad_value", 0.0)),
        )
        out |= spec.to_inference()
    return out | {k: v for k, v in graph.notes.items()}


def _tensorrt(graph, out, onnx_path, opts, realistic, log):
    from .tensorrt import build_engine, convert_onnx_to_fp16, verify_engine

    shape = list(graph.example_shape[1:])
    lo, hi = list(shape), list(shape)
    if graph.dynamic_spatial:
        lo = [shape[0]] + [max(8, s // 2 // 8 * 8) for s in shape[1:]]
        hi = [shape[0]] + [s * 2 for s in shape[1:]]
    opt_b = min(8, opts.max_batch)
    shapes = {INPUT_NAME: ((1, *lo), (opt_b, *shape), (opts.max_batch, *hi))}
    precision = "fp16" if opts.precision == "fp16" else "fp32"
    src = onnx_path
    if precision == "fp16" and not _trt_has_fp16_flag():
        src = out / "model.fp16.onnx"
        if not src.exists():
            convert_onnx_to_fp16(onnx_path, src)
    plan = out / "model.plan"
    log(f"[export] building the TensorRT {precision} engine (this takes minutes)")
    cache = out / "timing.cache"
    build_engine(src, plan, shapes=shapes, precision=precision, timing_cache=cache, progress=log)
    tol = FP32_TOL * 10 if precision == "fp32" else FP16_TOL
    feeds = [{INPUT_NAME: realistic[:opt_b]}]
    rec = verify_engine(plan, onnx_path, feeds, rtol=tol, atol=tol, precision=precision)
    log(f"[export] TensorRT parity vs ORT: max_abs {rec['max_abs']:.2e}")
    if not rec["passed"]:
        raise ExportError(f"TensorRT engine disagrees with ONNX Runtime: {rec}")
    record = ParityRecord(
        "tensorrt",
        precision,
        int(min(opt_b, len(realistic))),
        float(rec["max_abs"]),
        float(rec["max_rel"]),
        tol,
        tol,
        True,
        "phantom",
    )
    return _file_entry(plan, "tensorrt", precision), record


def _trt_has_fp16_flag() -> bool:
    try:
        import tensorrt as trt
    except ImportError:
        return False
    return hasattr(trt.BuilderFlag, "FP16")


def clean_export_dir(out: Path) -> None:
    """Remove a previous export's model files and manifest (the TensorRT timing cache stays: it
    only makes the next engine build faster)."""
    for name in ("manifest.json", "model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.plan"):
        (out / name).unlink(missing_ok=True)
