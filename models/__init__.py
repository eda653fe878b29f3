"""anatomix models layer: architectures, the model registry, and checkpoint files.

Public API::

    build_model(name, **kwargs)            # registry front door (MODELS)
    UNet3D, GenesisClassifier              # Models Genesis (3D CT)
    ArkModel                               # Foundation Ark (2D CXR, timm backbone)
    PEACModel, PEACOutput                  # PEAC (2D CXR token map, POPAR heads, expanders)
    correspond / preprocess / Correspondence   # PEAC anatomical correspondence of two films
    save_weights / load_weights / load_model   # safetensors + model_name/model_args
    atomic_path / atomic_write_bytes       # crash-safe writes (reused by train/)
    load_torch_file                        # torch.load(weights_only=True), never unsafe
    import_official(family, path, out=...) # released checkpoints (OFFICIAL_IMPORTERS)
"""

from .ark import ArkModel
from .checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsInfo,
    atomic_path,
    atomic_write_bytes,
    load_model,
    load_torch_file,
    load_weights,
    save_weights,
)
from .official import OFFICIAL_IMPORTERS, ImportReport, import_official
from .peac import Correspondence, CropTransform, PEACModel, PEACOutput, correspond, preprocess
from .registry import MODELS, build_model
from .unet3d import ContBatchNorm3d, EncoderLoadResult, GenesisClassifier, UNet3D

__all__ = [
    "ArkModel",
    "Correspondence",
    "CropTransform",
    "MODELS",
    "OFFICIAL_IMPORTERS",
    "CheckpointError",
    "CheckpointMismatchError",
    "ContBatchNorm3d",
    "EncoderLoadResult",
    "GenesisClassifier",
    "ImportReport",
    "PEACModel",
    "PEACOutput",
    "UNet3D",
    "UnsafeCheckpointError",
    "WeightsInfo",
    "atomic_path",
    "atomic_write_bytes",
    "build_model",
    "correspond",
    "import_official",
    "load_model",
    "load_torch_file",
    "load_weights",
    "preprocess",
    "save_weights",
]
