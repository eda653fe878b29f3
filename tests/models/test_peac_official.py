"""Importing the released PEAC checkpoint layout (built here, never downloaded).

PEAC's ``PEC_Model`` (jlianglab/PEAC, docs/METHODS.md §3.2) holds Microsoft's Swin as
``swin_model``, whose state dict uses the names of timm 0.5.4: the patch merging at the end of
stage i (``layers.{i}.downsample``), a plain ``head`` classifier, and the persistent buffers
``attn.relative_position_index`` (every block) and ``attn_mask`` (shifted blocks). Beside it:
``mlp`` and ``mlp_local`` (Linear → LayerNorm → ReLU per hidden layer, last Linear bias-free), the
order ``head`` (a bias-free Linear whose ``bias`` is a separate Parameter tied to ``head.bias``, so
the file holds both) and ``decoder`` (1×1 conv + pixel shuffle). Checkpoints are
``{'student', 'teacher', 'optimizer', 'epoch'}`` with DataParallel ``module.`` prefixes.

The source network below is an independent restatement on a current-timm Swin/ViT, renamed to the
released layout by a mapping written here; the imported model is compared with that source,
never with the importer's own output.
"""

import subprocess
import sys
from collections import OrderedDict

import pytest
import timm
import torch
from torch import nn

from models import CheckpointError, CheckpointMismatchError, import_official, load_model
from models import load_weights as read_weights

TINY = "swin_tiny_patch4_window7_224"
WINDOW = 7


def _index_table(w):
    """Microsoft Swin's relative_position_index: (dy + w - 1) * (2w - 1) + (dx + w - 1)."""
    pos = [(y, x) for y in range(w) for x in range(w)]
    return torch.tensor(
        [[(a[0] - b[0] + w - 1) * (2 * w - 1) + (a[1] - b[1] + w - 1) for b in pos] for a in pos]
    )


def _shift_mask(res, w):
    """A shifted block's attn_mask on a res×res map: -100 between tokens of different regions.

    The map rolled by w // 2 has three bands per axis (up to -w, -w to -w//2, the rest); tokens
    of one window attend freely only within their band pair.
    """
    s = w // 2

    def band(i):
        return 0 if i < res - w else (1 if i < res - s else 2)

    region = [[3 * band(y) + band(x) for x in range(res)] for y in range(res)]
    masks = []
    for wy in range(0, res, w):
        for wx in range(0, res, w):
            ids = torch.tensor(
                [region[wy + y][wx + x] for y in range(w) for x in range(w)], dtype=torch.float32
            )
            masks.append(torch.where(ids[:, None] == ids[None, :], 0.0, -100.0))
    return torch.stack(masks)


def _to_microsoft_swin(state, depths, img_size, patch=4):
    """Current timm Swin keys → Microsoft Swin / timm 0.5.4 keys, with its saved buffers."""
    out = OrderedDict()
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":  # start of i+1 → end of i
            key = ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
        elif key.startswith("head.fc."):
            key = "head." + key[len("head.fc.") :]
        out[key] = value
    for i, depth in enumerate(depths):
        res = img_size // patch // 2**i
        for j in range(depth):
            out[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = _index_table(WINDOW)
            if j % 2 == 1 and res > WINDOW:
                out[f"layers.{i}.blocks.{j}.attn_mask"] = _shift_mask(res, WINDOW)
    return out


def _projector(c, dims):
    """The release's MLP spec "c-d1-d2-d3": hidden Linear → LayerNorm → ReLU, bias-free last."""
    widths = [c, *dims]
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(True)]
    return nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1], bias=False))


