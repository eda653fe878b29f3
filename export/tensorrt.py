"""TensorRT engine build and parity verification from an exported ONNX file.

An ONNX file written by the exporter becomes a serialised TensorRT engine (`model.plan`) with
:func:`build_engine`; :class:`TensorRTRunner` executes a plan on device buffers from
``cuda-bindings`` (:mod:`export.cuda_memory`; no torch, no pycuda, so serving imports no training
stack), and :func:`verify_engine` holds the engine to onnxruntime on the CPU, the reference.

TensorRT is optional (``pip install 'anatomix[gpu]'``) and needs an NVIDIA GPU, so ``tensorrt`` is
imported inside the functions: this module imports on any machine, and every public entry point
raises :class:`TensorRTError`, saying what is missing, where it cannot run.
:func:`tensorrt_available` answers the question up front.

Versions. TensorRT 10 and 11 are supported through the name-based tensor API (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), which both share. They differ in
how an fp16 engine is asked for:

* TensorRT 10 ("weak typing"): the network stays fp32 and ``BuilderFlag.FP16`` lets the builder
  pick fp16 kernels where it judges them safe. ``build_engine(..., precision="fp16")`` sets it.
* TensorRT 11 removed ``BuilderFlag.FP16``: every network is strongly typed, so the precision of
  each tensor is the one written in the ONNX file. An fp16 engine must therefore be built from an
  fp16 ONNX; :func:`convert_onnx_to_fp16` makes one, and ``build_engine`` refuses, saying so, to
  build "fp16" from an fp32-only file. The converter is onnxruntime's own
  ``onnxruntime.transformers.float16.convert_float_to_float16`` (shipped inside the ``onnxruntime``
  wheel the project already needs for parity checks) rather than ``onnxconverter-common`` or NVIDIA
  ModelOpt, which would be one more heavy dependency for the same graph rewrite. It is called with
  ``keep_io_types=True``, so the model's inputs and outputs stay float32, and callers, the manifest
  and the serving code do not change with the precision.

"fp32" means full fp32: the TF32 builder flag is cleared, because parity is verified to ~1e-4 and
TF32 convolutions on Ampere and later GPUs drift by ~1e-3.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TensorRTError",
    "TensorRTRunner",
    "build_engine",
    "convert_onnx_to_fp16",
    "tensorrt_available",
    "verify_engine",
]

Shape = tuple[int, ...]
PRECISIONS = ("fp32", "fp16")
_INSTALL_HINT = "pip install 'anatomix[gpu]'"
_log = logging.getLogger(__name__)


class TensorRTError(RuntimeError):
    """TensorRT is unavailable, or building, loading or running an engine failed."""


def tensorrt_available() -> tuple[bool, str]:
    """Tell whether TensorRT can build and run engines on this machine.

    Returns:
        ``(True, tensorrt_version)`` when the ``tensorrt`` package imports and the CUDA runtime
        (``cuda-bindings``) sees a device; otherwise ``(False, reason)``, the reason naming
        everything that is missing.
    """
    from .cuda_memory import _cudart, device_count

    problems = []
    try:
        _cudart()
    except Exception as exc:
        problems.append(str(exc))
    else:
        if device_count() == 0:
            problems.append("no CUDA GPU is visible to the CUDA runtime")
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        problems.append(f"the `tensorrt` package cannot be imported ({exc})")
        trt = None
    if problems:
        return False, "; ".join(problems)
    return True, str(trt.__version__)


def _require_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, or raise :class:`TensorRTError` saying why not."""
    ok, detail = tensorrt_available()
    if not ok:
        raise TensorRTError(
            "TensorRT export needs an NVIDIA GPU and the `tensorrt` package "
            f"({_INSTALL_HINT}); this machine has: {detail}"
        )
    import tensorrt as trt

    return trt


def _trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger forwarding warnings to :mod:`logging` and keeping errors for messages."""
    sev = trt.ILogger.Severity
    levels = {
        sev.INTERNAL_ERROR: logging.ERROR,
        sev.ERROR: logging.ERROR,
        sev.WARNING: logging.WARNING,
    }

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity)
            if level is None:
                return
            _log.log(level, "TensorRT: %s", msg)
            if level == logging.ERROR:
                self.errors.append(msg)

    return _Logger()


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write bytes to ``path`` through a temporary file renamed into place (models' helper)."""
    from imaging.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def _onnx_has_fp16(onnx_path: Path) -> bool:
    """Whether an ONNX graph computes in float16 (fp16 weights, or casts to fp16)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == fp16 for init in model.graph.initializer):
        return True
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return True
    return False


def convert_onnx_to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write an fp16 copy of an fp32 ONNX model, keeping float32 inputs and outputs.

    Needed for fp16 engines under TensorRT 11 (strongly typed networks); harmless under 10.
    Weights become float16 and Cast nodes are inserted at the graph's inputs and outputs.

    Args:
        src: fp32 ONNX file.
        dst: where to write the fp16 model (written atomically).

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.

    Raises:
        TensorRTError: onnxruntime's fp16 converter (``onnxruntime.transformers.float16``) is not
            installed.
    """
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except Exception as exc:
        raise TensorRTError(
            "fp16 ONNX conversion needs onnxruntime's converter "
            "(onnxruntime.transformers.float16, part of `pip install onnxruntime`); "
            f"importing it failed: {exc}"
        ) from exc
    import onnx

    model = onnx.load(str(src))
    model16 = convert_float_to_float16(model, keep_io_types=True)
    dst = Path(dst)
    _write_atomic(dst, model16.SerializeToString())
    return dst


