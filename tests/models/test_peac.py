"""PEACModel (docs/METHODS.md §3.2), anatomical correspondence, and the correspondence command line.

Small backbones keep it fast on a CPU: ViT-Tiny/16 at 112 px (7×7 tokens of 16 px) and Swin-T at
224 px (7×7 tokens of 32 px), with narrow expanders. PEAC's Swin-B at 448 is built only in a
``slow`` test.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kernels.patches import shuffle_patches_reference
from models import (
    MODELS,
    ArkModel,
    Correspondence,
    CropTransform,
    PEACModel,
    build_model,
    correspond,
    load_model,
    load_weights,
    preprocess,
    save_weights,
)
from models.peac import PEAC_MEAN, PEAC_STD, expander
from models.peac_correspond import main as correspond_main
from models.peac_correspond import match_files

VIT = {"backbone": "vit_tiny_patch16_224", "img_size": 112}
SWIN = {"backbone": "swin_tiny_patch4_window7_224", "img_size": 224}
SMALL = {"global_dims": (48, 40, 32), "local_dims": (24, 20, 16)}


def _model(kind="vit", seed=0, **kw):
    torch.manual_seed(seed)
    return PEACModel(**(VIT if kind == "vit" else SWIN), **{**SMALL, **kw}).eval()


@pytest.fixture(scope="module")
def vit():
    return _model("vit")


@pytest.fixture(scope="module")
def swin():
    return _model("swin")


def _images(b, size, seed=1, chans=3):
    return torch.randn(b, chans, size, size, generator=torch.Generator().manual_seed(seed))


def _perms(b, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(b)])


@pytest.mark.parametrize(
    "kind, grid, cell, width", [("vit", 7, 16, 192), ("swin", 7, 32, 768)], ids=["vit", "swin"]
)
def test_output_shapes(request, kind, grid, cell, width):
    model = request.getfixturevalue(kind)
    size = model.img_size
    assert (model.grid, model.cell, model.num_features) == (grid, cell, width)
    assert grid * cell == size
    x = _images(2, size)
    with torch.no_grad():
        out = model(x, perm=_perms(2, grid * grid))
        tokens = model.tokens(x)
        z = model.embed(x)
    assert out.tokens.shape == (2, grid, grid, width) == tokens.shape
    assert out.order.shape == (2, grid * grid, grid * grid)
    assert out.restored.shape == (2, 3, size, size)
    assert out.global_.shape == (2, 32) and out.local.shape == (2, grid, grid, 16)
    torch.testing.assert_close(z, tokens.mean(dim=(1, 2)), rtol=0, atol=0)


def test_tokens_are_the_normalised_backbone_sequence(vit, swin):
    x = _images(1, 112)
    with torch.no_grad():
        seq = vit.backbone.forward_features(x)  # 1, 1 + 49, C after the final norm
        torch.testing.assert_close(vit.tokens(x).reshape(1, 49, -1), seq[:, 1:], rtol=0, atol=0)
        y = _images(1, 224)
        nhwc = swin.backbone.forward_features(y)
        torch.testing.assert_close(swin.tokens(y), nhwc, rtol=0, atol=0)
        # the final LayerNorm was applied: every token has mean 0 / std 1 before the affine
        pooled = swin.backbone.forward_head(nhwc, pre_logits=True)
        torch.testing.assert_close(swin.embed(y), pooled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_identity_perm_changes_nothing(request, kind):
    model = request.getfixturevalue(kind)
    x = _images(2, model.img_size)
    ident = torch.arange(model.grid**2).expand(2, -1).contiguous()
    with torch.no_grad():
        a, b = model(x), model(x, perm=ident)
    for name in ("tokens", "order", "restored", "global_", "local"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_perm_shuffles_cells_before_the_backbone(request, kind):
    model = request.getfixturevalue(kind)
    x = _images(2, model.img_size, seed=3)
    perm = _perms(2, model.grid**2, seed=4)
    assert not torch.equal(perm[0], perm[1])
    shuffled = shuffle_patches_reference(x, perm, model.cell)
    with torch.no_grad():
        got = model(x, perm=perm)
        want = model(shuffled)
        plain = model(x)
    for name in ("tokens", "order", "restored", "global_", "local"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0)
    assert not torch.allclose(got.tokens, plain.tokens)


def test_heads_restate_the_published_structure(vit):
    """Order head per token, 1×1 conv + pixel shuffle decoder, expanders on mean / every token."""
    x = _images(2, 112, seed=5)
    g, p, c = vit.grid, vit.cell, vit.num_features
    with torch.no_grad():
        out = vit(x)
        t = out.tokens
        order = t.reshape(2, g * g, c) @ vit.head.weight.T + vit.head.bias
        conv = vit.decoder[0]
        w = conv.weight.reshape(3, p, p, c)  # out channel = k·p² + i·p + j
        # restored[b, k, r·p + i, q·p + j] = w[k, i, j] · t[b, r, q] + bias
        img = torch.einsum("kijc,brqc->bkriqj", w, t) + conv.bias.reshape(1, 3, 1, p, 1, p)
        restored = img.reshape(2, 3, g * p, g * p)

        def mlp(z, seq, dims):  # Linear → LayerNorm → ReLU per hidden layer, last Linear bare
            for i, d in enumerate(dims):
                z = nn.functional.linear(z, seq[3 * i].weight, seq[3 * i].bias)
                if i < len(dims) - 1:
                    ln = seq[3 * i + 1]
                    z = torch.relu(nn.functional.layer_norm(z, (d,), ln.weight, ln.bias))
            return z

        glob = mlp(t.mean(dim=(1, 2)), vit.mlp, SMALL["global_dims"])
        loc = mlp(t, vit.mlp_local, SMALL["local_dims"])
    torch.testing.assert_close(out.order, order, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.restored, restored, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.global_, glob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.local, loc, rtol=1e-5, atol=1e-5)


def test_expander_structure_and_names():
    mlp = expander(16, (32, 32, 8))
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU] * 2 + [nn.Linear]
    assert mlp[6].bias is None and mlp[0].bias is not None and mlp[3].bias is not None
    assert (mlp[0].in_features, mlp[0].out_features, mlp[6].out_features) == (16, 32, 8)
    assert mlp[1].normalized_shape == (32,) and mlp[4].normalized_shape == (32,)
    assert isinstance(expander(16, ()), nn.Identity)

    model = _model("vit", global_dims=(8, 8, 8), local_dims=(4, 4))
    keys = set(model.state_dict())
    assert {f"mlp.{i}.{n}" for i in (0, 1, 3, 4) for n in ("weight", "bias")} | {
        "mlp.6.weight"
    } == {k for k in keys if k.startswith("mlp.")}
    assert {k for k in keys if k.startswith("mlp_local.")} == {
        "mlp_local.0.weight",
        "mlp_local.0.bias",
        "mlp_local.1.weight",
        "mlp_local.1.bias",
        "mlp_local.3.weight",
    }
    assert {"head.weight", "head.bias", "decoder.0.weight", "decoder.0.bias"} <= keys
    assert model.decoder[0].kernel_size == (1, 1) and model.decoder[0].out_channels == 16 * 16 * 3
    assert isinstance(model.decoder[1], nn.PixelShuffle) and model.decoder[1].upscale_factor == 16


def test_optional_parts_and_one_channel():
    model = _model(
        "vit", order_head=False, decoder=False, global_dims=(), local_dims=(), in_chans=1
    )
    with torch.no_grad():
        out = model(_images(1, 112, chans=1))
    assert out.order is None and out.restored is None
    assert out.global_.shape == (1, 192) and out.local.shape == (1, 7, 7, 192)
    assert not any(k.startswith(("head.", "decoder.", "mlp")) for k in model.state_dict())
    with pytest.raises(ValueError, match="not a multiple"):
        PEACModel(backbone="vit_tiny_patch16_224", img_size=120, **SMALL)


def test_registry_and_save_load_round_trip(tmp_path, swin):
    assert MODELS["peac"] is PEACModel
    args = swin.model_args
    assert json.loads(json.dumps(args)) == args
    assert args == {
        "backbone": "swin_tiny_patch4_window7_224",
        "img_size": 224,
        "in_chans": 3,
        "global_dims": [48, 40, 32],
        "local_dims": [24, 20, 16],
        "order_head": True,
        "decoder": True,
    }
    path = save_weights(swin, tmp_path / "peac.safetensors", model_name="peac", model_args=args)
    _, info = load_weights(path)
    assert info.model_name == "peac" and info.model_args == args
    rebuilt = load_model(path).eval()
    assert isinstance(rebuilt, PEACModel) and rebuilt.model_args == args
    x, perm = _images(1, 224), _perms(1, 49)
    with torch.no_grad():
        a, b = swin(x, perm), rebuilt(x, perm)
    for name in ("tokens", "order", "restored", "global_", "local"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=0)
    other = build_model("peac", **{**args, "order_head": False})
    assert other.head is None and other.model_args["order_head"] is False


def test_gradients_reach_every_parameter(vit):
    model = _model("vit", seed=3).train()
    x = _images(2, 112)
    out = model(x, perm=_perms(2, 49))
    loss = out.order.square().mean() + out.restored.mean() + out.global_.sum() + out.local.sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


# --------------------------------------------------------------------------------------------
# correspondence


def test_preprocess_crops_the_centre_and_normalises():
    img = np.random.default_rng(0).random((224, 112), dtype=np.float32)  # shorter side = 112
    x, tf = preprocess(img, 112)
    assert x.shape == (1, 3, 112, 112) and x.dtype == torch.float32
    assert tf == CropTransform(
        original_hw=(224, 112), resized_hw=(224, 112), offset=(56, 0), size=112
    )
    want = (torch.from_numpy(img[56:168]) - 0.5056) / 0.252
    for c in range(3):
        torch.testing.assert_close(x[0, c], want, rtol=1e-5, atol=1e-5)
    assert (PEAC_MEAN, PEAC_STD) == (0.5056, 0.252)

    x, tf = preprocess(torch.rand(1, 90, 180), 112, in_chans=1)
    assert x.shape == (1, 1, 112, 112)
    assert tf.resized_hw == (112, 224) and tf.offset == (0, 56)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        preprocess(np.zeros((2, 5, 5)), 112)


def test_crop_transform_maps_pixel_centres():
    tf = CropTransform(original_hw=(200, 100), resized_hw=(224, 112), offset=(56, 0), size=112)
    # scale 1.12 on both axes: model = (orig + 0.5) * 1.12 - 0.5 - offset
    pts = np.array([[100.0, 50.0], [0.0, 0.0], [199.0, 99.0]])
    want = np.array(
        [[100.5 * 1.12 - 56.5, 50.5 * 1.12 - 0.5], [0.06 - 56, 0.06], [199.5 * 1.12 - 56.5, 110.94]]
    )
    np.testing.assert_allclose(tf.to_model(pts), want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(tf.to_original(tf.to_model(pts)), pts, rtol=0, atol=1e-9)


def test_query_maps_through_both_crops_by_hand():
    g, cell = 7, 16
    index = np.arange(g * g).reshape(g, g)
    index[3, 3] = 1 * g + 2  # A's centre cell matches B's cell (1, 2)
    sim = np.full((g, g), 0.5, dtype=np.float32)
    sim[3, 3] = 0.9
    corr = Correspondence(
        index=index,
        similarity=sim,
        sim_matrix=np.zeros((g * g, g * g), np.float32),
        grid=g,
        cell=cell,
        # A: 200×100 portrait → 224×112, crop rows 56..167; B: 90×180 landscape → 112×224
        transform_a=CropTransform((200, 100), (224, 112), (56, 0), 112),
        transform_b=CropTransform((90, 180), (112, 224), (0, 56), 112),
    )
    # A (100, 50) → model (56.06, 56.06) → cell (3, 3) → B cell (1, 2), centre (23.5, 39.5)
    # → B original: row (23.5 + 0 + 0.5) * 90/112 - 0.5, col (39.5 + 56 + 0.5) * 180/224 - 0.5
    # A (10, 50) → model row 10.5 * 1.12 - 56.5 < 0: outside A's crop
    # A (140, 95) → model (140.5 * 1.12 - 56.5, 95.5 * 1.12 - 0.5) = (100.86, 106.46) → cell
    # (6, 6) → B cell (6, 6), centre (103.5, 103.5) → B (104 * 90/112 - 0.5, 160 * 180/224 - 0.5)
    pts_b, s = corr.query([[100, 50], [10, 50], [140, 95]])
    want = np.array(
        [
            [24 * 90 / 112 - 0.5, 96 * 180 / 224 - 0.5],
            [np.nan, np.nan],
            [104 * 90 / 112 - 0.5, 160 * 180 / 224 - 0.5],
        ]
    )
    np.testing.assert_allclose(pts_b, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(s, [0.9, np.nan, 0.5], rtol=0, atol=1e-7)
    one, s1 = corr.query((100, 50))
    assert one.shape == (1, 2) and s1.shape == (1,)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_an_image_corresponds_to_itself(request, kind):
    model = request.getfixturevalue(kind)
    model.train()
    image = np.random.default_rng(7).random((150, 130), dtype=np.float32)
    corr = correspond(model, image, image)
    assert model.training  # mode restored
    model.eval()
    g = model.grid
    assert corr.index.shape == (g, g) and corr.sim_matrix.shape == (g * g, g * g)
    np.testing.assert_array_equal(corr.index, np.arange(g * g).reshape(g, g))
    np.testing.assert_allclose(corr.similarity, 1.0, atol=1e-5)
    np.testing.assert_allclose(np.diag(corr.sim_matrix), 1.0, atol=1e-5)
    assert corr.sim_matrix.max() <= 1.0 + 1e-5
    # query: a point maps to the centre of its own cell, in the same original pixels
    # 150×130 → shorter side 130 → scale s; cell (r, q) centre → (centre + off + 0.5) / s - 0.5
    tf = corr.transform_a
    assert tf.original_hw == (150, 130) and tf.resized_hw[1] == model.img_size
    pts = np.array([[75.0, 65.0], [20.0, 120.0]])
    got, sim = corr.query(pts)
    cells = np.floor(tf.to_model(pts) / model.cell)
    centres = (cells + 0.5) * model.cell - 0.5
    np.testing.assert_allclose(got, tf.to_original(centres), atol=1e-9)
    np.testing.assert_allclose(sim, 1.0, atol=1e-5)
    assert np.all(np.abs(got - pts) <= model.cell / 2 * 150 / model.img_size + 1)


# --------------------------------------------------------------------------------------------
# command line


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Two phantom radiographs: A as a DX DICOM file, B (another patient) as a 16-bit PNG."""
    from imaging.phantoms import make_chest_ct, make_radiograph
    from imaging.writers import write_radiograph

    root = tmp_path_factory.mktemp("films")
    a = make_radiograph(make_chest_ct(0), size=(160, 128))
    b = make_radiograph(make_chest_ct(1), size=(128, 144))
    path_a = write_radiograph(a.pixels, root / "a.dcm", spacing=(2.5, 2.5))
    path_b = root / "b.png"
    Image.fromarray(np.rint(b.pixels * 65535).astype(np.uint16)).save(path_b)
    model = _model("vit", seed=11)
    weights = save_weights(
        model, root / "peac.safetensors", model_name="peac", model_args=model.model_args
    )
    return path_a, path_b, weights, a, b


