"""PEAC: grid views, the POPAR branch, losses against their re-statements, a tiny run, resume."""

import json
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from kernels.genesis2d import Genesis2DConfig
from kernels.grid import overlap_indices
from kernels.patches import shuffle_patches, unshuffle_patches
from models.checkpoint import load_torch_file, load_weights
from tests.reference import peac_losses as ref
from train.config import ConfigError, load_config
from train.engine import StepContext, evaluate, fit
from train.peac import losses
from train.peac.config import PEACConfig
from train.peac.method import PEACMethod
from train.peac.views import grid_load_size, grid_views, square_image
from train.run import methods
from train.teacher import cosine_value


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(value: torch.Tensor, want: torch.Tensor) -> None:
    """float32 losses against float64 re-statements."""
    torch.testing.assert_close(value.double(), want.double(), rtol=1e-5, atol=1e-7)


def _cell_pixels(crop: torch.Tensor, flat: int, cell: int, window: int) -> torch.Tensor:
    r, c = divmod(int(flat), window)
    return crop[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]


# ------------------------------------------------------------------------------------ views


def test_load_size_and_square_image():
    assert grid_load_size(32, 14, 4) == 608  # PEAC at 448
    assert grid_load_size(16, 14, 4) == 304  # ViT-B/16 at 224
    x = torch.rand(2, 1, 90, 120)  # landscape: shorter side (rows) -> 60, centre 60 x 60
    assert square_image(x, 60).shape == (2, 1, 60, 60)


@pytest.mark.parametrize("cell,window,max_offset", [(32, 14, 4), (4, 7, 2), (3, 5, 4)])
def test_crops_have_the_right_size_and_boxes_the_right_range(cell, window, max_offset):
    size = grid_load_size(cell, window, max_offset)
    images = torch.rand(16, 3, size, size)
    v = grid_views(images, _gen(0), cell=cell, window=window, max_offset=max_offset)
    assert v.crop1.shape == v.crop2.shape == (16, 3, window * cell, window * cell)
    for box in (v.box1, v.box2):
        assert box.shape == (16, 2) and box.dtype == torch.int64
        assert int(box.min()) >= 0 and int(box.max()) <= max_offset
    assert int(v.jitter.min()) >= 0 and int(v.jitter.max()) <= cell - 1
    for b in range(16):  # each crop is the window at jitter + cell * box
        top, left = (v.jitter[b] + cell * v.box1[b]).tolist()
        s = window * cell
        torch.testing.assert_close(v.crop1[b], images[b, :, top : top + s, left : left + s])
    with pytest.raises(ValueError, match="too small"):
        grid_views(images[..., :-cell, :-cell], _gen(0), cell=cell, window=window, max_offset=4)


def test_views_depend_on_the_generator_only():
    images = torch.rand(4, 1, 40, 40)
    a = grid_views(images, _gen(3), cell=4, window=7, max_offset=2)
    b = grid_views(images, _gen(3), cell=4, window=7, max_offset=2)
    assert torch.equal(a.crop1, b.crop1) and torch.equal(a.box2, b.box2)


def _views_many(seed=0, n=64, cell=4, window=7, max_offset=2):
    size = grid_load_size(cell, window, max_offset)
    images = torch.rand(n, 1, size, size)  # noise: distinct cells never share their pixels
    return grid_views(images, _gen(seed), cell=cell, window=window, max_offset=max_offset)


def test_matched_tokens_see_identical_pixels():
    cell, window = 4, 7
    v = _views_many(cell=cell, window=window)
    for b in range(len(v.box1)):
        idx1, idx2 = overlap_indices(v.box1[b], v.box2[b], (window, window))
        assert len(idx1) >= (window - 2) ** 2
        for k1, k2 in zip(idx1.tolist(), idx2.tolist(), strict=True):
            torch.testing.assert_close(
                _cell_pixels(v.crop1[b], k1, cell, window),
                _cell_pixels(v.crop2[b], k2, cell, window),
                rtol=0,
                atol=0,
            )


