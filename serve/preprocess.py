"""DALI preprocessing built from a :class:`~imaging.preprocess.Preprocessing` description.

The description (copied from the checkpoint into the manifest) is the only source of sizes,
crop rule, mean/std and HU window: nothing is hard-coded here. ``imaging.preprocess`` holds the
NumPy reference; tests/serve/test_preprocess.py holds the two equal (max abs error ≤ 1e-4) on
real DICOM inputs.

What runs where:

* Radiographs (input ``(H, W)`` float32 in [0, 1], from ``imaging.preprocess.radiograph_to_unit``;
  sizes may differ within a batch).

  - Host (integer geometry only, no pixel work): the resized size per image (``"square"``:
    ``resize × resize``; ``"shorter_side"``: :func:`imaging.preprocess.shorter_side_size`), the
    crop's ``(top, left)`` (:func:`imaging.preprocess.center_crop_offsets`, the description's
    ``crop_offset`` rule) and a zero border wide enough for the resize filter. These reach the
    pipeline as external sources, so DALI's own rounding never decides a size or an offset.
  - DALI: zero-pad the image and stack it with a zero-padded "ones" mask (2 channels, HWC) →
    ``fn.resize`` (``INTERP_LINEAR`` with ``antialias=True``, i.e. a triangle filter widened by
    the downscale factor) of the region of interest that is the original image → image channel
    divided by mask channel → ``fn.slice`` centre crop → grey repeated to ``channels`` →
    ``fn.crop_mirror_normalize`` (``(x - mean) / std`` per channel, HWC → CHW).

  Why the mask: inside the image DALI's antialiased linear filter gives the reference's weights
  (``torch.nn.functional.interpolate(..., mode="bilinear", antialias=True)``) exactly, but near
  the border DALI clamps (taps past the edge reuse the edge pixel) while the reference drops
  those taps and renormalises the rest. Measured, plain ``fn.resize`` is off by up to 5e-2 at the
  edges for any filter/antialias setting. Padding with zeros turns the clamped taps into zero
  taps, and dividing by the identically resized mask (``Σ_inside w / Σ_all w``) is exactly the
  renormalisation, so the result equals the reference to float32 rounding (~1e-6).

* CT (input ``(X, Y, Z)`` float32 HU cube, every item the same shape).

  - Host (the caller): any resample to ``spacing`` and the ``(D, H, W) → (X, Y, Z)`` transpose,
    with imaging's NumPy (``imaging.resample.resample_to_spacing``; ``voxels.transpose(2, 1, 0)``).
    DALI has no equivalent of that resampler, and the transpose is free in NumPy.
  - DALI: clip to ``hu_clip`` and scale to [0, 1] (when set), ``(x - mean) / std``, channel axis.

DALI pipelines are not thread-safe: a :class:`DaliPreprocessor` serialises its calls with a lock,
and the intended use is one per worker (each worker process builds its own).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from imaging.preprocess import Preprocessing, center_crop_offsets, shorter_side_size

try:  # DALI is an optional serving dependency; the error is raised on use.
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dali_math
except ImportError:  # pragma: no cover - exercised only where DALI is missing
    fn = pipeline_def = types = dali_math = None


def _cuda_visible() -> bool:
    try:
        from nvidia.dali.backend import GetCUDADeviceCount

        return GetCUDADeviceCount() > 0
    except Exception:  # no driver / no CUDA build: CPU
        return False


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    values = [float(v) for v in values]
    return values * channels if len(values) == 1 else values


def _pad(n_in: int, n_out: int) -> int:
    """Zero border (pixels) that holds every tap of a ``n_in → n_out`` triangle filter.

    The triangle's half-width is ``max(n_in / n_out, 1)`` input pixels; two more cover DALI's
    rounding of the support to whole taps.
    """
    return int(math.ceil(max(n_in / n_out, 1.0))) + 2


class DaliPreprocessor:
    """Decoded pixels → model input batch, with a DALI pipeline built from ``pp``.

    One pipeline per instance and one instance per worker: calls are serialised by a lock
    because DALI pipelines are not thread-safe.

    Args:
        pp: the model's preprocessing description (``kind`` ``"radiograph"`` or ``"ct"``).
        max_batch: most items per pipeline run; longer calls are split into chunks.
        device: ``"cpu"``, ``"gpu"``, or None to use the GPU when CUDA is visible.
        num_threads: DALI CPU worker threads.

    Raises:
        ImportError: DALI is not installed.
        ValueError: bad ``max_batch``/``device``.
    """

    def __init__(
        self,
        pp: Preprocessing,
        max_batch: int = 8,
        device: str | None = None,
        num_threads: int = 2,
    ) -> None:
        if fn is None:
            raise ImportError("DaliPreprocessor needs NVIDIA DALI (pip install nvidia-dali-*)")
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        device = device or ("gpu" if _cuda_visible() else "cpu")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        self.pp, self.max_batch, self.device = pp, int(max_batch), device
        self._lock = threading.Lock()
        build = self._radiograph_graph if pp.kind == "radiograph" else self._ct_graph
        pipe = pipeline_def(build)(
            batch_size=self.max_batch,
            num_threads=num_threads,
            device_id=0 if device == "gpu" else None,
            exec_dynamic=True,
            prefetch_queue_depth=1,
        )
        pipe.build()
        self._pipe = pipe

    # ------------------------------------------------------------------ graphs

    def _radiograph_graph(self):
        pp = self.pp
        x = fn.external_source(name="pixels", layout="HWC", dtype=types.FLOAT)
        if self.device == "gpu":
            x = x.gpu()
        if pp.resize is not None:
            pad = fn.external_source(name="pad", dtype=types.INT32)  # (2,) rows, cols
            padded_hw = fn.external_source(name="padded_hw", dtype=types.INT32)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT)
            size = fn.external_source(name="size", dtype=types.FLOAT)
            ones = x * 0.0 + 1.0
            both = fn.cat(x, ones, axis_name="C")
            both = fn.slice(
                both,
                start=-pad,
                shape=padded_hw,
                axis_names="HW",
                out_of_bounds_policy="pad",
                fill_values=0.0,
            )
            both = fn.resize(
                both,
                size=size,
                roi_start=roi_start,
                roi_end=roi_end,
                roi_relative=False,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
                dtype=types.FLOAT,
            )
            x = both[:, :, 0:1] / both[:, :, 1:2]
        if pp.crop is not None:
            top_left = fn.external_source(name="crop_start", dtype=types.INT32)
            x = fn.slice(x, start=top_left, shape=[pp.crop, pp.crop], axis_names="HW")
        if pp.channels > 1:
            x = fn.cat(*([x] * pp.channels), axis_name="C")
        return fn.crop_mirror_normalize(
            x,
            mean=_per_channel(pp.mean, pp.channels),
            std=_per_channel(pp.std, pp.channels),
            dtype=types.FLOAT,
            output_layout="CHW",
        )

    def _ct_graph(self):
        pp = self.pp
        x = fn.external_source(name="voxels", layout="DHW", dtype=types.FLOAT)
        if self.device == "gpu":
            x = x.gpu()
        if pp.hu_clip is not None:
            lo, hi = pp.hu_clip
            x = (dali_math.clamp(x, lo, hi) - lo) / (hi - lo)
        x = (x - float(pp.mean[0])) / float(pp.std[0])
        return fn.expand_dims(x, axes=[0], new_axis_names="C")

    # ------------------------------------------------------------------ feeding

    def _radiograph_inputs(self, items: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
        pp = self.pp
        feeds: dict[str, list[np.ndarray]] = {"pixels": []}
        if pp.resize is not None:
            for name in ("pad", "padded_hw", "roi_start", "roi_end", "size"):
                feeds[name] = []
        if pp.crop is not None:
            feeds["crop_start"] = []
        for item in items:
            x = np.asarray(item, dtype=np.float32)
            if x.ndim != 2 or min(x.shape) < 1:
                raise ValueError(f"radiograph pixels must be (H, W), got {x.shape}")
            H, W = x.shape
            feeds["pixels"].append(np.ascontiguousarray(x[:, :, None]))
            hw = (H, W)
            if pp.resize is not None:
                if pp.resize_mode == "square":
                    hw = (pp.resize, pp.resize)
                else:
                    hw = shorter_side_size(H, W, pp.resize)
                pad = np.array([_pad(H, hw[0]), _pad(W, hw[1])], np.int32)
                feeds["pad"].append(pad)
                feeds["padded_hw"].append(np.array([H, W], np.int32) + 2 * pad)
                feeds["roi_start"].append(pad.astype(np.float32))
                feeds["roi_end"].append((pad + [H, W]).astype(np.float32))
                feeds["size"].append(np.array(hw, np.float32))
            if pp.crop is not None:
                top_left = center_crop_offsets(hw, pp.crop, pp.crop_offset)
                feeds["crop_start"].append(np.array(top_left, np.int32))
        return feeds

    def _ct_inputs(self, items: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
        cubes = [np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for v in items]
        shapes = {c.shape for c in cubes}
        if any(c.ndim != 3 for c in cubes) or len(shapes) > 1:
            raise ValueError(f"CT items must be (X, Y, Z) cubes of one shape, got {sorted(shapes)}")
        return {"voxels": cubes}

    # ------------------------------------------------------------------ calling

    def __call__(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocess ``items`` as described by ``pp``.

        Args:
            items: radiographs: ``(H, W)`` float32 in [0, 1] (sizes may differ); CT:
                ``(X, Y, Z)`` float32 HU cubes of one shape, already resampled and transposed.

        Returns:
            float32 ``(N, C, S, S)`` (radiograph) or ``(N, 1, X, Y, Z)`` (CT).
        """
        items = list(items)
        if not items:
            raise ValueError("no items to preprocess")
        if self.pp.kind == "radiograph":
            inputs = self._radiograph_inputs
        else:
            self._ct_inputs(items)  # one shape across all chunks, so they stack
            inputs = self._ct_inputs
        chunks = []
        with self._lock:
            for i in range(0, len(items), self.max_batch):
                for name, data in inputs(items[i : i + self.max_batch]).items():
                    self._pipe.feed_input(name, data)
                (out,) = self._pipe.run()
                if self.device == "gpu":
                    out = out.as_cpu()
                chunks.append(np.array(out.as_tensor(), dtype=np.float32))
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
