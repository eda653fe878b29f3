"""Ark's batched 2D views (train/views2d.py) against hand-computed values and torchvision."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from train import views2d as V


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n=4, c=1, h=64, w=64, seed=0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=_gen(seed), dtype=dtype)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(V.IMAGENET_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(V.IMAGENET_STD).view(1, -1, 1, 1)
    return x * std + mean


def _geometry(box, angle=0.0, scale=1.0, shift=(0.0, 0.0), in_size=(64, 64), out_size=(48, 48)):
    """One-sample Geometry with chosen values."""
    return V.Geometry(
        box=torch.tensor([box], dtype=torch.long),
        angle=torch.tensor([angle], dtype=torch.float64),
        scale=torch.tensor([scale], dtype=torch.float64),
        shift=torch.tensor([shift], dtype=torch.float64),
        affine_applied=torch.tensor([True]),
        in_size=in_size,
        out_size=out_size,
    )


# ------------------------------------------------------------------ student / teacher pairing


def test_p0_views_identical_and_shaped():
    student, teacher = V.ark_views(_images(), _gen(1), out_size=48, p=0.0)
    assert student.shape == teacher.shape == (4, 3, 48, 48)
    assert torch.equal(student, teacher)


def test_p1_student_is_photometric_of_teacher():
    images = _images(n=6)
    student, teacher = V.ark_views(images, _gen(2), out_size=48, p=1.0)
    # Replay the same draws, in the documented order, from an identically seeded generator.
    g = _gen(2)
    geometry = V.sample_geometry(6, g, in_size=64, out_size=48)
    params = V.sample_photometric(6, g, 1.0)
    assert params.fired.all()
    raw = V.warp(images, geometry)
    torch.testing.assert_close(teacher, V.normalize(raw), rtol=0, atol=1e-6)
    # The student is the photometric change of the teacher's un-normalised view.
    teacher_raw = _unnormalize(teacher)
    torch.testing.assert_close(teacher_raw, raw.expand(-1, 3, -1, -1), rtol=0, atol=1e-6)
    expected = V.normalize(V.photometric(teacher_raw, params))
    torch.testing.assert_close(student, expected, rtol=0, atol=1e-5)
    assert (student - teacher).abs().flatten(1).amax(1).min() > 1e-3


def test_teacher_equals_student_where_nothing_fired():
    images = _images(n=32, c=3)
    student, teacher = V.ark_views(images, _gen(3), out_size=40, p=0.5)
    g = _gen(3)
    V.sample_geometry(32, g, in_size=64, out_size=40)
    fired = V.sample_photometric(32, g, 0.5).fired
    assert 0 < fired.sum() < 32
    same = (student == teacher).flatten(1).all(1)
    assert torch.equal(same, ~fired)


def test_uint8_input_is_scaled():
    images = (_images() * 255).round().to(torch.uint8)
    a = V.ark_views(images, _gen(4), out_size=48)
    b = V.ark_views(images.float() / 255, _gen(4), out_size=48)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------- geometry vs references


def test_identity_affine_matches_torchvision_resized_crop():
    """Zero rotation/shift, unit scale: warp is torchvision's resized_crop (bilinear, no antialias).

    They differ only where a sample point lies within half a source pixel of the crop box's
    edge: F.interpolate clamps to the box (edge replicated) while warp reads the real pixel
    beyond it. Elsewhere both compute the same bilinear weights from the same source coordinate
    ``(u + 0.5) · h / out - 0.5`` (row/column indices), so in float64 they agree to rounding
    error (1e-12; 1e-9 allows for the differently ordered arithmetic).
    """
    n, size, out = 24, 64, 48
    images = _images(n=n, c=2, h=size, w=size, dtype=torch.float64)
    geometry = V.sample_geometry(
        n, _gen(5), in_size=size, out_size=out, shift=0.0, scale_limit=0.0, rotate=0.0
    )
    views = V.warp(images, geometry)
    compared = 0
    for i, (top, left, h, w) in enumerate(geometry.box.tolist()):
        ref = TF.resized_crop(
            images[i], top, left, h, w, [out, out], InterpolationMode.BILINEAR, antialias=False
        )
        u = torch.arange(out, dtype=torch.float64) + 0.5
        rows = ((u * h / out - 0.5) >= 0) & ((u * h / out - 0.5) <= h - 1)
        cols = ((u * w / out - 0.5) >= 0) & ((u * w / out - 0.5) <= w - 1)
        mask = rows[:, None] & cols[None, :]
        compared += int(mask.sum())
        torch.testing.assert_close(views[i][:, mask], ref[:, mask], rtol=0, atol=1e-9)
    assert compared > 0.8 * n * out * out


def test_rotation_by_90_degrees_is_rot90():
    images = _images(n=1, c=2, h=32, w=32)
    geometry = _geometry((0, 0, 32, 32), angle=90.0, in_size=(32, 32), out_size=(32, 32))
    # Positive angles turn counter-clockwise on screen, as cv2 (and np.rot90) do.
    expected = torch.rot90(images, 1, dims=(-2, -1))
    torch.testing.assert_close(V.warp(images, geometry), expected, rtol=0, atol=1e-5)


def _expected_position(x, y, box, angle, scale, shift, out_size):
    """Hand restatement of the forward map in continuous pixel coordinates (x right, y down):
    crop box → output pixels, then albumentations' ShiftScaleRotate about the output centre."""
    top, left, h, w = box
    oh, ow = out_size
    xc, yc = (x - left) * ow / w, (y - top) * oh / h
    rx, ry = xc - ow / 2, yc - oh / 2
    a = math.radians(angle)
    xo = scale * (math.cos(a) * rx + math.sin(a) * ry) + ow / 2 + shift[0] * ow
    yo = scale * (-math.sin(a) * rx + math.cos(a) * ry) + oh / 2 + shift[1] * oh
    return xo, yo