def test_bug_compat_reproduces_the_published_mismatch():
    cell, window = 4, 7
    v = _views_many(cell=cell, window=window)
    seen = {True: 0, False: 0}
    for b in range(len(v.box1)):
        (x1, y1), (x2, y2) = v.box1[b].tolist(), v.box2[b].tolist()
        idx1, idx2 = overlap_indices(v.box1[b], v.box2[b], (window, window), bug_compat=True)
        # the kernel's released-mode indices are the released boolean masks (restated)
        m1, m2 = ref.overlap_masks(v.box1[b], v.box2[b], window, released=True)
        assert torch.equal(idx1, m1.nonzero().flatten()) and torch.equal(idx2, m2.nonzero()[:, 0])
        same = [
            torch.equal(
                _cell_pixels(v.crop1[b], k1, cell, window),
                _cell_pixels(v.crop2[b], k2, cell, window),
            )
            for k1, k2 in zip(idx1.tolist(), idx2.tolist(), strict=True)
        ]
        aligned = x1 - y1 == x2 - y2
        seen[aligned] += 1
        if aligned:
            assert all(same), (x1, y1, x2, y2)
        else:
            assert not any(same), (x1, y1, x2, y2)  # every pair is a different cell
    assert seen[True] > 0 and seen[False] > 0, seen


# ------------------------------------------------------------------------------------ POPAR


def test_shuffle_then_unshuffle_is_identity_and_the_target_is_the_permutation():
    cell, g = 4, 5
    x = torch.rand(3, 3, g * cell, g * cell)
    perm = torch.stack([torch.randperm(g * g, generator=_gen(i)) for i in range(3)])
    y = shuffle_patches(x, perm, cell)
    assert torch.equal(unshuffle_patches(y, perm, cell), x)
    for b in range(3):
        for j in range(g * g):  # token j shows input cell perm[b, j]: the order target
            src = _cell_pixels(x[b], perm[b, j], cell, g)
            assert torch.equal(_cell_pixels(y[b], j, cell, g), src)
    one_hot = torch.full((3, g * g, g * g), -30.0).scatter(2, perm[..., None], 30.0)
    assert float(losses.order_loss(one_hot, perm)) < 1e-6  # the target is perm itself


def _tiny_cfg(overrides=()):
    return load_config(PEACConfig, "configs/peac/tiny.yaml", list(overrides))


def test_make_views_branches_and_normalisation():
    cfg = _tiny_cfg()
    method = PEACMethod(cfg, "unused")
    images = torch.rand(6, 1, cfg.load_size, cfg.load_size)
    n = cfg.views.window**2
    # all shuffled: crop 1 is clean (the model shuffles it), perm1 a permutation
    cfg.popar.p_shuffle = 1.0
    p = method.make_views(images, _gen(1))
    assert bool(p.shuffled.all()) and p.x1.shape == (6, 3, 112, 112)
    assert torch.equal(p.x1, p.target1)
    assert torch.equal(p.perm1.sort(dim=1).values, torch.arange(n).expand(6, n))
    assert not torch.equal(p.perm1, torch.arange(n).expand(6, n))
    torch.testing.assert_close(p.target1 * cfg.views.std + cfg.views.mean, _crop1(cfg, images, 1))
    # none shuffled: identity order, crop 1 appearance-distorted, grey kept in all channels
    cfg.popar.p_shuffle = 0.0
    p = method.make_views(images, _gen(1))
    assert not bool(p.shuffled.any())
    assert torch.equal(p.perm1, torch.arange(n).expand(6, n))
    assert not torch.equal(p.x1, p.target1)
    assert torch.equal(p.x1[:, 0], p.x1[:, 2]) and torch.equal(p.x2[:, 0], p.x2[:, 1])
    # same generator state, same views (validation uses this with fixed seeds)
    q = method.make_views(images, _gen(1))
    assert torch.equal(p.x1, q.x1) and torch.equal(p.box1, q.box1)


