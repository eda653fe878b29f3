"""PEAC grid matching: overlap indices, the transposition bug, local loss, bilinear matching."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from kernels.grid import (
    match_patches,
    match_patches_bilinear,
    match_patches_bilinear_reference,
    match_patches_reference,
    overlap_indices,
)

OFFSETS = list(itertools.product(range(5), repeat=4))  # PEAC: x1, y1, x2, y2 in 0..4


def _idx(values):
    return torch.tensor(values, dtype=torch.long)


def test_overlap_by_hand():
    idx1, idx2 = overlap_indices((0, 0), (1, 2), grid_shape=(3, 4))
    assert torch.equal(idx1, _idx([6, 7, 10, 11]))  # view-1 rows 1-2, cols 2-3
    assert torch.equal(idx2, _idx([0, 1, 4, 5]))  # view-2 rows 0-1, cols 0-1
    idx1, idx2 = overlap_indices((2, 2), (2, 2), grid_shape=(2, 3))
    assert torch.equal(idx1, torch.arange(6)) and torch.equal(idx2, torch.arange(6))
    idx1, idx2 = overlap_indices((0, 0), (3, 0), grid_shape=(3, 4))
    assert idx1.numel() == 0 and idx2.numel() == 0


def test_bug_compat_by_hand():
    # Correct: view 1 at column 1, view 2 at column 0 share view-1 columns 0-1 / view-2 columns 1-2.
    idx1, idx2 = overlap_indices((0, 1), (0, 0), grid_shape=(3, 3))
    assert torch.equal(idx1, _idx([0, 1, 3, 4, 6, 7]))
    assert torch.equal(idx2, _idx([1, 2, 4, 5, 7, 8]))
    # Official masks: the column offsets select mask *rows*.
    idx1, idx2 = overlap_indices((0, 1), (0, 0), grid_shape=(3, 3), bug_compat=True)
    assert torch.equal(idx1, _idx([0, 1, 2, 3, 4, 5]))
    assert torch.equal(idx2, _idx([3, 4, 5, 6, 7, 8]))
    with pytest.raises(ValueError, match="square"):
        overlap_indices((0, 0), (0, 0), grid_shape=(3, 4), bug_compat=True)


def _loop_statement(box1, box2, h=14, w=14):
    """Independent restatement (docs/METHODS.md 3.3 item 4): walk the shared grid row-major, keep
    every cell inside both windows; its local index in each view is its position minus the offset.
    """
    (r1, c1), (r2, c2) = box1, box2
    idx1, idx2 = [], []
    for r in range(max(r1, r2) + h):
        for c in range(max(c1, c2) + w):
            if r1 <= r < r1 + h and c1 <= c < c1 + w and r2 <= r < r2 + h and c2 <= c < c2 + w:
                idx1.append((r - r1) * w + (c - c1))
                idx2.append((r - r2) * w + (c - c2))
    return _idx(idx1), _idx(idx2)


def test_exact_match_equals_loop_statement():
    for x1, y1, x2, y2 in OFFSETS:
        got = overlap_indices((x1, y1), (x2, y2))
        want = _loop_statement((x1, y1), (x2, y2))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert got[0].numel() >= 100  # PEAC: overlap is at least 10 x 10 cells
    got = overlap_indices((0, 3), (4, 1), grid_shape=(7, 9))
    want = _loop_statement((0, 3), (4, 1), 7, 9)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_bug_compat_pairs_same_cells_only_on_the_diagonal():
    same = 0
    for x1, y1, x2, y2 in OFFSETS:
        idx1, idx2 = overlap_indices((x1, y1), (x2, y2), bug_compat=True)
        cells1 = torch.stack([x1 + idx1 // 14, y1 + idx1 % 14], 1)
        cells2 = torch.stack([x2 + idx2 // 14, y2 + idx2 % 14], 1)
        identical = torch.equal(cells1, cells2)
        assert identical == (x1 - y1 == x2 - y2)
        same += identical
        # the correct matching always pairs identical cells
        idx1, idx2 = overlap_indices((x1, y1), (x2, y2))
        assert torch.equal(x1 + idx1 // 14, x2 + idx2 // 14)
        assert torch.equal(y1 + idx1 % 14, y2 + idx2 % 14)
    assert same == 85  # 85 / 625 = 13.6 % of draws (docs/METHODS.md: about 13 %)


def _crop_tokens(image, box, cell=2, n=14):
    """Tokens of a crop: each cell's pixels (C * cell * cell values) of an n x n cell window."""
    r, c = box
    crop = image[:, r * cell : (r + n) * cell, c * cell : (c + n) * cell]
    tiles = crop.reshape(-1, n, cell, n, cell).permute(1, 3, 0, 2, 4)
    return tiles.reshape(n, n, -1)


def test_crops_of_a_shared_grid_match_identical_pixels():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 18 * 2, 18 * 2, generator=g)  # 18 x 18 grid of 2-px cells, 3 channels
    draws = [(0, 0, 4, 4), (1, 3, 2, 0), (4, 1, 0, 2), (2, 2, 3, 3), (0, 4, 4, 0)]
    t1 = torch.stack([_crop_tokens(image, (x1, y1)) for x1, y1, _, _ in draws])
    t2 = torch.stack([_crop_tokens(image, (x2, y2)) for _, _, x2, y2 in draws])
    box1 = _idx([d[:2] for d in draws])
    box2 = _idx([d[2:] for d in draws])
    assert match_patches(t1, t2, box1, box2).item() == 0.0
    for i, (x1, y1, x2, y2) in enumerate(draws):
        bugged = match_patches(t1[i : i + 1], t2[i : i + 1], box1[i : i + 1], box2[i : i + 1], True)
        if x1 - y1 == x2 - y2:
            assert bugged.item() == 0.0
        else:
            assert bugged.item() > 0.01


