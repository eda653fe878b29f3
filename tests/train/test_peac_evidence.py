"""Issue #18's PEAC evidence tools: patient variation, the landmark benchmark and its
references, the diagnostics, the dense InfoNCE option and PEAC-normalised transfer."""

import math

import numpy as np
import pytest
import torch

from imaging.phantoms import Radiograph, Variation, vary_radiograph
from models.checkpoint import save_weights
from models.peac import PEAC_MEAN, PEAC_STD, PEACModel
from train.config import load_config
from train.peac import evaluate as ev
from train.peac.config import PEACConfig
from train.peac.diagnostics import mean_offdiag_cosine, spread
from train.peac.losses import dense_infonce


def _film(size=64, dots=((20.0, 30.0), (40.0, 12.0))) -> Radiograph:
    pixels = np.zeros((size, size), np.float32)
    for r, c in dots:
        pixels[int(r), int(c)] = 1.0
    marks = {f"m{k}": np.array(p) for k, p in enumerate(dots)}
    mask = {"anatomy/x": pixels > 0}
    return Radiograph(pixels, (1.0, 1.0), mask, {}, marks, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_varied_film_moves_its_landmarks_with_its_pixels(seed):
    """Each bright dot lands where its landmark was moved (the reference: the brightest pixel
    near the prediction), masks move along, and the same draw gives the same film."""
    film = _film()
    out = vary_radiograph(film, np.random.default_rng(seed), Variation(gamma=(1.0, 1.0)))
    for k in range(2):
        r, c = out.landmarks[f"m{k}"]
        r0, c0 = int(round(r)), int(round(c))
        patch = out.pixels[r0 - 2 : r0 + 3, c0 - 2 : c0 + 3]
        dr, dc = np.unravel_index(np.argmax(patch), patch.shape)
        assert patch.max() > 0.2 and abs(r0 - 2 + dr - r) <= 1 and abs(c0 - 2 + dc - c) <= 1
    assert out.masks["anatomy/x"].sum() >= 1
    again = vary_radiograph(film, np.random.default_rng(seed), Variation(gamma=(1.0, 1.0)))
    assert np.array_equal(out.pixels, again.pixels)


def test_no_variation_is_the_identity():
    film = _film()
    still = Variation(scale=(1.0, 1.0), rotate_deg=0.0, shift=0.0, gamma=(1.0, 1.0))
    out = vary_radiograph(film, np.random.default_rng(0), still)
    np.testing.assert_allclose(out.pixels, film.pixels, atol=1e-6)
    for k, p in film.landmarks.items():
        np.testing.assert_allclose(out.landmarks[k], p, atol=1e-9)


def _shifted_pair(shift=(5, 11), size=112, seed=4) -> ev.FilmPair:
    """One film and the same film cut `shift` px further down-right: sub-cell offsets."""
    coarse = torch.from_numpy(np.random.default_rng(seed).random((1, 1, 12, 12)))
    # a smooth random texture (correlated over ~12 px): sub-cell shifts keep cells alike
    big = torch.nn.functional.interpolate(coarse, size=(size + 32,) * 2, mode="bicubic")
    big = big[0, 0].numpy().astype(np.float32)
    a, b = big[:size, :size], big[shift[0] : shift[0] + size, shift[1] : shift[1] + size]
    pts_a = np.array([[40.0, 40.0], [70.5, 60.0], [90.0, 95.0]])
    return ev.FilmPair(a, b, pts_a, pts_a - np.array(shift), ("p", "q", "r"))


def test_references_on_a_shifted_copy():
    """On the same film shifted by sub-cell offsets, the context descriptor finds every point
    (within one cell) and the position-only guess is off by the shift."""
    pair = _shifted_pair()
    refs = ev.references([pair], cell=16)
    assert refs["context"][0] == 1.0 and refs["raw_patch"][0] >= 1 / 3
    far = _shifted_pair(shift=(30, 30))
    assert ev.references([far], cell=16)["position"][0] == 0.0


def test_landmark_pairs_keep_only_landmarks_inside_both_films():
    pairs = ev.landmark_pairs(2, load_size=80, window=56, ct_shape=(24, 32, 32))
    assert pairs
    for p in pairs:
        assert p.a.shape == p.b.shape == (56, 56) and len(p.names) == len(p.pts_a) > 0
        for pts in (p.pts_a, p.pts_b):
            assert np.all((pts >= 0) & (pts <= 55))


def test_pairs_round_trip_without_pickle(tmp_path):
    pair = _shifted_pair()
    ev.save_pairs(tmp_path / "p.npz", [pair, pair])
    back = ev.load_pairs(tmp_path / "p.npz")
    assert len(back) == 2 and back[1].names == pair.names
    np.testing.assert_array_equal(back[0].b, pair.b)


def test_spread_and_between_image_cosine_on_known_tokens():
    same = torch.ones(2, 3, 3, 4)
    assert spread(same) == 0.0  # every token equal: collapsed
    eye = torch.eye(4).reshape(1, 2, 2, 4)  # four orthogonal unit tokens, mean 1/4 each
    assert math.isclose(spread(eye), 0.75, rel_tol=1e-6)
    assert math.isclose(mean_offdiag_cosine(torch.ones(3, 5)), 1.0, rel_tol=1e-6)
    assert math.isclose(mean_offdiag_cosine(torch.eye(3)), 0.0, abs_tol=1e-7)


def test_dense_infonce_matches_the_closed_form():
    """Matched tokens equal, all others orthogonal: each row's loss is
    -log(e^{1/t} / (e^{1/t} + (N - 1))) (the reference, from the definition)."""
    g, t = 3, 0.2
    basis = torch.eye(g * g).reshape(1, g, g, g * g)
    box = torch.tensor([[0, 0]])
    loss = dense_infonce(basis, basis, box, box, t)
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + g * g - 1))
    assert math.isclose(float(loss), want, rel_tol=1e-5)
    # shifted crops: view 2 one cell right; the matched cells are the shared 3 x 2 columns
    box2 = torch.tensor([[0, 1]])
    q = basis
    k = torch.roll(basis, shifts=-1, dims=2)  # token (r, c) of view 2 = token (r, c + 1) of view 1
    assert math.isclose(float(dense_infonce(q, k, box, box2, t)), want, rel_tol=1e-5)
    wrong = dense_infonce(q, basis, box, box2, t)  # same tokens without the shift: mismatched
    assert float(wrong) > want + 1.0


