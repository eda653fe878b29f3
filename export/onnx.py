"""ONNX export of an :class:`~export.adapters.ExportGraph`: export, check, simplify, verify,
and optional INT8 quantisation for CPU serving.

The graph is exported with the dynamo exporter (``torch.export``) from a batch-2 example with
``Dim.AUTO`` axes, so the batch axis (and the spatial axes of the fully convolutional 3D U-Net)
stay dynamic; weights are embedded (``external_data=False``) so ``model.onnx`` is one file.
Parity is measured against the PyTorch module on the same inputs; tests also feed batch > 1.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from imaging.atomic import atomic_path

from .adapters import ExportGraph
from .manifest import ParityRecord
from .options import DEFAULT_OPSET, MIN_OPSET

INPUT_NAME = "image"
#: Operators quantised to INT8: the compute-heavy ones; normalisation and softmax stay fp32.
QUANTISED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


class ExportError(RuntimeError):
    """Export, checking or verification failed; the message says which step and why."""


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings (we report our own progress)."""
    names = ("torch.onnx", "torch.export", "onnxscript", "")  # "": the quantiser logs to root
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _working_dir(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _rename_dims(model, graph: ExportGraph) -> None:
    """Give dynamic axes readable names (``batch``, ``x``…) instead of ``s77``-style symbols."""
    shapes = {INPUT_NAME: graph.input_shape} | {o.name: o.shape for o in graph.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        want = shapes.get(value.name)
        if want is None:
            continue
        for dim, sym in zip(value.type.tensor_type.shape.dim, want, strict=False):
            if isinstance(sym, str):
                dim.dim_param = sym


def export_onnx(
    graph: ExportGraph,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
) -> dict:
    """Export ``graph`` to ``path`` (written atomically), check it fully, and simplify it.

    Args:
        graph: the module and its I/O description.
        path: destination ``.onnx`` file.
        opset: ONNX opset (>= 17).
        simplify: run onnxslim (the unsimplified graph is kept if slimming fails or breaks the
            check).

    Returns:
        ``{"opset", "simplified", "nodes"}``.

    Raises:
        ExportError: export or ``onnx.checker`` failed.
    """
    import onnx
    from torch.export import Dim

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use >= {MIN_OPSET}")
    module = graph.module.eval()
    example = torch.rand(*graph.example_shape)
    axes = {0: Dim.AUTO}
    if graph.dynamic_spatial:
        axes |= {i: Dim.AUTO for i in range(2, len(graph.example_shape))}
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                None,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[o.name for o in graph.outputs],
                dynamic_shapes=(axes,),
                optimize=True,
            )
    except Exception as exc:  # the exporter raises many types; say which step failed
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    model = program.model_proto
    _rename_dims(model, graph)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    simplified = False
    if simplify:
        try:
            import onnxslim

            with _quiet():
                slim = onnxslim.slim(model)
            onnx.checker.check_model(slim, full_check=True)
            model, simplified = slim, True
        except Exception as exc:  # keep the checked, unsimplified graph
            logging.getLogger(__name__).warning("onnxslim failed, graph kept as exported: %s", exc)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return {"opset": opset, "simplified": simplified, "nodes": len(model.graph.node)}


def ort_session(path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session with full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))


def compare(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float):
    """``(max_abs, max_rel, passed)`` with ``numpy.allclose`` semantics."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf"), float("inf"), False
    diff = np.abs(actual - expected)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(expected), 1e-12)).max()) if diff.size else 0.0
    passed = bool(np.all(diff <= atol + rtol * np.abs(expected)))
    return max_abs, max_rel, passed


def torch_outputs(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """The module's outputs on ``x`` as a list of float32 arrays."""
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().numpy() for o in out]


def verify_onnx(
    path: str | os.PathLike,
    reference: Callable[[np.ndarray], list[np.ndarray]],
    inputs: Sequence[np.ndarray],
    *,
    rtol: float,
    atol: float,
    precision: str = "fp32",
    label: str = "random",
    session=None,
) -> list[ParityRecord]:
    """Run ORT CPU on each input batch and compare every output with ``reference(batch)``.

    Returns:
        One :class:`ParityRecord` per input batch (worst over its outputs).
    """
    sess = session or ort_session(path)
    name = sess.get_inputs()[0].name
    records = []
    for x in inputs:
        got = sess.run(None, {name: np.ascontiguousarray(x, np.float32)})
        want = reference(x)
        if len(got) != len(want):
            raise ExportError(f"ORT gave {len(got)} outputs, PyTorch {len(want)}")
        worst = [compare(g, w, rtol, atol) for g, w in zip(got, want, strict=True)]
        records.append(
            ParityRecord(
                runtime="onnxruntime-cpu",
                precision=precision,
                batch=int(x.shape[0]),
                max_abs=max(w[0] for w in worst),
                max_rel=max(w[1] for w in worst),
                rtol=rtol,
                atol=atol,
                passed=all(w[2] for w in worst),
                inputs=label,
            )
        )
    return records


class _Calibration:
    """ONNX Runtime ``CalibrationDataReader`` over a list of input batches."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]):
        self._items = iter([{name: np.ascontiguousarray(b, np.float32)} for b in batches])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # pragma: no cover - not used by the MinMax calibrator
        pass


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    mode: str = "dynamic",
    calibration: Sequence[np.ndarray] = (),
) -> dict:
    """Quantise ``src`` to INT8 for CPU serving.

    Args:
        mode: ``"dynamic"`` (weights INT8 ahead of time, activations quantised on the fly:
            MatMul/Gemm-heavy models — transformers, heads) or ``"static"`` (QDQ weights and
            activations with ranges calibrated on ``calibration`` batches: convolutional nets).
        calibration: representative preprocessed batches (static mode).

    Returns:
        ``{"mode", "per_channel", "op_types"}``.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in ("dynamic", "static"):
        raise ValueError(f"quantisation mode must be 'dynamic' or 'static', got {mode!r}")
    if mode == "static" and not calibration:
        raise ValueError("static quantisation needs calibration batches")
    src, dst = Path(src).resolve(), Path(dst).resolve()
    # ONNX Runtime's quantiser writes scratch files (sym_shape_infer_temp.onnx, external data)
    # into the working directory: run it inside a temporary one.
    with tempfile.TemporaryDirectory() as tmpdir, _working_dir(tmpdir):
        pre = Path(tmpdir) / "pre.onnx"
        with _quiet():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        with atomic_path(dst) as tmp:
            with _quiet():
                if mode == "dynamic":
                    quantize_dynamic(
                        str(pre),
                        str(tmp),
                        weight_type=QuantType.QInt8,
                        per_channel=True,
                        op_types_to_quantize=list(QUANTISED_OPS),
                    )
                else:
                    quantize_static(
                        str(pre),
                        str(tmp),
                        _Calibration(INPUT_NAME, calibration),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(QUANTISED_OPS),
                    )
    return {"mode": mode, "per_channel": True, "op_types": list(QUANTISED_OPS)}