def _shuffle(x, perm, p):
    """Out tile j (row-major) = input tile perm[j], by plain slicing."""
    n = x.shape[-1] // p
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for j, k in enumerate(perm[b].tolist()):
            dst = (slice(None), slice(j // n * p, j // n * p + p), slice(j % n * p, j % n * p + p))
            src = (slice(None), slice(k // n * p, k // n * p + p), slice(k % n * p, k % n * p + p))
            out[b][dst] = x[b][src]
    return out


class _Source(nn.Module):
    """PEAC as released, on a current-timm backbone (``swin_model``, whatever the backbone)."""

    def __init__(
        self,
        name=TINY,
        img_size=224,
        gdims=(40, 40, 32),
        ldims=(24, 24, 16),
        seed=0,
        order=True,
        decoder=True,
        vestigial=False,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.swin_model = timm.create_model(
            name, pretrained=False, num_classes=1000 if vestigial else 0, img_size=img_size
        )
        c = self.swin_model.num_features
        self.p = self.swin_model.feature_info[-1]["reduction"]
        self.g = img_size // self.p
        self.vit = "vit" in name
        if order:
            self.head = nn.Linear(c, self.g**2, bias=False)
            self.bias = nn.Parameter(torch.zeros(self.g**2))
            self.head.bias = self.bias  # tied: the state dict holds `bias` and `head.bias`
        self.order = order
        if decoder:
            self.decoder = nn.Sequential(nn.Conv2d(c, self.p**2 * 3, 1), nn.PixelShuffle(self.p))
        self.mlp = _projector(c, gdims)
        self.mlp_local = _projector(c, ldims)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # move every parameter off its default (LayerNorm 1/0 included)
            for prm in self.parameters():
                prm.add_(torch.randn(prm.shape, generator=g) * 0.02)
        self.eval()

    def forward(self, x, perm):
        x = _shuffle(x, perm, self.p)
        f = self.swin_model.forward_features(x)
        if self.vit:
            f = f[:, 1:].reshape(x.shape[0], self.g, self.g, -1)
        b, c = f.shape[0], f.shape[-1]
        order = self.head(f.reshape(b, -1, c)) if self.order else None
        restored = self.decoder(f.permute(0, 3, 1, 2)) if hasattr(self, "decoder") else None
        return order, restored, self.mlp(f.mean(dim=(1, 2))), self.mlp_local(f)

    def released_state(self, depths=(2, 2, 6, 2), img_size=224):
        sd = OrderedDict(
            (k, v) for k, v in self.state_dict().items() if not k.startswith("swin_model.")
        )
        backbone = self.swin_model.state_dict()
        if not self.vit:
            backbone = _to_microsoft_swin(backbone, depths, img_size)
        sd.update(("swin_model." + k, v) for k, v in backbone.items())
        return sd


def _checkpoint(teacher, *, offset=1.0):
    """save_model's dict: both networks DataParallel-wrapped; the student differs by ``offset``."""

    def wrap(sd, d):
        return OrderedDict(
            ("module." + k, v + d if v.is_floating_point() and not k.endswith("attn_mask") else v)
            for k, v in sd.items()
        )

    return {
        "student": wrap(teacher, offset),
        "teacher": wrap(teacher, 0.0),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]},
        "epoch": 300,
    }


def _compare(model, source, size, batch=2, seed=5):
    model.eval()
    g = size // source.p
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    perm = torch.stack([torch.randperm(g * g, generator=gen) for _ in range(batch)])
    with torch.no_grad():
        order, restored, glob, loc = source(x, perm)
        out = model(x, perm=perm)
    for got, want in ((out.order, order), (out.restored, restored)):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.global_, glob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.local, loc, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def source():
    return _Source(vestigial=True)


def test_import_released_training_checkpoint(tmp_path, source):
    sd = source.released_state()
    assert {"bias", "head.bias", "swin_model.layers.0.downsample.reduction.weight"} <= set(sd)
    assert "swin_model.layers.1.blocks.1.attn_mask" in sd and "swin_model.head.weight" in sd
    path = tmp_path / "PEAC_swint.pth"
    torch.save(_checkpoint(sd), path)
    out = tmp_path / "peac.safetensors"
    report = import_official("peac", path, out=out)
    assert report.ok, str(report)
    assert report.source_entry == "teacher" and report.source_epoch == 300
    assert report.stripped_prefix == "module." and report.model_name == "peac"
    assert report.model_args == {
        "backbone": TINY,
        "img_size": 224,
        "in_chans": 3,
        "global_dims": [40, 40, 32],
        "local_dims": [24, 24, 16],
        "order_head": True,
        "decoder": True,
    }
    assert {"bias", "swin_model.head.weight", "swin_model.head.bias"} <= set(report.dropped)
    assert "swin_model.layers.1.blocks.1.attn_mask" in report.dropped
    assert "swin_model.layers.0.blocks.0.attn.relative_position_index" in report.dropped
    assert report.loaded == len(report.model.state_dict())
    _compare(report.model, source, 224)
    assert "peac import of PEAC_swint.pth" in str(report) and "OK" in str(report)

    _, info = read_weights(out)
    assert info.model_name == "peac" and info.metadata["source_layout"] == "timm 0.5.4"
    assert info.metadata["source_entry"] == "teacher"
    rebuilt = load_model(out)
    for key, value in report.model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)


def test_student_entry_and_missing_entry(tmp_path, source):
    path = tmp_path / "ckpt.pth"
    torch.save(_checkpoint(source.released_state(), offset=1.0), path)
    report = import_official("peac", path, entry="student")
    assert report.ok and report.source_entry == "student"
    got = report.model.state_dict()
    torch.testing.assert_close(got["head.weight"], source.head.weight + 1.0, rtol=0, atol=0)
    torch.testing.assert_close(got["head.bias"], source.bias + 1.0, rtol=0, atol=0)
    torch.testing.assert_close(got["mlp.6.weight"], source.mlp[6].weight + 1.0, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        import_official("peac", path, entry="ema")


def test_bare_state_dict_without_heads(tmp_path):
    """No order head or decoder: the input size comes from the stage-0 attention mask (here
    224, not the 448 assumed for PEAC's Swin when the file does not tell)."""
    source = _Source(order=False, decoder=False, seed=2, gdims=(16,), ldims=(8, 8))
    sd = source.released_state()
    assert sd["swin_model.layers.0.blocks.1.attn_mask"].shape == (64, 49, 49)
    torch.save(sd, tmp_path / "bare.pth")
    report = import_official("peac", tmp_path / "bare.pth")
    assert report.ok, str(report)
    assert report.stripped_prefix is None and report.source_entry is None
    args = report.model_args
    assert (args["backbone"], args["img_size"]) == (TINY, 224)
    assert (args["order_head"], args["decoder"]) == (False, False)
    assert (args["global_dims"], args["local_dims"]) == ([16], [8, 8])
    assert report.model.grid == 7 and report.model.cell == 32
    _compare(report.model, source, 224)
    assert report.model.mlp[0].bias is None  # a single bias-free Linear


def test_vit_release(tmp_path):
    """PEAC⁻³ (ViT-B/16 at 224) has an unverified layout; timm ViT names under any prefix work."""
    source = _Source("vit_tiny_patch16_224", img_size=112, seed=4)
    sd = source.released_state()
    torch.save(_checkpoint(sd), tmp_path / "peac_vit.pth")
    report = import_official("peac", tmp_path / "peac_vit.pth")
    assert report.ok, str(report)
    assert report.model_args["backbone"] == "vit_tiny_patch16_224"
    assert report.model_args["img_size"] == 112 and report.model.grid == 7
    _compare(report.model, source, 112)


def test_disagreements_are_reported(tmp_path, source):
    sd = source.released_state()
    sd["bias"] = sd["bias"] + 1.0  # untie the order-head bias
    key = "swin_model.layers.1.blocks.1.attn_mask"
    sd[key] = torch.zeros_like(sd[key])
    del sd["swin_model.layers.2.downsample.reduction.weight"]  # ours: layers.3
    sd["swin_model.absolute_pos_embed"] = torch.zeros(1, 3136, 96)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="bias: differs from head.bias") as err:
        import_official("peac", tmp_path / "bad.pth")
    report = err.value.report
    assert report.missing == ["backbone.layers.3.downsample.reduction.weight"]
    assert report.unexpected == ["backbone.absolute_pos_embed"]
    assert any(m.startswith("backbone.layers.1.blocks.1.attn_mask") for m in report.mismatched)
    report = import_official("peac", tmp_path / "bad.pth", strict=False)
    assert not report.ok and "MISMATCH" in str(report)

    only_bias = source.released_state()
    del only_bias["head.bias"]  # the tied Parameter alone still gives head.bias
    torch.save(only_bias, tmp_path / "only_bias.pth")
    report = import_official("peac", tmp_path / "only_bias.pth")
    assert report.ok and "bias" not in report.dropped
    torch.testing.assert_close(report.model.head.bias, source.bias, rtol=0, atol=0)


def test_unknown_and_corrupt_files_are_refused(tmp_path, source):
    corrupt = tmp_path / "peac_corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="peac_corrupt.pth"):
        import_official("peac", corrupt)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(CheckpointError, match=r"resnet.pth.*not a PEAC checkpoint"):
        import_official("peac", other)
    ark_like = {k.removeprefix("swin_model."): v for k, v in source.released_state().items()}
    torch.save(ark_like, tmp_path / "unprefixed.pth")
    with pytest.raises(CheckpointError, match="not a PEAC checkpoint"):
        import_official("peac", tmp_path / "unprefixed.pth")


def test_command_line_import(tmp_path, source):
    src = tmp_path / "peac.pth"
    torch.save(_checkpoint(source.released_state()), src)
    out = tmp_path / "peac.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "models.import_weights", "peac", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "peac import of peac.pth" in proc.stdout and "OK" in proc.stdout
    model = load_model(out)
    torch.testing.assert_close(model.head.weight, source.head.weight, rtol=0, atol=0)


@pytest.mark.slow
def test_import_released_swin_base_at_448(tmp_path):
    source = _Source(
        "swin_base_patch4_window7_224", img_size=448, gdims=(64, 64, 64), ldims=(32,), seed=7
    )
    sd = source.released_state(depths=(2, 2, 18, 2), img_size=448)
    table = sd["swin_model.layers.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (13 * 13, 4)
    torch.save(_checkpoint(sd), tmp_path / "PEAC_swinb_448.pth")
    report = import_official("peac", tmp_path / "PEAC_swinb_448.pth")
    assert report.ok, str(report)
    assert report.model_args["backbone"] == "swin_base_patch4_window7_224"
    assert report.model_args["img_size"] == 448
    assert (report.model.grid, report.model.cell, report.model.num_features) == (14, 32, 1024)
    _compare(report.model, source, 448, batch=1)