def test_transfer_from_peac_uses_peac_statistics(tmp_path):
    """init=peac: views, evaluation and the exported card normalise with PEAC's mean/std."""
    from train.ark.transfer import TransferConfig, TransferMethod, init_statistics

    model = PEACModel("vit_tiny_patch16_224", img_size=32, global_dims=[8], local_dims=[8])
    save_weights(model, tmp_path / "p.safetensors", model_name="peac", model_args=model.model_args)
    cfg = load_config(
        TransferConfig,
        "configs/ark/transfer_tiny.yaml",
        [f"init=peac:{tmp_path / 'p.safetensors'}", "size=32", "data.load_size=40"],
    )
    method = TransferMethod(cfg, tmp_path / "run")
    assert method.stats == ((PEAC_MEAN,) * 3, (PEAC_STD,) * 3) == init_statistics(cfg.init)
    grey = torch.full((2, 1, 40, 40), PEAC_MEAN)
    view = method.train_view(grey, torch.Generator().manual_seed(0))
    assert view.shape == (2, 3, 32, 32)
    inside = view[:, :, 8:24, 8:24]  # away from the rotation's corners
    assert inside.abs().max() < 1e-5  # PEAC's mean maps to 0 (ImageNet's would not)
    assert init_statistics("ark:x")[0] == (0.485, 0.456, 0.406)
    assert init_statistics("scratch")[0] == (0.485, 0.456, 0.406)


def test_order_on_shuffled_crops_only():
    """``popar.order_on_unshuffled: false`` scores the order head on shuffled samples alone (the
    reference: cross-entropy over those rows); true keeps the release's every-sample mean."""
    from types import SimpleNamespace

    from train.peac.method import PEACMethod

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 9, 9, generator=gen)
    perm = torch.stack([torch.randperm(9, generator=gen) for _ in range(4)])
    shuffled = torch.tensor([True, False, True, False])
    p = SimpleNamespace(perm1=perm, shuffled=shuffled)
    cfg = load_config(PEACConfig, "configs/peac/tiny_conv.yaml")
    assert cfg.popar.order_on_unshuffled is False
    ce = torch.nn.functional.cross_entropy
    want = ce(logits[[0, 2]].reshape(-1, 9), perm[[0, 2]].reshape(-1))
    torch.testing.assert_close(PEACMethod(cfg, "unused").order_term(logits, p), want)
    cfg.popar.order_on_unshuffled = True
    every = ce(logits.reshape(-1, 9), perm.reshape(-1))
    torch.testing.assert_close(PEACMethod(cfg, "unused").order_term(logits, p), every)
    p.shuffled = torch.zeros(4, dtype=torch.bool)
    cfg.popar.order_on_unshuffled = False
    assert float(PEACMethod(cfg, "unused").order_term(logits, p)) == 0.0
