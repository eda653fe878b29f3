"""Issue #21: the viewer's server side without a server — the PNG encoder read back by Pillow
(the reference decoder), CT window presets against their HU definitions, the overlay only on
mask pixels, and the view store's bounds (bytes, time, unknown tokens)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serve.errors import RequestError
from serve.png import encode_png
from serve.view import OPACITY, PALETTE, CtView, ViewStore, ct_slice_png, radiograph_png


def _read(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_png_round_trips_through_pillow():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(_read(encode_png(grey)), grey)
    assert np.array_equal(_read(encode_png(rgb)), rgb)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), np.uint8))


def test_ct_windows_follow_their_hu_definitions_and_the_overlay_only_mask_pixels():
    hu = np.array([[-1350, -600, 150], [-160, 40, 240]], np.int16)
    lung = _read(ct_slice_png(hu, None, "lung"))[..., 0]
    assert lung.tolist()[0] == [0, 128, 255]  # level -600, width 1500: -1350 → 0, 150 → 255
    soft = _read(ct_slice_png(hu, None, "soft"))[..., 0]
    assert soft.tolist()[1] == [0, 128, 255]  # level 40, width 400
    mask = np.array([[[True, False, False], [False, False, True]]])
    out = _read(ct_slice_png(hu, mask, "soft")).astype(int)
    colour = np.asarray(PALETTE[0])
    want = np.round((1 - OPACITY) * soft[0, 0] + OPACITY * colour)
    assert np.array_equal(out[0, 0], want)
    untouched = ~mask[0]
    assert (out[untouched] == soft[untouched][:, None]).all()


def test_radiograph_previews_are_bounded_in_size():
    film = np.linspace(0, 1, 3000 * 2000, dtype=np.float32).reshape(3000, 2000)
    img = _read(radiograph_png(film))
    assert max(img.shape) <= 1024 and img[0, 0] == 0 and img[-1, -1] == 255


def _view(nbytes_side: int, created: float) -> CtView:
    return CtView(np.zeros((1, nbytes_side, 1), np.int16), np.zeros((1, 1, 1, 1), bool), None,
                  created)  # fmt: skip


def test_the_view_store_keeps_what_fits_for_its_time():
    import time

    store = ViewStore(max_bytes=1000, ttl_s=60.0)
    now = time.monotonic()
    a = store.put(_view(200, now))  # 400 + 1 bytes
    b = store.put(_view(200, now))
    c = store.put(_view(200, now))  # the oldest (a) makes room
    with pytest.raises(RequestError) as info:
        store.get(a)
    assert info.value.status == 404
    assert store.get(b) and store.get(c)
    old = store.put(_view(10, now - 61.0))  # already past its time
    with pytest.raises(RequestError):
        store.get(old)
    with pytest.raises(RequestError) as info:
        store.put(_view(600, now))  # larger than the whole store
    assert info.value.status == 413
    with pytest.raises(RequestError):
        store.get("x" * 100)
