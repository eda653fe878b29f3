"""A film sent to the server as DICOM and the same film read as PNG by a training dataset reader
give the model the same input (issue #17): within 1/255, the PNG's own quantisation.

Server side: ``read_image`` → ``radiograph_to_unit`` → ``prepare_radiograph`` with the Ark
export's preprocessing (tests/serve/test_service_e2e.py checks the server answers exactly what
the model gives on that input). Training side: the ChestX-ray14 reader → Ark's ``ReaderSource``
(load size 256, configs/ark/paper.yaml) → Ark evaluation's resize + centre crop.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imaging.datasets import build_dataset
from imaging.dicom import read_image
from imaging.phantoms import make_chest_ct, make_radiograph
from imaging.preprocess import ark_cxr, prepare_radiograph, radiograph_to_unit
from imaging.writers import radiograph_bytes
from train.ark.data import ReaderSource, eval_resize
from train.views2d import resize_center_crop

SIZE = 224  # the paper's input; load size 256 = eval_resize(224)
TOL = 1 / 255


def _nih_root(tmp_path, u8: np.ndarray):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    Image.fromarray(u8).save(root / "images" / "00000001_000.png")
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position\n00000001_000.png,No Finding,0,1,50,M,PA\n"
    )
    (root / "test_list.txt").write_text("00000001_000.png\n")
    (root / "train_val_list.txt").write_text("")
    return root


def test_dicom_and_png_of_one_film_give_the_same_model_input(tmp_path):
    film = make_radiograph(make_chest_ct(5, shape=(48, 96, 96)), size=(612, 540)).pixels
    u8 = np.rint(np.clip(film, 0, 1) * 255).astype(np.uint8)  # what the PNG release stores

    dataset = build_dataset("chestxray14", root=_nih_root(tmp_path, u8), split="test")
    source = ReaderSource("nih", dataset, 0, eval_resize(SIZE), "zero", workers=1)
    trained = resize_center_crop(source.batch([0])[0], eval_resize(SIZE), SIZE)[0, 0].numpy()

    pp = ark_cxr(SIZE)
    unit = radiograph_to_unit(read_image(io.BytesIO(radiograph_bytes(film, modality="CR"))))
    x, _ = prepare_radiograph(unit, pp)
    served = x[0] * pp.std[0] + pp.mean[0]  # back to [0, 1]: the normalisation is compared below
    assert served.shape == trained.shape == (SIZE, SIZE)
    assert np.abs(served - trained).max() <= TOL
    for c in range(3):  # ImageNet statistics on both sides, every channel the same grey
        np.testing.assert_allclose(x[c], (served - pp.mean[c]) / pp.std[c], rtol=1e-5, atol=1e-5)

    # guard: without antialiasing (plain bilinear) the server's input would differ by more
    plain = F.interpolate(
        torch.from_numpy(unit)[None, None], size=(pp.resize, pp.resize), mode="bilinear",
        align_corners=False, antialias=False,
    )[0, 0].numpy()  # fmt: skip
    top = (pp.resize - SIZE + 1) // 2
    plain = plain[top : top + SIZE, top : top + SIZE]
    assert np.abs(plain - trained).max() > TOL