def _crop1(cfg, images, seed):
    v = grid_views(images, _gen(seed), cell=cfg.cell, window=cfg.views.window, max_offset=2)
    return v.crop1.expand(-1, 3, -1, -1)


class _RecordingPair(torch.nn.Module):
    """Stands in for PEACPair: records what the student and the teacher were given."""

    def __init__(self, g, dg=5, dl=3):
        super().__init__()
        self.g, self.dg, self.dl, self.calls = g, dg, dl, []

    def forward(self, xs, ps, xt, pt):
        """Fixed random outputs (the same for the same inputs' shapes)."""
        self.calls.append((xs, ps, xt, pt))
        b, g, r = xs.shape[0], self.g, _gen(0)
        student = (
            torch.randn(b, g * g, g * g, generator=r),  # order logits
            torch.randn(xs.shape, generator=r),  # restored
            torch.randn(b, self.dg, generator=r),  # global
            torch.randn(b, g, g, self.dl, generator=r),  # local
        )
        teacher = (torch.randn(b, self.dg, generator=r), torch.randn(b, g, g, self.dl, generator=r))
        return student, teacher


def test_student_and_teacher_see_the_published_pairs():
    cfg = _tiny_cfg()
    method = PEACMethod(cfg, "unused")
    images = torch.rand(4, 1, cfg.load_size, cfg.load_size)
    pair = _RecordingPair(cfg.views.window)
    parts = method.loss_parts(pair, images, _gen(5))
    p = method.make_views(images, _gen(5))
    xs, ps, xt, pt = pair.calls[0]
    ident = torch.arange(cfg.views.window**2).expand(4, -1)
    assert torch.equal(xs, torch.cat([p.x1, p.x2])) and torch.equal(xt, torch.cat([p.x2, p.x1]))
    assert torch.equal(ps, torch.cat([p.perm1, ident]))
    assert torch.equal(pt, torch.cat([ident, p.perm1]))
    # outputs split as o1s, r1s, (g1s, g2s), (l1s, l2s) and (g2t, g1t), (l2t, l1t)
    (order, restored, gs, ls), (gt, lt) = pair(xs, ps, xt, pt)
    _close(parts["order"], ref.order_loss(order[:4], p.perm1))
    _close(parts["restore"], ref.restore_loss(restored[:4], p.target1))
    _close(parts["global"], ref.global_loss(gs[:4], gt[:4], gs[4:], gt[4:]))
    _close(
        parts["local"], ref.local_loss(ls[:4], lt[:4], lt[4:], ls[4:], p.box1, p.box2, p.shuffled)
    )


# ------------------------------------------------------------------------------------ losses


def _tokens(seed, b=6, w=7, d=5):
    g = _gen(seed)
    return [torch.randn(b, w, w, d, generator=g) for _ in range(4)]


def _boxes(seed, b=6, max_offset=2):
    g = _gen(seed)
    return (torch.randint(0, max_offset + 1, (b, 2), generator=g) for _ in range(2))


def test_global_loss_matches_restatement_and_is_symmetric():
    g = _gen(0)
    g1s, g2t, g2s, g1t = (torch.randn(5, 16, generator=g) * 3 for _ in range(4))
    value = losses.global_loss(g1s, g2t, g2s, g1t)
    _close(value, ref.global_loss(g1s, g2t, g2s, g1t))
    swapped = losses.global_loss(g2s, g1t, g1s, g2t)  # crop 1 <-> crop 2
    torch.testing.assert_close(swapped, value)


def test_order_and_restore_losses_match_restatements():
    g = _gen(1)
    logits = torch.randn(3, 9, 9, generator=g) * 4
    perm = torch.stack([torch.randperm(9, generator=g) for _ in range(3)])
    _close(losses.order_loss(logits, perm), ref.order_loss(logits, perm))
    r, t = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    _close(losses.restore_loss(r, t), ref.restore_loss(r, t))


