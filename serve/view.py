"""What the viewer page (``/``, serve/ui/) needs beyond the API: PNG previews rendered on the
server, so the browser needs no DICOM parser. A radiograph preview is the film as the model sees
its intensities (the DICOM VOI transform to [0, 1]); a CT view keeps one segmented study for a
while (bounded in bytes and time) and renders any slice in a window preset, with the masks
overlaid in a colour per label, and its DICOM SEG for download."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import RequestError
from .png import encode_png

#: CT window presets (level, width) in HU: the usual lung, soft-tissue and bone windows
WINDOWS = {"lung": (-600.0, 1500.0), "soft": (40.0, 400.0), "bone": (400.0, 1800.0)}
#: overlay colours per label, in order (RGB), drawn at OPACITY over the slice
PALETTE = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (220, 100, 255)]
OPACITY = 0.55
MAX_PREVIEW_PX = 1024  # the longest side of a radiograph preview


def radiograph_png(unit: np.ndarray) -> bytes:
    """A [0, 1] film (higher = denser, as the model sees it) → a grey PNG, at most
    :data:`MAX_PREVIEW_PX` on its longest side (every n-th pixel: a preview)."""
    step = max(1, int(np.ceil(max(unit.shape) / MAX_PREVIEW_PX)))
    small = np.clip(unit[::step, ::step], 0.0, 1.0)
    return encode_png(np.round(small * 255.0).astype(np.uint8))


def ct_slice_png(hu: np.ndarray, masks: np.ndarray | None, window: str) -> bytes:
    """One CT slice ``(H, W)`` in HU in a :data:`WINDOWS` preset, with ``masks`` ``(L, H, W)``
    overlaid (None: none) → an RGB PNG."""
    level, width = WINDOWS[window]
    grey = np.clip((hu.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for k, mask in enumerate(masks if masks is not None else ()):
        colour = np.asarray(PALETTE[k % len(PALETTE)], np.float32)
        rgb[mask] = (1 - OPACITY) * rgb[mask] + OPACITY * colour
    return encode_png(np.round(rgb).astype(np.uint8))


@dataclass
class CtView:
    hu: np.ndarray  # int16 (D, H, W)
    masks: np.ndarray  # bool (L, D, H, W)
    seg: bytes | None  # the DICOM SEG, when the series can be referenced slice by slice
    created: float

    @property
    def nbytes(self) -> int:
        return self.hu.nbytes + self.masks.nbytes + len(self.seg or b"")


class ViewStore:
    """Segmented studies kept for the page: at most ``max_bytes`` in all, each for ``ttl_s``;
    the oldest go first. Tokens are random (a view is only reachable by whoever made it)."""

    def __init__(self, max_bytes: int = 512 << 20, ttl_s: float = 900.0):
        self.max_bytes, self.ttl_s = max_bytes, ttl_s
        self._views: OrderedDict[str, CtView] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, view: CtView) -> str:
        if view.nbytes > self.max_bytes:
            raise RequestError(413, "view_too_large", "the study is too large to keep for the "
                               "viewer; use /v1/ct/segment")  # fmt: skip
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._expire()
            while self._views and self._size() + view.nbytes > self.max_bytes:
                self._views.popitem(last=False)
            self._views[token] = view
        return token

    def get(self, token: str) -> CtView:
        with self._lock:
            self._expire()
            view = self._views.get(token) if len(token) <= 64 else None
        if view is None:
            raise RequestError(404, "unknown_view", "no such view (views are kept "
                               f"{self.ttl_s / 60:.0f} minutes): send the study again")  # fmt: skip
        return view

    def _size(self) -> int:
        return sum(v.nbytes for v in self._views.values())

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        for token in [t for t, v in self._views.items() if v.created < cutoff]:
            del self._views[token]
