"""Batched, on-device 2D views for chest X-ray training (Ark) and the evaluation transforms.

Ark (Ma et al., MICCAI 2023; https://github.com/jlianglab/Ark) builds its two views with
albumentations on the CPU, one image at a time::

    Compose([RandomResizedCrop(224, 224), ShiftScaleRotate(rotate_limit=10),
             OneOf([RandomBrightnessContrast(), RandomGamma()], p=0.3)])(image=img, mask=img)

The student takes ``image``, the teacher ``mask``: both share the geometry and only the student
gets the photometric change. Here the same views are made for a whole batch on the images'
device: the random parameters are small CPU tensors drawn from an explicit ``torch.Generator``
(so a run is reproducible and resumable), then the crop and the shift/scale/rotate are composed
into one affine per sample and applied in a single ``grid_sample`` pass.

Differences from the albumentations pipeline, all deliberate:

* One bilinear resampling instead of two (crop-resize, then warp), straight from float images
  in [0, 1]; no rounding to uint8 between steps. Within half a source pixel of the crop box's
  edge the resize reads the pixels just outside the box (cv2.resize replicates the box's edge).
* Borders: ShiftScaleRotate's default in albumentations 1.x is ``cv2.BORDER_REFLECT_101``,
  applied to the *cropped* image. Because crop and warp are one affine here, points that leave
  the crop box read the real image around it; only points outside the *source image* are
  mirrored, and ``grid_sample(padding_mode="reflection", align_corners=False)`` mirrors about the
  image edge (the edge pixel repeated, cv2's ``BORDER_REFLECT``) rather than about the edge
  pixel's centre (``BORDER_REFLECT_101``): the mirrored content sits half a pixel further out.
* Rotation and scaling are about the true image centre (``(W - 1) / 2`` in pixel indices);
  albumentations 1.x hands cv2 ``(W / 2, H / 2)`` in pixel indices, half a pixel off.

Evaluation follows torchvision (``Resize`` with antialiasing, ``CenterCrop``, ``TenCrop``), as
Ark's and BenchmarkTransformers' test code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# torchvision's ImageNet statistics (the values of torchvision.models' ImageNet weights'
# transforms), which Ark uses for every dataset: (x / 255 - mean) / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {size}")
    return int(h), int(w)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _check_generator(generator: torch.Generator) -> None:
    if generator.device.type != "cpu":
        raise ValueError(
            "draw view parameters from a CPU torch.Generator (they move to the images)"
        )


@dataclass(frozen=True)
class Geometry:
    """Per-sample geometric parameters (CPU tensors, float64 unless said).

    Attributes:
        box: (N, 4) int64 crop boxes ``(top, left, height, width)`` in source pixels.
        angle: (N,) rotation in degrees, positive = counter-clockwise on screen (cv2's sign).
        scale: (N,) zoom factor about the output centre (> 1 enlarges).
        shift: (N, 2) translation ``(dx, dy)`` as fractions of the output width / height.
        affine_applied: (N,) bool, whether ShiftScaleRotate fired (else identity values above).
        in_size: ``(H, W)`` of the images the boxes were drawn for.
        out_size: ``(H, W)`` of the views.
    """

    box: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    affine_applied: torch.Tensor
    in_size: tuple[int, int]
    out_size: tuple[int, int]


def sample_crop_boxes(
    n: int,
    generator: torch.Generator,
    in_size: Size,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop boxes ``(top, left, height, width)``, (N, 4) int64.

    torchvision's / albumentations' rule, batched: up to 10 attempts, each drawing an area
    fraction uniformly in ``scale`` and an aspect ratio (w / h) log-uniformly in ``ratio``, with
    ``w = round(sqrt(area * ratio))``, ``h = round(sqrt(area / ratio))``; the first attempt that
    fits in the image wins and its corner is uniform over the valid integer positions. When none
    fits, the whole image is used, clipped to the nearest ratio bound and centred. A fixed amount
    of randomness is consumed whatever the outcome, so the generator's state stays predictable.
    """
    _check_generator(generator)
    H, W = _pair(in_size)
    attempts = 10
    area = H * W * _uniform(n * attempts, scale[0], scale[1], generator).view(n, attempts)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(_uniform(n * attempts, log_lo, log_hi, generator)).view(n, attempts)
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = torch.argmax(fits.int(), dim=1)  # index of the first True (0 if none)
    ok = fits.any(dim=1)
    h = h.gather(1, first[:, None])[:, 0]
    w = w.gather(1, first[:, None])[:, 0]
    top = torch.floor(pos[:, 0] * (H - h + 1)).long().clamp(max=H - h)
    left = torch.floor(pos[:, 1] * (W - w + 1)).long().clamp(max=W - w)

    in_ratio = W / H
    if in_ratio < min(ratio):
        fw, fh = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(H * max(ratio))), H
    else:
        fw, fh = W, H
    fallback = torch.tensor([(H - fh) // 2, (W - fw) // 2, fh, fw], dtype=torch.long)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(ok[:, None], boxes, fallback)


def sample_geometry(
    n: int,
    generator: torch.Generator,
    *,
    in_size: Size,
    out_size: Size,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    shift: float = 0.0625,
    scale_limit: float = 0.1,
    rotate: float = 10.0,
    affine_p: float = 0.5,
) -> Geometry:
    """Draw RandomResizedCrop + ShiftScaleRotate parameters for ``n`` samples.

    The crop follows :func:`sample_crop_boxes`. ShiftScaleRotate (albumentations' defaults except
    ``rotate``, which Ark sets to 10) fires with probability ``affine_p`` (albumentations' default
    0.5, which Ark keeps) and draws, each uniformly: angle in ±``rotate`` degrees, scale in
    1 ± ``scale_limit``, dx and dy in ±``shift`` of the output width / height.
    """
    boxes = sample_crop_boxes(n, generator, in_size, scale, ratio)
    angle = _uniform(n, -rotate, rotate, generator)
    zoom = _uniform(n, 1.0 - scale_limit, 1.0 + scale_limit, generator)
    move = _uniform(2 * n, -shift, shift, generator).view(n, 2)
    fired = torch.rand(n, generator=generator, dtype=torch.float64) < affine_p
    return Geometry(
        box=boxes,
        angle=torch.where(fired, angle, 0.0),
        scale=torch.where(fired, zoom, 1.0),
        shift=torch.where(fired[:, None], move, 0.0),
        affine_applied=fired,
        in_size=_pair(in_size),
        out_size=_pair(out_size),
    )


def affine_theta(geometry: Geometry, out_size: Size | None = None) -> torch.Tensor:
    """(N, 2, 3) float64 ``theta`` for ``F.affine_grid(align_corners=False)``: output → source.

    In continuous pixel coordinates (pixel k spans [k, k + 1)), the forward map is: crop box →
    ``out`` pixels (``x_c = (x - left) · out_w / w``), then about the output centre ``c``:
    ``p_out = s · R(angle) · (p_c - c) + c + (dx · out_w, dy · out_h)``. Its inverse, framed by
    the normalised coordinates of ``affine_grid``, is returned.
    """
    oh, ow = _pair(out_size if out_size is not None else geometry.out_size)
    H, W = geometry.in_size
    n = geometry.box.shape[0]

    def mat(rows: list[list[torch.Tensor | float]]) -> torch.Tensor:
        """(N, 3, 3) from rows of per-sample tensors or constants."""
        entries = [[torch.as_tensor(v, dtype=torch.float64).expand(n) for v in r] for r in rows]
        return torch.stack([torch.stack(r, dim=-1) for r in entries], dim=-2)

    top, left, h, w = geometry.box.to(torch.float64).unbind(1)
    rad = torch.deg2rad(geometry.angle.to(torch.float64))
    cos, sin, s = torch.cos(rad), torch.sin(rad), geometry.scale.to(torch.float64)
    dx, dy = geometry.shift.to(torch.float64).unbind(1)
    cx, cy = ow / 2, oh / 2
    # normalised output [-1, 1] → continuous output pixels
    from_norm = mat([[ow / 2, 0.0, ow / 2], [0.0, oh / 2, oh / 2], [0.0, 0.0, 1.0]])
    # undo shift, then rotation and scale about the centre: R⁻¹ = Rᵀ for R = [[c, s], [-s, c]]
    tx, ty = cx + dx * ow, cy + dy * oh
    inv_ssr = mat(
        [
            [cos / s, -sin / s, cx - (cos * tx - sin * ty) / s],
            [sin / s, cos / s, cy - (sin * tx + cos * ty) / s],
            [0.0, 0.0, 1.0],
        ]
    )
    crop = mat([[w / ow, 0.0, left], [0.0, h / oh, top], [0.0, 0.0, 1.0]])
    to_norm = mat([[2.0 / W, 0.0, -1.0], [0.0, 2.0 / H, -1.0], [0.0, 0.0, 1.0]])
    return (to_norm @ crop @ inv_ssr @ from_norm)[:, :2]


def warp(images: torch.Tensor, geometry: Geometry, out_size: Size | None = None) -> torch.Tensor:
    """Apply each sample's crop + shift/scale/rotate in one bilinear pass.

    Args:
        images: (N, C, H, W) floating, on any device; ``(H, W)`` must be ``geometry.in_size``.
        geometry: from :func:`sample_geometry`.
        out_size: view size; defaults to ``geometry.out_size``.

    Returns:
        (N, C, out_h, out_w), same dtype and device. Borders: see the module docstring.
    """
    if tuple(images.shape[-2:]) != geometry.in_size:
        raise ValueError(
            f"images are {tuple(images.shape[-2:])}, geometry is for {geometry.in_size}"
        )
    oh, ow = _pair(out_size if out_size is not None else geometry.out_size)
    theta = affine_theta(geometry, (oh, ow)).to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


@dataclass(frozen=True)
class Photometric:
    """Per-sample photometric parameters (CPU tensors).

    Attributes:
        fired: (N,) bool, whether the OneOf fired.
        op: (N,) int64, 0 = brightness/contrast, 1 = gamma (meaningful where ``fired``).
        alpha: (N,) contrast factor, ``1 + U(-contrast, contrast)``.
        beta: (N,) brightness offset, ``U(-brightness, brightness)`` (times the float max, 1).
        gamma: (N,) exponent, ``U(gamma_lo, gamma_hi) / 100``.
    """

    fired: torch.Tensor
    op: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor


def sample_photometric(
    n: int,
    generator: torch.Generator,
    p: float = 0.3,
    *,
    brightness: float = 0.2,
    contrast: float = 0.2,
    gamma: tuple[float, float] = (80.0, 120.0),
) -> Photometric:
    """Parameters of ``OneOf([RandomBrightnessContrast(), RandomGamma()], p)`` (default arguments).

    The OneOf fires with probability ``p`` and then picks one child with probability
    proportional to the children's own ``p`` (both 0.5 by default, so 50/50), applied for sure.
    """
    _check_generator(generator)
    fired = torch.rand(n, generator=generator, dtype=torch.float64) < p
    op = (torch.rand(n, generator=generator, dtype=torch.float64) >= 0.5).long()
    alpha = 1.0 + _uniform(n, -contrast, contrast, generator)
    beta = _uniform(n, -brightness, brightness, generator)
    exponent = _uniform(n, gamma[0], gamma[1], generator) / 100.0
    return Photometric(fired=fired, op=op, alpha=alpha, beta=beta, gamma=exponent)


def photometric(images: torch.Tensor, params: Photometric) -> torch.Tensor:
    """Apply the drawn photometric change to (N, C, H, W) float images in [0, 1].

    Brightness/contrast: ``clip(alpha · x + beta, 0, 1)`` (albumentations' float path with
    ``brightness_by_max=True``: the offset is ``beta`` times the float maximum 1, then clipped to
    [0, 1]). Gamma: ``x ** gamma`` (albumentations' float path; no clipping needed in [0, 1];
    negatives, which valid inputs never hold, are taken as 0). Samples where nothing fired are
    returned unchanged.
    """

    def per_sample(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)

    fired = params.fired.to(images.device).view(-1, 1, 1, 1)
    use_gamma = (params.op == 1).to(images.device).view(-1, 1, 1, 1)
    linear = (per_sample(params.alpha) * images + per_sample(params.beta)).clamp(0.0, 1.0)
    curved = images.clamp_min(0.0).pow(per_sample(params.gamma))
    changed = torch.where(use_gamma, curved, linear)
    return torch.where(fired, changed, images)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """Repeat a single channel to ``len(mean)`` channels, then ``(x - mean) / std`` per channel."""
    if images.shape[1] == 1 and len(mean) > 1:
        images = images.expand(-1, len(mean), -1, -1)
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def ark_views(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    out_size: Size = 224,
    p: float = 0.3,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    shift: float = 0.0625,
    scale_limit: float = 0.1,
    rotate: float = 10.0,
    affine_p: float = 0.5,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ark's (student, teacher) views of a batch.

    Both views share one geometry (:func:`sample_geometry`, drawn first, then
    :func:`sample_photometric`, from ``generator``); the student alone gets the photometric
    change; both are then channel-repeated and normalised (:func:`normalize`). Where no
    photometric change fired, student and teacher are equal.

    Args:
        images: (N, C, H, W), C = 1 or 3, float in [0, 1] or uint8 (divided by 255), any device.
        generator: CPU generator; its state fully determines the views.

    Returns:
        ``(student, teacher)``, each (N, len(mean), out_h, out_w) in the images' float dtype.
    """
    images = _as_float(images)
    n = images.shape[0]
    geometry = sample_geometry(
        n, generator, in_size=tuple(images.shape[-2:]), out_size=out_size, scale=scale,
        ratio=ratio, shift=shift, scale_limit=scale_limit, rotate=rotate, affine_p=affine_p,
    )  # fmt: skip
    params = sample_photometric(n, generator, p)
    teacher = warp(images, geometry)
    student = photometric(teacher, params)
    return normalize(student, mean, std), normalize(teacher, mean, std)


# ---------------------------------------------------------------------------- evaluation


def resize_bilinear(images: torch.Tensor, size: Size) -> torch.Tensor:
    """torchvision ``Resize(size)`` on (N, C, H, W) float images: bilinear, antialiased.

    An int resizes the shorter side to ``size`` and the longer to ``int(size · long / short)``;
    a pair ``(h, w)`` resizes to exactly that (Ark's own code uses ``Resize((256, 256))``).
    """
    H, W = images.shape[-2:]
    if isinstance(size, int):
        short, long = (H, W) if H <= W else (W, H)
        new_short, new_long = size, int(size * long / short)
        oh, ow = (new_short, new_long) if H <= W else (new_long, new_short)
    else:
        oh, ow = _pair(size)
    if (oh, ow) == (H, W):
        return images
    return F.interpolate(
        images, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True
    )


def center_crop(images: torch.Tensor, size: Size) -> torch.Tensor:
    """torchvision ``CenterCrop``: corner at ``round((H - h) / 2), round((W - w) / 2)``."""
    H, W = images.shape[-2:]
    h, w = _pair(size)
    if h > H or w > W:
        raise ValueError(f"crop {(h, w)} is larger than the image {(H, W)}")
    top, left = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
    return images[..., top : top + h, left : left + w]


def resize_center_crop(images: torch.Tensor, resize: Size = 256, crop: Size = 224) -> torch.Tensor:
    """Validation view: :func:`resize_bilinear` then :func:`center_crop` (uint8 → [0, 1])."""
    return center_crop(resize_bilinear(_as_float(images), resize), crop)


def ten_crop(images: torch.Tensor, resize: Size = 256, crop: Size = 224) -> torch.Tensor:
    """Test views: resize, then torchvision's ``TenCrop`` order per sample.

    Returns (N · 10, C, h, w), sample-major: for each sample the top-left, top-right,
    bottom-left, bottom-right and centre crops, then the same five of the horizontally flipped
    image. :func:`average_crops` folds predictions back to (N, ...).
    """
    x = resize_bilinear(_as_float(images), resize)
    H, W = x.shape[-2:]
    h, w = _pair(crop)
    if h > H or w > W:
        raise ValueError(f"crop {(h, w)} is larger than the resized image {(H, W)}")

    def five(t: torch.Tensor) -> list[torch.Tensor]:
        return [
            t[..., :h, :w],
            t[..., :h, W - w :],
            t[..., H - h :, :w],
            t[..., H - h :, W - w :],
            center_crop(t, (h, w)),
        ]

    crops = five(x) + five(x.flip(-1))
    return torch.stack(crops, dim=1).flatten(0, 1)


def average_crops(probs: torch.Tensor, n_crops: int = 10) -> torch.Tensor:
    """Mean over each sample's ``n_crops`` consecutive rows: (N · n_crops, ...) → (N, ...)."""
    if probs.shape[0] % n_crops:
        raise ValueError(f"{probs.shape[0]} rows is not a multiple of {n_crops} crops")
    return probs.reshape(probs.shape[0] // n_crops, n_crops, *probs.shape[1:]).mean(dim=1)
