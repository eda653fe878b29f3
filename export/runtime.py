"""Run an export: ``load(export_dir).predict(batch) -> {output name: array}``.

The one place that turns an export directory into predictions (``serve`` uses it too). The
backend is picked by availability — TensorRT (a ``model.plan`` and a GPU) > ONNX Runtime CUDA >
ONNX Runtime CPU — or forced with ``backend=`` / ``ANATOMIX_RUNTIME``. Inputs are checked
against the manifest's shape constraints first, so a wrong shape is a clear ``ValueError``
rather than a runtime's internal error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import Manifest, read_manifest

BACKENDS = ("tensorrt", "ort-cuda", "ort-cpu")
ENV_BACKEND = "ANATOMIX_RUNTIME"


def available_backends(manifest: Manifest) -> list[str]:
    """Backends usable for ``manifest`` on this machine, best first."""
    import onnxruntime as ort

    found = []
    if manifest.file("tensorrt") is not None:
        from .tensorrt import tensorrt_available

        if tensorrt_available()[0]:
            found.append("tensorrt")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        found.append("ort-cuda")
    found.append("ort-cpu")
    return found


@dataclass
class Runtime:
    """A loaded export.

    Attributes:
        manifest: the validated manifest.
        backend: ``tensorrt``, ``ort-cuda`` or ``ort-cpu``.
        precision: the precision of the file in use.
        path: the model file in use.
    """

    manifest: Manifest
    backend: str
    precision: str
    path: Path
    _session: object = None

    @property
    def input_name(self) -> str:
        return self.manifest.inputs[0].name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.manifest.outputs]

    @property
    def max_batch(self) -> int:
        return self.manifest.inputs[0].max_batch

    def check_input(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` as contiguous float32, or a ``ValueError`` naming the violated constraint."""
        spec = self.manifest.inputs[0]
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != len(spec.shape):
            raise ValueError(
                f"{self.manifest.name}: expected a {len(spec.shape)}-D {spec.layout} batch "
                f"{spec.shape}, got shape {x.shape}"
            )
        for axis, (have, want, mult) in enumerate(zip(x.shape, spec.shape, spec.multiple_of,
                                                      strict=True)):  # fmt: skip
            if isinstance(want, int) and have != want:
                raise ValueError(
                    f"{self.manifest.name}: axis {axis} of the {spec.layout} input must be "
                    f"{want}, got {have} (shape {x.shape})"
                )
            if have < 1 or have % mult:
                raise ValueError(
                    f"{self.manifest.name}: axis {axis} must be a positive multiple of {mult}, "
                    f"got {have}"
                )
        if not np.isfinite(x).all():
            raise ValueError(f"{self.manifest.name}: the input holds NaN or infinite values")
        return x

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on ``batch`` (any batch size; split into ``max_batch`` chunks)."""
        x = self.check_input(batch)
        chunks = [self._run(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in self.output_names}

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.backend == "tensorrt":
            return self._session.run({self.input_name: x})
        outs = self._session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs, strict=True))


def load(
    export_dir: str | os.PathLike,
    *,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    spinning: bool = True,
) -> Runtime:
    """Load an export for inference.

    Args:
        export_dir: a directory written by ``python -m export.run``.
        backend: one of :data:`BACKENDS`; default ``$ANATOMIX_RUNTIME`` or the best available.
        precision: ONNX file to use with ONNX Runtime (``fp32``, ``int8``, ``fp16``); default
            fp32 (int8 must be asked for: it trades accuracy for CPU speed).
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's).
        spinning: let idle intra-op threads busy-wait for the next call (ONNX Runtime's
            default: lowest latency alone on a machine). A server sharing its cores with
            decoding processes turns it off, or the spin eats the cores the decoders need.

    Raises:
        ManifestError: the manifest is invalid or a file's checksum does not match.
        ValueError: the backend or precision asked for is not available here.
    """
    manifest = read_manifest(export_dir)
    root = Path(export_dir)
    root = root.parent if root.is_file() else root
    choices = available_backends(manifest)
    backend = backend or os.environ.get(ENV_BACKEND) or choices[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in choices:
        raise ValueError(
            f"backend {backend!r} is not available for {root} on this machine; "
            f"available: {', '.join(choices)}"
        )
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        f = manifest.file("tensorrt")
        return Runtime(manifest, backend, f.precision, root / f.path, TensorRTRunner(root / f.path))
    precision = precision or "fp32"
    f = manifest.file("onnx", precision)
    if f is None:
        have = sorted({m.precision for m in manifest.files if m.format == "onnx"})
        raise ValueError(f"{root}: no {precision} ONNX file; exported: {', '.join(have)}")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if backend == "ort-cuda":
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(root / f.path), sess_options=opts, providers=providers)
    return Runtime(manifest, backend, precision, root / f.path, session)