def test_loss_equals_independent_statement():
    g = torch.Generator().manual_seed(1)
    b, h, w, c = 5, 7, 9, 5
    t1, t2 = torch.randn(b, h, w, c, generator=g), torch.randn(b, h, w, c, generator=g)
    box1, box2 = torch.randint(0, 5, (b, 2), generator=g), torch.randint(0, 5, (b, 2), generator=g)
    # One MSELoss over all matched tokens of the batch: sum of squares / (matched tokens * C).
    total, count = 0.0, 0
    for i in range(b):
        idx1, idx2 = _loop_statement(box1[i].tolist(), box2[i].tolist(), h, w)
        diff = t1[i].reshape(-1, c)[idx1] - t2[i].reshape(-1, c)[idx2]
        total, count = total + (diff**2).sum(), count + len(idx1)
    want = total / (count * c)
    torch.testing.assert_close(match_patches_reference(t1, t2, box1, box2), want)
    torch.testing.assert_close(match_patches(t1, t2, box1, box2), want)


def test_no_overlap_gives_zero_loss_and_gradients():
    t1 = torch.randn(2, 3, 3, 4, requires_grad=True)
    t2 = torch.randn(2, 3, 3, 4, requires_grad=True)
    box1, box2 = _idx([[0, 0], [0, 0]]), _idx([[3, 0], [0, 4]])
    loss = match_patches(t1, t2, box1, box2)
    loss.backward()
    assert loss.item() == 0.0 and not t1.grad.any() and not t2.grad.any()


def test_bfloat16_tokens_give_float32_loss():
    t1, t2 = torch.randn(2, 4, 4, 3), torch.randn(2, 4, 4, 3)
    box1, box2 = _idx([[0, 1], [2, 2]]), _idx([[1, 0], [2, 3]])
    loss = match_patches(t1.bfloat16(), t2.bfloat16(), box1, box2)
    assert loss.dtype == torch.float32
    want = match_patches(t1.bfloat16().float(), t2.bfloat16().float(), box1, box2)
    torch.testing.assert_close(loss, want)


def _integer_coords(box1, box2, h, w):
    """Position of each view-1 cell (row-major) in view 2's token grid, for grid-aligned views."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    local = torch.stack([rows, cols], -1).reshape(1, h * w, 2)
    return (local + (box1 - box2)[:, None, :]).float()


def test_bilinear_at_integer_positions_equals_exact_gather():
    g = torch.Generator().manual_seed(2)
    b, h, w, c = 5, 7, 9, 5
    t1, t2 = torch.randn(b, h, w, c, generator=g), torch.randn(b, h, w, c, generator=g)
    box1, box2 = torch.randint(0, 5, (b, 2), generator=g), torch.randint(0, 5, (b, 2), generator=g)
    coords = _integer_coords(box1, box2, h, w)
    torch.testing.assert_close(
        match_patches_bilinear(t1, t2, coords), match_patches(t1, t2, box1, box2)
    )


def test_bilinear_equals_grid_sample_on_valid_cells():
    g = torch.Generator().manual_seed(3)
    b, h1, w1, h2, w2, c = 3, 5, 6, 7, 9, 4
    t1, t2 = torch.randn(b, h1, w1, c, generator=g), torch.randn(b, h2, w2, c, generator=g)
    coords = torch.rand(b, h1 * w1, 2, generator=g) * torch.tensor([h2 + 1.0, w2 + 1.0]) - 1.0
    # grid_sample with align_corners=True: normalised -1 / +1 are the corner token centres.
    xy = torch.stack([coords[..., 1] / (w2 - 1), coords[..., 0] / (h2 - 1)], -1) * 2 - 1
    sampled = F.grid_sample(t2.permute(0, 3, 1, 2), xy[:, :, None, :], align_corners=True)
    sampled = sampled[..., 0].permute(0, 2, 1)  # (B, M, C)
    r, col = coords.unbind(-1)
    valid = (r >= 0) & (r <= h2 - 1) & (col >= 0) & (col <= w2 - 1)
    assert 0 < valid.sum() < valid.numel()
    diff = (t1.reshape(b, -1, c) - sampled)[valid]
    want = (diff**2).mean()
    torch.testing.assert_close(match_patches_bilinear_reference(t1, t2, coords), want)


def test_bilinear_all_outside_is_zero():
    t1 = torch.randn(1, 2, 2, 3, requires_grad=True)
    t2 = torch.randn(1, 2, 2, 3, requires_grad=True)
    coords = torch.full((1, 4, 2), 5.0)
    loss = match_patches_bilinear(t1, t2, coords)
    loss.backward()
    assert loss.item() == 0.0 and not t1.grad.any() and not t2.grad.any()


def test_shape_errors():
    t = torch.zeros(1, 3, 3, 2)
    with pytest.raises(ValueError, match="box1"):
        match_patches(
            t, t, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="same shape|one shape"):
        match_patches(t, torch.zeros(1, 3, 4, 2), torch.zeros(1, 2, dtype=torch.long), None)
    with pytest.raises(ValueError, match="coords"):
        match_patches_bilinear(t, t, torch.zeros(1, 8, 2))
