"""ArkModel: heads in the configured order, projector key names, checkpoint round trip (CPU)."""

import pytest
import torch
from torch import nn

from models import ArkModel, build_model, load_model, load_weights, save_weights

TINY_SWIN = {"backbone": "swin_tiny_patch4_window7_224", "img_size": 64}
RESNET = {"backbone": "resnet18", "img_size": 64}


def _images(n=2, size=64, channels=3, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet_ark():
    torch.manual_seed(0)
    return ArkModel(**RESNET, embed_dim=32, head_sizes=[14, 3, 1]).eval()


def test_heads_follow_the_config(resnet_ark):
    model = resnet_ark
    assert model.num_heads == 3 and model.head_sizes == [14, 3, 1]
    assert model.head_names == ["head0", "head1", "head2"]
    assert [h.out_features for h in model.omni_heads] == [14, 3, 1]
    assert all(h.in_features == 32 for h in model.omni_heads)
    named = ArkModel(**RESNET, embed_dim=8, head_sizes=[2, 5], head_names=["CheXpert", "RSNA"])
    assert named.head_names == ["CheXpert", "RSNA"]
    with pytest.raises(ValueError, match="head_names"):
        ArkModel(**RESNET, head_sizes=[2, 5], head_names=["one"])


def test_single_head_equals_its_entry_in_all_heads(resnet_ark):
    x = _images()
    with torch.no_grad():
        z_all, logits = resnet_ark(x)
        assert isinstance(logits, list) and [t.shape for t in logits] == [
            (2, 14),
            (2, 3),
            (2, 1),
        ]
        for i in range(resnet_ark.num_heads):
            z, y = resnet_ark(x, head=i)
            assert y.shape == (2, resnet_ark.head_sizes[i])
            torch.testing.assert_close(y, logits[i], rtol=0, atol=0)
            torch.testing.assert_close(z, z_all, rtol=0, atol=0)
    with pytest.raises(IndexError):
        resnet_ark(x, head=3)


def test_embedding_and_features(resnet_ark):
    x = _images()
    with torch.no_grad():
        f = resnet_ark.features(x)
        z = resnet_ark.embed(x)
        assert f.shape == (2, 512) and resnet_ark.num_features == 512
        assert z.shape == (2, 32) and resnet_ark.embed_dim == 32
        torch.testing.assert_close(z, resnet_ark.projector(f), rtol=0, atol=0)
        torch.testing.assert_close(resnet_ark(x)[0], z, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kind, keys, width",
    [
        ("linear", {"projector.weight", "projector.bias"}, 24),
        (
            "mlp",
            {"projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias"},
            24,
        ),
        ("none", set(), 512),
    ],
)
def test_projector_kinds_give_published_keys(kind, keys, width):
    model = ArkModel(**RESNET, embed_dim=24, projector=kind, head_sizes=[4])
    state = model.state_dict()
    assert {k for k in state if k.startswith("projector")} == keys
    assert {k for k in state if not k.startswith("backbone.")} == keys | {
        "omni_heads.0.weight",
        "omni_heads.0.bias",
    }
    assert model.embed_dim == width and state["omni_heads.0.weight"].shape == (4, width)
    if kind == "mlp":
        assert isinstance(model.projector[1], nn.ReLU)
        assert state["projector.2.weight"].shape == (24, 24)
    with torch.no_grad():
        assert model.eval().embed(_images(1)).shape == (1, width)
    with pytest.raises(ValueError, match="projector"):
        ArkModel(**RESNET, projector="conv")


def test_add_head_appends_and_keeps_the_others():
    torch.manual_seed(1)
    model = ArkModel(**RESNET, embed_dim=16, head_sizes=[2, 3]).eval()
    x = _images()
    with torch.no_grad():
        _, before = model(x)
        assert model.add_head(5, "Shenzhen") == 2
        z, after = model(x)
        assert model.num_heads == 3 and model.head_sizes == [2, 3, 5]
        assert model.head_names == ["head0", "head1", "Shenzhen"]
        assert after[2].shape == (2, 5)
        torch.testing.assert_close(model(x, head=2)[1], model.omni_heads[2](z), rtol=0, atol=0)
    for old, new in zip(before, after[:2], strict=True):
        torch.testing.assert_close(old, new, rtol=0, atol=0)
    assert model.model_args["head_sizes"] == [2, 3, 5]
    with pytest.raises(ValueError, match="exists"):
        model.add_head(2, "Shenzhen")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(2)
    model = build_model("ark", **TINY_SWIN, embed_dim=40, projector="mlp", head_sizes=[14, 6])
    model.add_head(3, "RSNA")
    path = save_weights(
        model, tmp_path / "ark.safetensors", model_name="ark", model_args=model.model_args
    )
    _, info = load_weights(path)
    assert info.model_name == "ark" and info.model_args["head_names"][-1] == "RSNA"
    rebuilt = load_model(path).eval()
    assert isinstance(rebuilt, ArkModel) and rebuilt.head_sizes == [14, 6, 3]
    x = _images()
    with torch.no_grad():
        z0, y0 = model.eval()(x)
        z1, y1 = rebuilt(x)
    torch.testing.assert_close(z1, z0, rtol=0, atol=0)
    for a, b in zip(y1, y0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("config, feature", [(TINY_SWIN, 768), (RESNET, 512)])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_small_backbones_on_cpu(config, feature, in_chans):
    model = ArkModel(**config, in_chans=in_chans, embed_dim=16, head_sizes=[2]).eval()
    with torch.no_grad():
        z, y = model(_images(2, 64, in_chans), head=0)
    assert model.num_features == feature and z.shape == (2, 16) and y.shape == (2, 2)


def test_swin_at_other_input_size_builds_its_tables():
    model = ArkModel(backbone="swin_tiny_patch4_window7_224", img_size=96, head_sizes=[1])
    table = model.state_dict()["backbone.layers.3.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (25, 24)  # 96 / 32 = 3 tokens a side at the last stage: window 3
    with torch.no_grad():
        assert model.eval()(_images(1, 96), head=0)[1].shape == (1, 1)


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown timm model"):
        ArkModel(backbone="not_a_model")