def test_cli_writes_a_side_by_side_figure(tmp_path, films, capsys):
    path_a, path_b, weights, a, _ = films
    out = tmp_path / "fig" / "matches.png"
    carina = a.landmarks["carina"]
    argv = [str(path_a), str(path_b), "--weights", str(weights), "--out", str(out), "--points"]
    argv += [f"{carina[0]},{carina[1]}", "80,64", "2,64", "--height", "256"]
    assert correspond_main(argv) == 0
    with Image.open(out) as fig:
        assert fig.format == "PNG" and fig.mode == "RGB" and fig.height == 256
        assert fig.width == round(128 * 256 / 160) + 8 + round(144 * 256 / 128)
        rgb = np.asarray(fig).astype(int)
    coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    assert coloured.sum() > 50  # matches drawn in colour on grey films
    text = capsys.readouterr().out
    assert "80.0, 64.0) -> (" in text and "outside A's crop" in text and "wrote" in text

    out2 = tmp_path / "default.png"
    argv = [str(path_b), str(path_a), "--weights", str(weights), "--out", str(out2)]
    assert correspond_main(argv) == 0 and out2.is_file()
    assert capsys.readouterr().out.count(" -> (") == 25


def test_match_files_is_the_cli_without_argparse(tmp_path, films, capsys):
    path_a, path_b, weights, _, _ = films
    fig, points_a, points_b, sim = match_files(path_a, path_b, weights, [(80.0, 64.0)], height=256)
    assert fig.height == 256 and points_a.tolist() == [[80.0, 64.0]] and np.isfinite(sim[0])
    argv = [str(path_a), str(path_b), "--weights", str(weights), "--out", str(tmp_path / "f.png")]
    assert correspond_main([*argv, "--points", "80,64"]) == 0
    want = f"(80.0, 64.0) -> ({points_b[0][0]:.1f}, {points_b[0][1]:.1f})  {sim[0]:.3f}"
    assert want in capsys.readouterr().out


