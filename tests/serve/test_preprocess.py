"""DALI preprocessing (serve) against imaging's NumPy reference on real DICOM inputs."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (serving extra)")
from pydicom.data import get_testdata_file  # noqa: E402

import serve.preprocess as serve_preprocess  # noqa: E402
from imaging.dicom import read_image  # noqa: E402
from imaging.image import Volume  # noqa: E402
from imaging.preprocess import (  # noqa: E402
    Preprocessing,
    ark_cxr,
    genesis_ct,
    peac_cxr,
    prepare_radiograph,
    prepare_volume,
    radiograph_to_unit,
)
from serve.preprocess import DaliPreprocessor  # noqa: E402

TOL = 1e-4
# Full-size chest CRs (1955×1841 and smaller), a 128² CT and a 64² MR slice: mixed sizes,
# strong down- and upscaling, odd sides.
FILES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm")


@pytest.fixture(scope="module")
def radiographs() -> list[np.ndarray]:
    return [radiograph_to_unit(read_image(get_testdata_file(name))) for name in FILES]


def _reference(items: list[np.ndarray], pp: Preprocessing) -> np.ndarray:
    return np.stack([prepare_radiograph(x, pp)[0] for x in items])


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape and got.dtype == np.float32
    return float(np.abs(got - want).max())


@pytest.mark.parametrize(
    "pp", [ark_cxr(64), ark_cxr(224), peac_cxr(112)], ids=["ark64", "ark224", "peac112"]
)
def test_radiograph_presets_match_reference_on_mixed_batch(radiographs, pp):
    assert len({x.shape for x in radiographs}) == len(radiographs)  # sizes really mixed
    got = DaliPreprocessor(pp, max_batch=len(radiographs), device="cpu")(radiographs)
    assert got.shape == (len(radiographs), pp.channels, pp.crop, pp.crop)
    assert _max_error(got, _reference(radiographs, pp)) <= TOL


def test_batch_larger_than_max_batch_is_chunked(radiographs):
    pp = peac_cxr(64)
    items = radiographs + radiographs[::-1] + radiographs[:1]  # 9 items, chunks 4 + 4 + 1
    got = DaliPreprocessor(pp, max_batch=4, device="cpu")(items)
    assert got.shape == (9, 3, 64, 64)
    assert _max_error(got, _reference(items, pp)) <= TOL


@pytest.mark.parametrize(
    "pp",
    [
        # Every constant unusual: sizes odd, per-channel statistics, "round" offsets on odd slack.
        Preprocessing(
            kind="radiograph",
            layout="NCHW",
            resize=97,
            resize_mode="shorter_side",
            crop=60,
            crop_offset="round",
            mean=(0.11, 0.52, -0.3),
            std=(0.9, 0.17, 2.5),
            channels=3,
        ),
        Preprocessing(
            kind="radiograph",
            layout="NCHW",
            resize=41,
            resize_mode="square",
            crop=None,
            mean=(0.25,),
            std=(0.33,),
            channels=1,
        ),
        # No resize: crop straight out of the original pixels ("floor" offsets).
        Preprocessing(
            kind="radiograph",
            layout="NCHW",
            resize=None,
            crop=33,
            crop_offset="floor",
            mean=(0.7,),
            std=(0.05,),
            channels=3,
        ),
    ],
    ids=["shorter-odd", "square-nocrop-grey", "crop-only"],
)
def test_every_constant_comes_from_the_description(radiographs, pp):
    got = DaliPreprocessor(pp, max_batch=3, device="cpu")(radiographs)
    assert _max_error(got, _reference(radiographs, pp)) <= TOL


def test_serve_module_hard_codes_no_statistics():
    source = inspect.getsource(serve_preprocess)
    for constant in ("0.485", "0.229", "0.5056", "0.252", "1000", "224", "256"):
        assert constant not in source


@pytest.fixture(scope="module")
def ct_volume() -> Volume:
    image = read_image(get_testdata_file("CT_small.dcm"))
    # A small cube from one real slice: shifted copies as further slices, odd depth.
    voxels = np.stack([np.roll(image.pixels, 3 * k, axis=1) for k in range(5)])
    return Volume(voxels=voxels.astype(np.float32), spacing=(1.0, *image.spacing))


@pytest.mark.parametrize(
    "pp",
    [
        genesis_ct(),
        Preprocessing(kind="ct", layout="NCXYZ", hu_clip=(-160.0, 240.0), mean=(0.3,), std=(0.2,)),
        Preprocessing(kind="ct", layout="NCXYZ", hu_clip=None, mean=(40.0,), std=(350.0,)),
    ],
    ids=["genesis", "soft-tissue", "no-clip"],
)
def test_ct_matches_reference(ct_volume, pp):
    cube = ct_volume.voxels.transpose(2, 1, 0)  # (D, H, W) → (X, Y, Z), as prepare_volume does
    want = prepare_volume(ct_volume, pp)
    got = DaliPreprocessor(pp, max_batch=2, device="cpu")([cube, cube, cube])
    assert got.shape == (3, *want.shape)
    for sample in got:
        assert _max_error(sample, want) <= TOL


def test_bad_inputs_are_refused(radiographs, ct_volume):
    with pytest.raises(ValueError, match="must be \\(H, W\\)"):
        DaliPreprocessor(ark_cxr(64), device="cpu")([np.zeros((2, 8, 8), np.float32)])
    cube = ct_volume.voxels.transpose(2, 1, 0)
    with pytest.raises(ValueError, match="one shape"):
        DaliPreprocessor(genesis_ct(), max_batch=1, device="cpu")([cube, cube[:-1]])
    with pytest.raises(ValueError, match="max_batch"):
        DaliPreprocessor(ark_cxr(64), max_batch=0)


def test_concurrent_calls_are_serialised(radiographs):
    pp = ark_cxr(64)
    dali = DaliPreprocessor(pp, max_batch=2, device="cpu")
    want = _reference(radiographs, pp)
    errors: list[float] = []

    def work() -> None:
        errors.append(_max_error(dali(radiographs), want))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3 and max(errors) <= TOL


@pytest.mark.gpu
def test_gpu_pipeline_matches_reference(radiographs):
    if not serve_preprocess._cuda_visible():
        pytest.skip("no CUDA device visible to DALI")
    pp = peac_cxr(112)
    got = DaliPreprocessor(pp, max_batch=4, device="gpu")(radiographs)
    assert _max_error(got, _reference(radiographs, pp)) <= TOL