def _check_shapes(shapes: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, tuple[Shape, ...]]:
    out = {}
    for name, triple in shapes.items():
        if len(triple) != 3:
            raise ValueError(f"shapes[{name!r}] must be (min, opt, max); got {triple!r}")
        lo, opt, hi = (tuple(int(d) for d in s) for s in triple)
        if not len(lo) == len(opt) == len(hi):
            raise ValueError(f"shapes[{name!r}]: min/opt/max differ in rank: {lo}, {opt}, {hi}")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ValueError(f"shapes[{name!r}]: need min <= opt <= max per dim: {lo}, {opt}, {hi}")
        out[name] = (lo, opt, hi)
    return out


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    shapes: Mapping[str, tuple[Shape, Shape, Shape]],
    precision: str = "fp32",
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float = 4.0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build a TensorRT engine from an ONNX file and write it, serialised, to ``plan_path``.

    Args:
        onnx_path: the exported model. Under TensorRT 11, ``precision="fp16"`` needs an fp16 file
            (see :func:`convert_onnx_to_fp16`).
        plan_path: output file (conventionally ``model.plan``); an existing directory gets a
            ``model.plan`` inside it. Written atomically.
        shapes: one optimisation profile: ``{input_name: (min, opt, max)}``, each a full shape
            (e.g. ``(B, C, D, H, W)``). Batch and, for fully convolutional 3D models, D/H/W may
            vary; every input with a dynamic dimension needs an entry.
        precision: ``"fp32"`` (TF32 off) or ``"fp16"``.
        timing_cache: file to load layer timings from (when it exists) and save them to after the
            build; makes rebuilds on the same GPU much faster.
        workspace_gib: limit on the builder's scratch GPU memory, in GiB.
        progress: called with a short message at each stage.

    Returns:
        The path of the written plan.

    Raises:
        ValueError: bad ``precision`` or ``shapes``.
        TensorRTError: TensorRT or a GPU is unavailable, the ONNX does not parse (all parser
            errors in the message), a profile does not fit the network, or the build fails.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    profile_shapes = _check_shapes(shapes)
    trt = _require_tensorrt()
    say = progress or (lambda _msg: None)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise TensorRTError(f"ONNX file not found: {onnx_path}")
    plan_path = Path(plan_path)
    if plan_path.is_dir():
        plan_path = plan_path / "model.plan"

    weak_fp16 = hasattr(trt.BuilderFlag, "FP16")  # TensorRT <= 10
    if precision == "fp16" and not weak_fp16 and not _onnx_has_fp16(onnx_path):
        raise TensorRTError(
            f"TensorRT {trt.__version__} builds strongly typed networks only, so an fp16 engine "
            f"needs an fp16 ONNX, and {onnx_path.name} holds no float16 tensors; convert it with "
            "export.tensorrt.convert_onnx_to_fp16(src, dst) and build from that file"
        )

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if _trt_major(trt) < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit by 10
    if not weak_fp16 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # default in 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)

    say(f"parsing {onnx_path.name}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise TensorRTError(
            f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or ["no detail given"])
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16" and weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)

    _add_profile(trt, builder, network, config, profile_shapes)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        _load_timing_cache(config, cache_path, say)

    say(f"building {precision} engine (TensorRT {trt.__version__}); this can take minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors) or "no detail given"
        raise TensorRTError(f"TensorRT engine build failed for {onnx_path}: {detail}")

    if cache_path is not None:
        _write_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))
        say(f"saved timing cache to {cache_path}")
    _write_atomic(plan_path, memoryview(serialized))
    say(f"wrote {plan_path}")
    return plan_path


