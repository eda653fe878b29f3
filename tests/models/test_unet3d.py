"""UNet3D / GenesisClassifier: shapes, official key names, ContBatchNorm3d semantics."""

import pytest
import torch
import torch.nn.functional as F

from models import MODELS, ContBatchNorm3d, GenesisClassifier, UNet3D, build_model

TINY = (1, 1, 16, 8, 8)  # cheap valid input: bottleneck 2x1x1, i.e. 2 values per channel for BN


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet3D()


def _official_keys(n_blocks_down=("down_tr64", "down_tr128", "down_tr256", "down_tr512")):
    """Key pattern of Genesis_Chest_CT.pt (without 'module.'), from docs/METHODS.md §1.1."""
    conv = ("weight", "bias")
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = set()
    for block in (*n_blocks_down, "up_tr256", "up_tr128", "up_tr64"):
        for i in (0, 1):
            keys |= {f"{block}.ops.{i}.conv1.{p}" for p in conv}
            keys |= {f"{block}.ops.{i}.bn1.{p}" for p in bn}
        if block.startswith("up_"):
            keys |= {f"{block}.up_conv.{p}" for p in conv}
    keys |= {f"out_tr.final_conv.{p}" for p in conv}
    return keys


def test_state_dict_keys_match_official_pattern(unet):
    assert set(unet.state_dict()) == _official_keys()


@pytest.mark.parametrize(
    "key, shape",
    [
        ("down_tr64.ops.0.conv1.weight", (32, 1, 3, 3, 3)),
        ("down_tr64.ops.1.conv1.weight", (64, 32, 3, 3, 3)),
        ("down_tr128.ops.0.conv1.weight", (64, 64, 3, 3, 3)),
        ("down_tr256.ops.1.conv1.weight", (256, 128, 3, 3, 3)),
        ("down_tr512.ops.1.conv1.weight", (512, 256, 3, 3, 3)),
        ("down_tr512.ops.1.bn1.running_var", (512,)),
        ("up_tr256.up_conv.weight", (512, 512, 2, 2, 2)),  # ConvTranspose: (in, out, k, k, k)
        ("up_tr256.ops.0.conv1.weight", (256, 768, 3, 3, 3)),
        ("up_tr128.up_conv.weight", (256, 256, 2, 2, 2)),
        ("up_tr128.ops.0.conv1.weight", (128, 384, 3, 3, 3)),
        ("up_tr64.ops.0.conv1.weight", (64, 192, 3, 3, 3)),
        ("up_tr64.ops.1.conv1.weight", (64, 64, 3, 3, 3)),
        ("out_tr.final_conv.weight", (1, 64, 1, 1, 1)),
        ("out_tr.final_conv.bias", (1,)),
    ],
)
def test_weight_shapes(unet, key, shape):
    assert tuple(unet.state_dict()[key].shape) == shape


def test_forward_paper_shape_in_unit_interval(unet):
    x = torch.rand(2, 1, 64, 64, 32)
    with torch.no_grad():
        y = unet(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_forward_odd_but_valid_size(unet):
    with torch.no_grad():
        y = unet(torch.rand(1, 1, 32, 48, 16))
    assert y.shape == (1, 1, 32, 48, 16)


def test_forward_features_is_bottleneck(unet):
    with torch.no_grad():
        f = unet.forward_features(torch.rand(1, 1, 32, 48, 16))
    assert f.shape == (1, 512, 4, 6, 2)


@pytest.mark.parametrize("shape", [(1, 1, 20, 16, 8), (1, 2, 16, 16, 8), (1, 16, 16, 8)])
def test_rejects_bad_input(unet, shape):
    with pytest.raises(ValueError):
        unet(torch.rand(*shape))


def test_logits_options(unet):
    x = torch.rand(*TINY)
    no_act = UNet3D(out_activation=None)
    no_act.load_state_dict(unet.state_dict())
    with torch.no_grad():
        probs = unet(x)
        logits = unet(x, return_logits=True)
        logits2 = no_act(x)
    torch.testing.assert_close(torch.sigmoid(logits), probs)
    torch.testing.assert_close(logits2, logits)


def test_backward_reaches_every_parameter():
    torch.manual_seed(4)
    m = UNet3D()
    F.binary_cross_entropy_with_logits(
        m(torch.rand(*TINY), return_logits=True), torch.rand(*TINY)
    ).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_multi_class_head():
    m = UNet3D(n_class=3)
    assert tuple(m.out_tr.final_conv.weight.shape) == (3, 64, 1, 1, 1)


@pytest.mark.parametrize("kwargs", [{"norm": "group"}, {"act": "prelu"}, {"out_activation": "x"}])
def test_bad_constructor_args(kwargs):
    with pytest.raises(ValueError):
        UNet3D(**kwargs)


# ------------------------------------------------------------------------------------- norm


def test_cont_batchnorm_uses_batch_stats_in_eval():
    torch.manual_seed(1)
    bn = ContBatchNorm3d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.fill_(5.0)  # would visibly change the output if used
        bn.running_var.fill_(9.0)
    x = torch.randn(3, 4, 5, 6, 7) * 2 + 1
    bn.eval()
    expected = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(bn(x), expected)
    # by hand: normalise each channel over (N, H, W, D) with the biased variance
    mean = x.mean(dim=(0, 2, 3, 4), keepdim=True)
    var = x.var(dim=(0, 2, 3, 4), unbiased=False, keepdim=True)
    w, b = bn.weight.view(1, -1, 1, 1, 1), bn.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(bn(x), (x - mean) / torch.sqrt(var + bn.eps) * w + b)


def test_cont_batchnorm_tracks_running_stats_like_batchnorm():
    x = torch.randn(2, 3, 4, 4, 4) * 3 + 2
    ours, ref = ContBatchNorm3d(3), torch.nn.BatchNorm3d(3)
    ours.train(), ref.train()
    ours(x), ref(x)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == 1
    before = ours.running_mean.clone()
    ours.eval()(x * 10)
    torch.testing.assert_close(ours.running_mean, before)  # eval does not touch the buffers


def test_standard_norm_uses_running_stats_in_eval():
    m = UNet3D(norm="standard")
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm3d)]
    assert bns and not any(isinstance(mod, ContBatchNorm3d) for mod in m.modules())
    bn = bns[0].eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, bn.num_features, 3, 3, 3)
    expected = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
    torch.testing.assert_close(bn(x), expected)


