"""anatomix models layer: architectures, the model registry, and checkpoint files.

Public API::

    build_model(name, **kwargs)            # registry front door (MODELS)
    get_family / list_families             # each model's family descriptor (models.family)
    UNet3D, GenesisClassifier              # Models Genesis (3D CT)
    ArkModel                               # Foundation Ark (2D CXR, timm backbone)
    PEACModel, PEACOutput                  # PEAC (2D CXR token map, POPAR heads, expanders)
    correspond / preprocess / Correspondence   # PEAC anatomical correspondence of two films
    save_weights / load_weights / load_model   # safetensors + model_name/model_args
    atomic_path / atomic_write_bytes       # crash-safe writes (reused by train/)
    load_torch_file                        # torch.load(weights_only=True), never unsafe
    import_official(family, path, out=...) # released checkpoints (official_families())
"""

# Submodules are imported on first use (PEP 562): `import models.family` or a command's `--help`
# does not pay for torch and timm.
_LAZY = {  # public name → the submodule that defines it, imported on first use
    "ArkModel": ".ark",
    "CheckpointError": ".checkpoint",
    "CheckpointMismatchError": ".checkpoint",
    "UnsafeCheckpointError": ".checkpoint",
    "WeightsInfo": ".checkpoint",
    "atomic_path": ".checkpoint",
    "atomic_write_bytes": ".checkpoint",
    "load_model": ".checkpoint",
    "load_torch_file": ".checkpoint",
    "load_weights": ".checkpoint",
    "save_weights": ".checkpoint",
    "ExportGraph": ".family",
    "Family": ".family",
    "GraphOptions": ".family",
    "ImportReport": ".official",
    "import_official": ".official",
    "Correspondence": ".peac",
    "CropTransform": ".peac",
    "PEACModel": ".peac",
    "PEACOutput": ".peac",
    "correspond": ".peac",
    "preprocess": ".peac",
    "MODELS": ".registry",
    "build_model": ".registry",
    "get_family": ".registry",
    "list_families": ".registry",
    "official_families": ".registry",
    "ContBatchNorm3d": ".unet3d",
    "EncoderLoadResult": ".unet3d",
    "GenesisClassifier": ".unet3d",
    "UNet3D": ".unet3d",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ArkModel",
    "Correspondence",
    "CropTransform",
    "MODELS",
    "CheckpointError",
    "CheckpointMismatchError",
    "ContBatchNorm3d",
    "EncoderLoadResult",
    "ExportGraph",
    "Family",
    "GraphOptions",
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
    "get_family",
    "list_families",
    "official_families",
    "import_official",
    "load_model",
    "load_torch_file",
    "load_weights",
    "preprocess",
    "save_weights",
]