def _add_profile(
    trt: Any, builder: Any, network: Any, config: Any, shapes: dict[str, tuple[Shape, ...]]
) -> None:
    """Add one optimisation profile, checking it against the network's inputs first."""
    inputs = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = tuple(tensor.shape)
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise TensorRTError(f"shapes name {unknown}, which are not inputs; inputs: {list(inputs)}")
    profile = builder.create_optimization_profile()
    for name, net_shape in inputs.items():
        dynamic = any(d < 0 for d in net_shape)
        if name not in shapes:
            if dynamic:
                raise TensorRTError(
                    f"input {name!r} has dynamic shape {net_shape}; give shapes[{name!r}] = "
                    "(min, opt, max)"
                )
            continue
        lo, opt, hi = shapes[name]
        for s in (lo, opt, hi):
            fits = len(s) == len(net_shape) and all(
                d < 0 or d == v for d, v in zip(net_shape, s, strict=True)
            )
            if not fits:
                raise TensorRTError(
                    f"profile shape {s} for {name!r} does not fit the network's {net_shape} "
                    "(-1 marks the dimensions that may vary)"
                )
        profile.set_shape(name, lo, opt, hi)
    if shapes and config.add_optimization_profile(profile) < 0:
        raise TensorRTError(f"TensorRT rejected the optimisation profile {shapes}")


def _load_timing_cache(config: Any, path: Path, say: Callable[[str], None]) -> None:
    """Attach a timing cache to ``config``: the one in ``path`` if usable, else an empty one."""
    blob = path.read_bytes() if path.is_file() else b""
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            loaded = cache is not None and config.set_timing_cache(cache, False)
        except Exception:
            loaded = False
        if loaded:
            say(f"loaded timing cache {path} ({len(blob)} bytes)")
            return
        say(f"timing cache {path} is unreadable or from another GPU/version; starting afresh")
    config.set_timing_cache(config.create_timing_cache(b""), False)


#: TensorRT tensor types → the NumPy type of their host copies (bf16 travels as its 16 bits)
_NUMPY_TYPES = {
    "FLOAT": np.float32, "HALF": np.float16, "BF16": np.uint16, "INT8": np.int8,
    "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
}  # fmt: skip