@pytest.mark.parametrize(
    "box, angle, scale, shift, out_size",
    [
        ((0, 0, 48, 48), 20.0, 1.0, (0.0, 0.0), (48, 48)),  # pure rotation
        ((0, 0, 48, 48), -10.0, 1.1, (0.05, -0.05), (48, 48)),
        ((6, 4, 36, 40), 15.0, 0.9, (-0.04, 0.06), (40, 44)),  # crop, resize, non-square out
    ],
)
def test_marked_point_moves_where_the_hand_computed_map_sends_it(
    box, angle, scale, shift, out_size
):
    # A small Gaussian blob (sigma 1.5 px) stands for the marked pixel: its centroid survives
    # bilinear resampling to ~0.005 px (measured), unlike a single pixel's; 0.02 px is allowed,
    # far below the several pixels a wrong sign, centre or order would cost.
    H = W = 48
    px, py = 30.5, 14.5  # centre of pixel (row 14, col 30)
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5,
        torch.arange(W, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    blob = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * 1.5**2))[None, None]
    geometry = _geometry(box, angle, scale, shift, in_size=(H, W), out_size=out_size)
    out = V.warp(blob, geometry)[0, 0]
    oh, ow = out_size
    oy, ox = torch.meshgrid(
        torch.arange(oh, dtype=torch.float64) + 0.5,
        torch.arange(ow, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    cx, cy = float((out * ox).sum() / out.sum()), float((out * oy).sum() / out.sum())
    ex, ey = _expected_position(px, py, box, angle, scale, shift, out_size)
    assert abs(cx - ex) < 0.02 and abs(cy - ey) < 0.02, ((cx, cy), (ex, ey))


def test_crop_boxes_respect_scale_and_ratio_bounds():
    H, W = 256, 200
    boxes = V.sample_crop_boxes(4000, _gen(6), (H, W))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    area = (h * w).double() / (H * W)
    aspect = w.double() / h
    # Sides are rounded to whole pixels (±0.5 on sides of at least ~55 px): < 2 % relative.
    tol = 0.02
    assert area.min() >= 0.08 * (1 - tol) and area.max() <= 1.0
    assert aspect.min() >= 0.75 * (1 - tol) and aspect.max() <= 4 / 3 * (1 + tol)
    # The draws cover the ranges, and corners spread over the valid positions.
    assert area.min() < 0.1 and area.max() > 0.9
    assert aspect.min() < 0.78 and aspect.max() > 1.28
    slack = (H - h).clamp(min=1).double()
    assert (top / slack).mean().sub(0.5).abs() < 0.05


@pytest.mark.parametrize("size", [(64, 16), (16, 64), (40, 40)])
def test_crop_fallback_matches_torchvision(size):
    # Area fractions near 1 never fit a 4:1 image within the ratio bounds: all 10 tries fail.
    # (For the square image every try with ratio != 1 fails, and some succeed.)
    scale = (0.99, 1.0)
    boxes = V.sample_crop_boxes(50, _gen(7), size, scale=scale)
    if size[0] != size[1]:
        ref = RandomResizedCrop.get_params(torch.zeros(1, *size), list(scale), [3 / 4, 4 / 3])
        assert (boxes == torch.tensor(ref)).all()
    else:
        assert ((boxes[:, 2] * boxes[:, 3]) >= 0.99 * 40 * 40 * 0.95).all()


def test_geometry_parameter_ranges():
    n = 20000
    g = V.sample_geometry(n, _gen(8), in_size=64, out_size=48, rotate=10.0)
    fired = g.affine_applied
    assert abs(fired.double().mean() - 0.5) < 0.02
    assert g.angle.abs().max() <= 10 and g.angle.abs().max() > 9.9
    assert ((g.scale - 1).abs() <= 0.1).all() and g.shift.abs().max() <= 0.0625
    assert (g.angle[~fired] == 0).all() and (g.scale[~fired] == 1).all()
    assert (g.shift[~fired] == 0).all()


def test_deterministic_and_resumable():
    images = _images(n=3)
    a = V.ark_views(images, _gen(9), out_size=48, p=0.5)
    b = V.ark_views(images, _gen(9), out_size=48, p=0.5)
    c = V.ark_views(images, _gen(10), out_size=48, p=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    g = _gen(11)
    V.ark_views(images, g, out_size=48)
    state = g.get_state()
    after = V.ark_views(images, g, out_size=48)
    resumed = V.ark_views(images, torch.Generator().set_state(state), out_size=48)
    assert all(torch.equal(x, y) for x, y in zip(after, resumed, strict=True))


# --------------------------------------------------------------------------------- photometric


def test_photometric_hand_computed():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4).repeat(4, 1, 1, 1)
    x[3, 0, 0, 3] = 1.5  # untouched sample: not even clipped
    params = V.Photometric(
        fired=torch.tensor([True, True, True, False]),
        op=torch.tensor([0, 0, 1, 0]),
        alpha=torch.tensor([1.1, 0.8, 1.0, 1.2], dtype=torch.float64),
        beta=torch.tensor([0.1, -0.2, 0.0, 0.2], dtype=torch.float64),
        gamma=torch.tensor([1.0, 1.0, 1.2, 0.9], dtype=torch.float64),
    )
    out = V.photometric(x, params)[:, 0, 0]
    expected = torch.tensor(
        [
            [0.1, 0.375, 0.65, 1.0],  # 1.1·x + 0.1, 1.2 clipped to 1
            [0.0, 0.0, 0.2, 0.6],  # 0.8·x − 0.2, −0.2 clipped to 0
            [0.0, 0.189464571, 0.435275282, 1.0],  # x ** 1.2
            [0.0, 0.25, 0.5, 1.5],
        ]
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_photometric_sampling_ranges():
    n = 20000
    p = V.sample_photometric(n, _gen(12), 0.3)
    assert abs(p.fired.double().mean() - 0.3) < 0.02
    assert abs(p.op[p.fired].double().mean() - 0.5) < 0.03
    assert ((p.alpha - 1).abs() <= 0.2).all() and (p.beta.abs() <= 0.2).all()
    assert (p.gamma >= 0.8).all() and (p.gamma <= 1.2).all()
    assert p.gamma.min() < 0.81 and p.gamma.max() > 1.19
    assert not V.sample_photometric(100, _gen(13), 0.0).fired.any()
    assert V.sample_photometric(100, _gen(13), 1.0).fired.all()


# ---------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("shape", [(2, 1, 70, 90), (2, 3, 64, 64), (1, 1, 81, 57)])
@pytest.mark.parametrize("resize, crop", [(56, 48), (57, 48), ((56, 60), 48)])
def test_resize_center_crop_matches_torchvision(shape, resize, crop):
    x = torch.rand(*shape, generator=_gen(14))
    size = [resize] if isinstance(resize, int) else list(resize)
    ref = TF.center_crop(TF.resize(x, size, antialias=True), [crop, crop])
    out = V.resize_center_crop(x, resize=resize, crop=crop)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 70, 90), (3, 3, 64, 64)])