def test_cli_reports_unusable_inputs(tmp_path, films, capsys):
    path_a, path_b, weights, _, _ = films
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"nope")
    out = tmp_path / "x.png"
    cases = [
        ([str(tmp_path / "missing.dcm"), str(path_b)], "missing.dcm: no such file"),
        ([str(junk), str(path_b)], "junk.dcm: cannot read the image"),
        ([str(path_a), str(fake_png)], "fake.png: cannot read the image"),
    ]
    for images, message in cases:
        assert correspond_main([*images, "--weights", str(weights), "--out", str(out)]) == 1
        assert message in capsys.readouterr().err
    bad_weights = tmp_path / "w.safetensors"
    bad_weights.write_bytes(b"\x00" * 16)
    argv = [str(path_a), str(path_b), "--weights", str(bad_weights), "--out", str(out)]
    assert correspond_main(argv) == 1
    assert "cannot load the model" in capsys.readouterr().err
    ark = ArkModel(backbone="vit_tiny_patch16_224", img_size=112, head_sizes=[2])
    other = save_weights(
        ark, tmp_path / "ark.safetensors", model_name="ark", model_args=ark.model_args
    )
    argv = [str(path_a), str(path_b), "--weights", str(other), "--out", str(out)]
    assert correspond_main(argv) == 1
    assert "holds a ArkModel, not a PEAC model" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        correspond_main(
            [
                str(path_a),
                str(path_b),
                "--weights",
                str(weights),
                "--out",
                str(out),
                "--points",
                "1;2",
            ]
        )