@pytest.mark.parametrize("bug_compat", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_loss_matches_restatement(bug_compat, seed):
    l1s, l2t, l1t, l2s = _tokens(seed)
    box1, box2 = _boxes(seed)
    shuffled = torch.rand(6, generator=_gen(seed + 10)) < 0.5
    shuffled[0], shuffled[1] = True, False  # at least one of each
    value = losses.local_loss(l1s, l2t, l1t, l2s, box1, box2, ~shuffled, bug_compat)
    want = ref.local_loss(l1s, l2t, l1t, l2s, box1, box2, shuffled, released=bug_compat)
    _close(value, want)


def test_local_loss_ignores_shuffled_samples():
    l1s, l2t, l1t, l2s = _tokens(3)
    box1, box2 = _boxes(3)
    keep = torch.tensor([True, False, True, False, True, True])
    before = losses.local_loss(l1s, l2t, l1t, l2s, box1, box2, keep)
    for t in (l1s, l2t, l1t, l2s):
        t[~keep] = torch.randn_like(t[~keep]) * 100  # change every shuffled sample's tokens
    after = losses.local_loss(l1s, l2t, l1t, l2s, box1, box2, keep)
    assert float(after) == float(before)
    # all shuffled: 0, with zero gradients that still reach the student tokens
    l1s.requires_grad_(True)
    none = losses.local_loss(l1s, l2t, l1t, l2s, box1, box2, torch.zeros(6, dtype=torch.bool))
    none.backward()
    assert (
        float(none.detach()) == 0.0 and l1s.grad is not None and float(l1s.grad.abs().max()) == 0.0
    )


def test_total_loss_matches_restatement():
    parts = [torch.rand(()) for _ in range(4)]
    _close(losses.total_loss(*parts), ref.total_loss(*parts))
    _close(losses.total_loss(*parts, local_weight=0.0), ref.total_loss(*parts, local_weight=0.0))
    _close(losses.total_loss(*parts, global_weight=7.0), ref.total_loss(*parts, global_weight=7.0))


# ------------------------------------------------------------------------------------ config


def test_presets_and_published_defaults():
    paper = load_config(PEACConfig, "configs/peac/paper.yaml")
    assert (paper.cell, paper.load_size, paper.views.window, paper.views.max_offset) == (
        32, 608, 14, 4,
    )  # fmt: skip
    assert paper.model.global_dims == (8192,) * 3 and paper.model.local_dims == (512,) * 3
    assert paper.losses.global_weight == 1e5 and not paper.losses.bug_compat
    assert (paper.optim.name, paper.optim.lr, paper.optim.momentum) == ("sgd", 0.1, 0.9)
    assert paper.optim.weight_decay == 0.0 and paper.optim.warmup_epochs == 5
    assert (paper.loop.epochs, paper.loop.batch_size) == (400, 8)
    assert (paper.data.train_split, paper.data.val_split) == ("train", "test")
    assert paper.schedule.momentum_start == 0.999 and paper.popar.p_shuffle == 0.5
    # Genesis-2D as docs/METHODS.md §3.3 item 5: 40 blocks, Bezier p 0.9 / 500 points,
    # paint 0.9 / 0.2
    assert paper.popar.genesis2d == Genesis2DConfig(
        blocks=40, nonlinear_rate=0.9, paint_rate=0.9, inpaint_rate=0.2, bezier_points=500
    )
    default = PEACConfig()  # the dataclass defaults are the published values too
    for part in ("model", "views", "popar", "losses", "schedule", "optim"):
        assert getattr(default, part) == getattr(paper, part), part
    assert (default.loop.epochs, default.loop.batch_size) == (400, 8)
    tiny = load_config(PEACConfig, "configs/peac/tiny.yaml")
    assert (tiny.cell, tiny.load_size) == (16, 160) and tiny.losses.local_weight == 1.0
    no_local = load_config(PEACConfig, "configs/peac/tiny_no_local.yaml")
    assert no_local.losses.local_weight == 0.0
    assert load_config(PEACConfig, None, ["losses.local_weight=0"]).losses.local_weight == 0.0
    with pytest.raises(ConfigError, match="multiple"):
        load_config(PEACConfig, "configs/peac/tiny.yaml", ["views.window=5"])
    assert methods()["peac"] == (PEACConfig, PEACMethod)


def test_teacher_momentum_is_a_cosine_over_iterations():
    cfg = _tiny_cfg(["model.global_dims=[8]", "model.local_dims=[8]"])
    method = PEACMethod(cfg, "unused")
    pair, name, args = method.build_model()
    assert name == "peac" and args["img_size"] == 112
    with torch.no_grad():
        for p in pair.student.parameters():
            p.add_(1.0)
    s = {k: v.clone() for k, v in pair.student.state_dict().items()}
    t0 = {k: v.clone() for k, v in pair.teacher.state_dict().items()}
    ctx = StepContext(
        epoch=1, phase=0, step_in_phase=3, steps_in_phase=10, global_step=13, epochs=3, phases=1
    )
    method.after_step(pair, ctx)
    m = cosine_value(cfg.schedule.momentum_start, 1.0, 30, 13)  # 3 epochs x 10 iterations
    k = "head.weight"
    torch.testing.assert_close(pair.teacher.state_dict()[k], m * t0[k] + (1 - m) * s[k])
    assert method.export_model(pair)[0] is pair.teacher


# ------------------------------------------------------------------------------------ training

_SMALL = [
    "data.reader.n=16",
    "data.per_split.val.n=8",
    "loop.batch_size=2",  # 8 steps per epoch
    "loop.epochs=2",
    "loop.checkpoint_every=4",
    "loop.log_every=1",
    "loop.progress=false",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("peac")
    overrides = [*_SMALL, f"data.cache_dir={root / 'cache'}"]
    full = root / "full"
    fit(PEACMethod(_tiny_cfg(overrides), full), full)
    return root, overrides, full


def _val_loss(method, weights=None) -> float:
    torch.manual_seed(method.cfg.loop.seed)  # the engine's initial weights
    pair, _, _ = method.build_model()
    if weights is not None:
        pair.load_state_dict(weights)
    _, val = method.datasets()
    cpu = torch.device("cpu")
    return evaluate(method, pair, val, method.cfg.loop, cpu, nullcontext())


@pytest.mark.slow
def test_tiny_run_lowers_the_total_loss(tiny_run):
    root, overrides, full = tiny_run
    method = PEACMethod(_tiny_cfg(overrides), full)
    last = sorted((full / "checkpoints").glob("step_*"))[-1]
    trained, _ = load_weights(last / "model.safetensors")
    before, after = _val_loss(method), _val_loss(method, trained)
    assert after < 0.8 * before, (before, after)  # same val batches and randomness
    log = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(val) == 2 and all(math.isfinite(v) for v in val)  # one per epoch
    exported, info = load_weights(full / "model.safetensors")
    assert info.model_name == "peac" and not any(k.startswith("student") for k in exported)


@pytest.mark.slow
def test_epochs_log_the_diagnostics_and_evaluate_scores_the_run(tiny_run, capsys):
    """metrics.jsonl carries issue #18's per-epoch diagnostics; ``train.run evaluate`` on a PEAC
    run scores teacher, student and the references on cross-patient landmarks."""
    from train.run import main

    _, _, full = tiny_run
    log = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in log if "val_loss" in r]
    keys = {
        "loss_order", "loss_restore", "loss_global", "loss_local", "order_acc_shuffled",
        "order_acc_unshuffled", "global_cos_between_images", "token_spread", "local_spread",
        "local_loss_correct", "local_loss_transposed", "local_loss_other_patient",
    }  # fmt: skip
    assert all(keys <= set(r) for r in epochs)
    assert all(-1.0 <= r["global_cos_between_images"] <= 1.0 for r in epochs)
    assert main(["evaluate", "--run-dir", str(full), "--pairs", "3", "--no-probe"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["hit_rate"]) == {"position", "raw_patch", "context", "teacher", "student"}
    assert result["pairs"] > 0 and all(0 <= v <= 1 for v in result["hit_rate"].values())
    assert (full / "eval_test.json").is_file()


@pytest.mark.slow
def test_kill_and_resume_ends_with_the_same_weights(tiny_run):
    root, overrides, full = tiny_run
    cut = root / "cut"
    fit(PEACMethod(_tiny_cfg(overrides), cut), cut, stop_after_steps=5)  # inside epoch 0
    fit(PEACMethod(_tiny_cfg(overrides), cut), cut, resume=True)
    a = load_torch_file(sorted((full / "checkpoints").glob("step_*"))[-1] / "state.pt")
    b = load_torch_file(sorted((cut / "checkpoints").glob("step_*"))[-1] / "state.pt")
    assert a["progress"] == b["progress"]
    last = sorted(p.name for p in (full / "checkpoints").glob("step_*"))[-1]
    for name in (f"checkpoints/{last}/model.safetensors", "model.safetensors"):
        wa, _ = load_weights(full / name)
        wb, _ = load_weights(cut / name)
        assert wa.keys() == wb.keys()
        for k in wa:  # student and teacher (checkpoint); the exported teacher (best)
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
def test_correspond_recovers_a_shift_after_tiny_training(tiny_run):
    """A film and a copy shifted by whole cells: the matched cells recover the shift. This
    checks ``correspond``'s geometry only (random weights pass it too); that training helps is
    tests/train/test_peac_learns.py, with sub-cell shifts and a margin over random init."""
    from imaging.phantoms import make_chest_ct, make_radiograph
    from models.checkpoint import load_model
    from models.peac import correspond

    _, _, full = tiny_run
    model = load_model(full / "model.safetensors")
    cell, size = model.cell, model.img_size
    ct = make_chest_ct(12345, shape=(48, 64, 64))  # a patient the run never saw
    film = np.asarray(make_radiograph(ct, size=(size + 2 * cell, size + 2 * cell)).pixels)
    shift = (cell, 2 * cell)  # rows, cols in pixels: B shows A's content moved up-left
    a = film[:size, :size]
    b = film[shift[0] : shift[0] + size, shift[1] : shift[1] + size]
    result = correspond(model, a, b)
    g = result.grid
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    inside = (rows >= shift[0] // cell) & (cols >= shift[1] // cell)  # cells present in B
    idx = np.asarray(result.index)[inside]
    d_rows = rows[inside] - idx // g
    d_cols = cols[inside] - idx % g
    recovered = (np.median(d_rows) * cell, np.median(d_cols) * cell)
    assert abs(recovered[0] - shift[0]) <= cell and abs(recovered[1] - shift[1]) <= cell
    # and the point query agrees: a point in A lands near the same anatomy in B
    pts = np.array([[size / 2, size / 2 + cell]], dtype=float)
    moved, _ = result.query(pts)
    assert np.all(np.abs(moved[0] - (pts[0] - np.array(shift))) <= cell)


@pytest.mark.slow
def test_peac_weights_start_a_classifier_and_a_linear_probe(tiny_run, tmp_path):
    """init=peac: the classifier's embedding is PEAC's mean-pooled token map."""
    from models.checkpoint import load_model
    from train.ark.transfer import TransferConfig, linear_probe, new_task_model

    _, _, full = tiny_run
    peac = load_model(full / "model.safetensors").eval()
    cfg = load_config(
        TransferConfig,
        "configs/ark/transfer_tiny.yaml",
        [
            f"init=peac:{full}",
            f"size={peac.img_size}",
            "dataset.reader={n: 24, size: [128, 128], ct_shape: [48, 64, 64], seed: 101}",
            "data.load_size=128",
            f"data.cache_dir={tmp_path / 'cache'}",
            "loop.progress=false",
        ],
    )
    model = new_task_model(cfg, num_classes=3).eval()
    x = torch.rand(2, 3, peac.img_size, peac.img_size)
    torch.testing.assert_close(model.embed(x), peac.embed(x))
    result = linear_probe(cfg, tmp_path / "probe", split="val")
    assert set(result["auroc"]) == {"Cardiomegaly", "Effusion", "Nodule"}
