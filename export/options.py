"""What an export is asked for (the ``export.run`` flags), torch-free so that ``--help`` and the
option checks need neither torch nor the exporter."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("onnx", "tensorrt", "all")
#: opset the exporter writes by default, and the oldest it accepts (the dynamo exporter's floor)
DEFAULT_OPSET = 18
MIN_OPSET = 17


@dataclass
class ExportOptions:
    """What to export and how (the ``export.run`` flags)."""

    task: str | None = None
    formats: str = "onnx"
    precision: str = "fp32"
    max_batch: int = 16
    opset: int = DEFAULT_OPSET
    head: str | None = None
    batch_norm: str | None = None  # default: the training card's, else "per_sample"
    roi_size: tuple[int, int, int] | None = None
    quantization: str | None = None  # "dynamic" | "static"; default by family
    calibration_samples: int = 16
    name: str | None = None
    simplify: bool = True