def _numpy_dtype(trt: Any, trt_dtype: Any) -> tuple[np.dtype, bool]:
    """``(host dtype, is_bf16)`` of a TensorRT tensor type."""
    for name, dtype in _NUMPY_TYPES.items():
        if getattr(trt.DataType, name, None) == trt_dtype:
            return np.dtype(dtype), name == "BF16"
    raise TensorRTError(f"TensorRT tensor type {trt_dtype} has no NumPy equivalent here")


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounded to nearest even, NaN kept a NaN."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    return np.where(np.isnan(x), 0x7FC0, rounded).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class TensorRTRunner:
    """Run a serialised TensorRT engine on NumPy inputs, with ``cuda-bindings`` device buffers.

    One execution context, used from one thread at a time.

    Args:
        plan_path: a plan written by :func:`build_engine`, on this TensorRT version and GPU model.
        device: CUDA device index; the current device when ``None``.

    Raises:
        TensorRTError: TensorRT or a GPU is unavailable, or the plan does not deserialise.
    """

    def __init__(self, plan_path: str | os.PathLike, *, device: int | None = None) -> None:
        trt = _require_tensorrt()
        from . import cuda_memory

        self._trt, self._cuda = trt, cuda_memory
        self._device = cuda_memory.current_device() if device is None else device
        self._logger = _make_logger(trt)
        plan_path = Path(plan_path)
        cuda_memory.set_device(self._device)  # the engine and its context belong to this device
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            detail = "; ".join(self._logger.errors) or "no detail given"
            raise TensorRTError(
                f"could not load TensorRT engine {plan_path} (built by another TensorRT "
                f"version or for another GPU?): {detail}"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]

    @property
    def input_names(self) -> list[str]:
        """Names of the engine's input tensors, in engine order."""
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        """Names of the engine's output tensors, in engine order."""
        return list(self._outputs)

    def _profile_hint(self, name: str) -> str:
        try:
            lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
            return f"the engine's profile allows {tuple(lo)} to {tuple(hi)}"
        except Exception:
            return "the shape is outside the engine's profile"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine once.

        Args:
            feeds: one array per input name; cast to the engine's input types.

        Returns:
            ``{output_name: array}``, each shaped as the engine reports for these inputs.

        Raises:
            TensorRTError: inputs missing or unknown, a shape outside the profile, or execution
                failing.
        """
        trt, ctx, cuda = self._trt, self._context, self._cuda
        missing = [n for n in self._inputs if n not in feeds]
        unknown = [n for n in feeds if n not in self._inputs]
        if missing or unknown:
            raise TensorRTError(
                f"feeds must name exactly the inputs {self._inputs}; "
                f"missing {missing}, unknown {unknown}"
            )
        cuda.set_device(self._device)
        stream = cuda.Stream()
        keep = []  # host copies and device buffers must outlive the asynchronous execution
        try:
            for name in self._inputs:
                dtype, bf16 = _numpy_dtype(trt, self._engine.get_tensor_dtype(name))
                x = np.asarray(feeds[name])
                host = np.ascontiguousarray(to_bf16_bits(x) if bf16 else x.astype(dtype))
                if not ctx.set_input_shape(name, host.shape):
                    hint = self._profile_hint(name)
                    raise TensorRTError(f"input {name!r} of shape {host.shape} rejected: {hint}")
                if self._engine.get_tensor_location(name) == trt.TensorLocation.HOST:
                    ctx.set_tensor_address(name, host.ctypes.data)  # shape tensors live on the host
                else:
                    buf = cuda.DeviceArray(host.shape, dtype)
                    buf.copy_from(host, stream)
                    ctx.set_tensor_address(name, buf.ptr)
                    keep.append(buf)
                keep.append(host)
            outputs = {}
            for name in self._outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise TensorRTError(f"output {name!r} shape unresolved: {shape}")
                dtype, bf16 = _numpy_dtype(trt, self._engine.get_tensor_dtype(name))
                buf = cuda.DeviceArray(shape, dtype)
                ctx.set_tensor_address(name, buf.ptr)
                outputs[name] = (buf, bf16)
            if not ctx.execute_async_v3(stream.handle):
                detail = "; ".join(self._logger.errors[-5:]) or "no detail given"
                raise TensorRTError(f"TensorRT execution failed: {detail}")
            result = {}
            for name, (buf, bf16) in outputs.items():
                host = buf.copy_to_host(stream)  # synchronises the stream
                result[name] = from_bf16_bits(host) if bf16 else host
                buf.free()
            return result
        finally:
            stream.synchronize()
            for b in keep:
                if isinstance(b, cuda.DeviceArray):
                    b.free()
            stream.close()


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def verify_engine(
    plan_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    inputs: Sequence[Mapping[str, np.ndarray]],
    *,
    rtol: float,
    atol: float,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Compare a TensorRT engine with onnxruntime (CPU) on the same inputs.

    Every output element must satisfy ``|trt - ort| <= atol + rtol * |ort|`` (``np.allclose``).

    Args:
        plan_path: the engine.
        onnx_path: the reference model, normally the fp32 export the engine was built from.
        inputs: feeds, one dict per run (e.g. batch 1 and a larger batch).
        rtol: relative tolerance.
        atol: absolute tolerance.
        precision: how the engine was built; only reported.

    Returns:
        ``{"max_abs", "max_rel", "rtol", "atol", "passed", "runtime": "tensorrt", "precision",
        "n_runs"}``, where ``max_rel`` is ``|trt - ort| / max(|ort|, 1e-12)`` at its worst.

    Raises:
        TensorRTError: TensorRT or a GPU is unavailable, or the engine's outputs do not match the
            ONNX model's.
    """
    _require_tensorrt()
    import onnxruntime as ort

    if not inputs:
        raise ValueError("verify_engine needs at least one input dict")
    runner = TensorRTRunner(plan_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_types = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}
    out_names = [o.name for o in session.get_outputs()]
    absent = [n for n in out_names if n not in runner.output_names]
    if absent:
        raise TensorRTError(
            f"engine outputs {runner.output_names} lack the ONNX model's outputs {absent}"
        )
    max_abs = max_rel = 0.0
    passed = True
    for feeds in inputs:
        ort_feeds = {
            n: np.asarray(a, dtype=ort_types.get(n)) if ort_types.get(n) else np.asarray(a)
            for n, a in feeds.items()
        }
        reference = dict(zip(out_names, session.run(out_names, ort_feeds), strict=True))
        got = runner.run(feeds)
        for name, ref in reference.items():
            ref64 = np.asarray(ref, dtype=np.float64)
            out64 = np.asarray(got[name], dtype=np.float64)
            if out64.shape != ref64.shape:
                raise TensorRTError(
                    f"output {name!r}: engine shape {out64.shape} != ONNX {ref64.shape}"
                )
            diff = np.abs(out64 - ref64)
            if diff.size:
                max_abs = max(max_abs, float(diff.max()))
                max_rel = max(max_rel, float((diff / np.maximum(np.abs(ref64), 1e-12)).max()))
                passed &= bool(np.all(diff <= atol + rtol * np.abs(ref64)))
    return {
        "max_abs": max_abs,
        "max_rel": max_rel,
        "rtol": float(rtol),
        "atol": float(atol),
        "passed": bool(passed),
        "runtime": "tensorrt",
        "precision": precision,
        "n_runs": len(inputs),
    }