def test_cli_help():
    proc = subprocess.run(
        [sys.executable, "-m", "models.peac_correspond", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--weights" in proc.stdout and "ROW,COL" in proc.stdout


@pytest.mark.slow
def test_published_swin_b_at_448():
    model = PEACModel()  # PEAC: Swin-B at 448, 8192-d global, 512-d local
    assert (model.grid, model.cell, model.num_features) == (14, 32, 1024)
    assert model.head.out_features == 196 and model.decoder[0].out_channels == 32 * 32 * 3
    assert [m.out_features for m in model.mlp if isinstance(m, nn.Linear)] == [8192] * 3
    assert [m.out_features for m in model.mlp_local if isinstance(m, nn.Linear)] == [512] * 3
    table = model.backbone.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (13 * 13, 4)


@pytest.mark.slow
def test_published_vit_b_at_224():
    model = PEACModel(backbone="vit_base_patch16_224", img_size=224, **SMALL)  # PEAC⁻³
    assert (model.grid, model.cell, model.num_features) == (14, 16, 768)
    with torch.no_grad():
        out = model.eval()(_images(1, 224), perm=_perms(1, 196))
    assert out.tokens.shape == (1, 14, 14, 768) and out.order.shape == (1, 196, 196)
    assert out.restored.shape == (1, 3, 224, 224)