def test_norm_variants_share_names_and_load_either_way(unet):
    assert all(
        type(mod) is ContBatchNorm3d
        for mod in unet.modules()
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
    )
    standard = UNet3D(norm="standard")
    assert set(standard.state_dict()) == set(unet.state_dict())
    standard.load_state_dict(unet.state_dict())  # strict
    unet.load_state_dict(standard.state_dict())


# ------------------------------------------------------------------------- classifier, registry


def test_classifier_output_shape():
    torch.manual_seed(3)
    clf = GenesisClassifier(n_classes=5)
    with torch.no_grad():
        out = clf(torch.rand(2, 1, 64, 64, 32))
    assert out.shape == (2, 5)
    assert {k.split(".")[0] for k in clf.state_dict()} == {
        "down_tr64",
        "down_tr128",
        "down_tr256",
        "down_tr512",
        "dense_1",
        "dense_2",
    }
    assert tuple(clf.dense_1.weight.shape) == (1024, 512)
    assert tuple(clf.dense_2.weight.shape) == (5, 1024)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_encoder_from_unet_state_dict(unet, prefix):
    clf = GenesisClassifier(n_classes=2)
    head_before = clf.dense_1.weight.clone()
    src = {prefix + k: v for k, v in unet.state_dict().items()}
    result = clf.load_encoder_from(src)
    assert result.missing == [] and result.unexpected == []
    encoder_keys = {k for k in unet.state_dict() if k.startswith("down_tr")}
    assert set(result.loaded) == encoder_keys and len(encoder_keys) == 4 * 2 * 7
    assert {k.split(".")[0] for k in result.ignored} == {
        "up_tr256",
        "up_tr128",
        "up_tr64",
        "out_tr",
    }
    own = clf.state_dict()
    for key in encoder_keys:
        assert torch.equal(own[key], unet.state_dict()[key]), key
    assert torch.equal(clf.dense_1.weight, head_before)


def test_load_encoder_from_reports_problems(unet):
    clf = GenesisClassifier()
    src = dict(unet.state_dict())
    del src["down_tr128.ops.1.conv1.bias"]
    src["something.else"] = torch.zeros(1)
    with pytest.raises(KeyError, match="down_tr128.ops.1.conv1.bias"):
        clf.load_encoder_from(src)
    result = clf.load_encoder_from(src, strict=False)
    assert result.missing == ["down_tr128.ops.1.conv1.bias"]
    assert result.unexpected == ["something.else"]
    with pytest.raises(ValueError, match="down_tr64.ops.0.conv1.weight"):
        GenesisClassifier(in_channels=2).load_encoder_from(unet)


def test_registry():
    assert MODELS["unet3d"] is UNet3D and MODELS["genesis_classifier"] is GenesisClassifier
    assert isinstance(build_model("genesis_classifier", n_classes=4), GenesisClassifier)
    with pytest.raises(KeyError, match="genesis_classifier.*unet3d"):
        build_model("resnet")
