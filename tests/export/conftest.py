"""Shared export fixtures: small models of every family saved as anatomix weights files, with
the inference card training records, and real DICOM inputs preprocessed by the imaging layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from imaging.dicom import read_image
from imaging.image import Volume
from imaging.preprocess import Preprocessing, prepare_radiograph, prepare_volume, radiograph_to_unit
from models.checkpoint import save_weights
from models.registry import build_model

ROI = (32, 32, 16)  # X, Y, Z: a small Models Genesis cube (multiples of 8)
CXR_FILES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")


def save_model(path, name: str, args: dict, card: dict | None, seed: int = 0):
    """A randomly initialised registry model saved like a run's ``model.safetensors``.

    Batch-norm statistics are moved off their defaults so that running-statistics and
    batch-statistics normalisation give visibly different answers.
    """
    torch.manual_seed(seed)
    model = build_model(name, **args).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    meta = {"inference": card} if card is not None else {}
    save_weights(model, path, model_name=name, model_args=args, metadata=meta)
    return model


def real_ct_cubes(pre: Preprocessing, n: int = 3, roi=ROI) -> np.ndarray:
    """``(n, 1, X, Y, Z)`` cubes of pydicom's CT_small.dcm (one real 128² slice, stacked to a
    volume) preprocessed by ``pre``; the n cubes are taken at different in-plane offsets."""
    img = read_image(get_testdata_file("CT_small.dcm"))
    depth = roi[2]
    sp = img.spacing or (1.0, 1.0)
    vol = Volume(
        voxels=np.repeat(img.pixels[None], depth, axis=0).astype(np.float32),
        spacing=(5.0, float(sp[0]), float(sp[1])),
        affine=np.eye(4),
    )
    x = prepare_volume(vol, pre)  # (1, X, Y, Z)
    cubes = []
    for i in range(n):
        a, b = 20 + 24 * i, 40 + 16 * i
        cubes.append(x[:, a : a + roi[0], b : b + roi[1], : roi[2]])
    return np.stack(cubes).astype(np.float32)


def real_cxr_batch(pre: Preprocessing, n: int = 3) -> np.ndarray:
    """``(n, C, S, S)``: pydicom-data's chest CRs (RG1, RG3, RG1 mirrored) through ``pre``."""
    items = []
    for i in range(n):
        pixels = radiograph_to_unit(read_image(get_testdata_file(CXR_FILES[i % 2])))
        if i >= 2:
            pixels = pixels[:, ::-1].copy()
        items.append(prepare_radiograph(pixels, pre)[0])
    return np.stack(items).astype(np.float32)


@pytest.fixture(scope="session")
def export_root(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")