def test_ten_crop_matches_torchvision(shape):
    x = torch.rand(*shape, generator=_gen(15))
    out = V.ten_crop(x, resize=57, crop=48)
    ref = torch.cat([torch.stack(TF.ten_crop(TF.resize(s, [57], antialias=True), [48])) for s in x])
    assert out.shape == (shape[0] * 10, shape[1], 48, 48)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_average_crops():
    probs = torch.arange(40, dtype=torch.float32).view(20, 2)  # 2 samples × 10 crops × 2 classes
    expected = torch.tensor([[9.0, 10.0], [29.0, 30.0]])
    torch.testing.assert_close(V.average_crops(probs), expected)
    with pytest.raises(ValueError):
        V.average_crops(probs[:15])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    images = _images(n=4)
    cpu = V.ark_views(images, _gen(16), out_size=48, p=0.5)
    gpu = V.ark_views(images.cuda(), _gen(16), out_size=48, p=0.5)
    # grid_sample's source positions are float32 pixel coordinates (ulp 3.8e-6 to 7.6e-6 on a
    # 64 px image) and CUDA contracts their arithmetic into fused multiply-adds: one ulp there
    # moves a bilinear sample of this noise (neighbours differ by up to 1) by as much, and the
    # normalisation (1 / std <= 4.5) scales it to <= 3.4e-5. 1e-5 failed on an H200 (1.6e-5).
    for a, b in zip(cpu, gpu, strict=True):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=5e-5)
    with pytest.raises(ValueError, match="CPU"):
        V.sample_photometric(2, torch.Generator(device="cuda"))
