"""Official releases rebuilt for the tests (a helper module, not a test module; nothing is
downloaded): the Models Genesis training-checkpoint layout, and Ark's released teacher in the
Swin names of timm 0.5.4, written independently of the importers they check.

Ark pinned timm 0.5.4, whose Swin state dict differs from the installed timm's: the patch merging
sits at the end of stage i (``layers.{i}.downsample``), the classifier is a plain ``head``, and
every attention saved its ``relative_position_index`` (every shifted block its ``attn_mask``) as
persistent buffers.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import timm
import torch
from torch import nn


def write_official(path, state, *, prefix="module.", wrap=True, legacy=False, epoch=42):
    """Released layout: DataParallel-prefixed keys inside a training checkpoint dict."""
    sd = OrderedDict((prefix + k, v) for k, v in state.items())
    obj = sd
    if wrap:
        n = sum(1 for k in state if not k.endswith(("running_mean", "running_var", "tracked")))
        obj = {
            "epoch": epoch,
            "state_dict": sd,
            "optimizer_state_dict": {
                "state": {0: {"momentum_buffer": torch.zeros(3)}},
                "param_groups": [
                    {
                        "lr": 1.0,
                        "momentum": 0.9,
                        "dampening": 0,
                        "weight_decay": 0,
                        "nesterov": False,
                        "params": list(range(n)),
                    }
                ],
            },
        }
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


TINY = "swin_tiny_patch4_window7_224"
BASE = "swin_base_patch4_window7_224"
WINDOW = 7
HEADS = [14, 14, 14, 3, 6, 1]  # README --data_set order: MIMIC, CheXpert, NIH14, RSNA, VinDr, SZ
EMBED = 1376


def _relative_position_index(w):
    """Swin's table index: (dy + w - 1) * (2w - 1) + (dx + w - 1) for token pairs of a window."""
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]) + (w - 1)  # 2, N, N
    return rel[0] * (2 * w - 1) + rel[1]


def _shifted_window_mask(r, w):
    """timm 0.5.4's attn_mask of a shifted block on an r×r grid: -100 across shifted regions."""
    s = w // 2
    regions = torch.zeros(r, r)
    spans = (slice(0, -w), slice(-w, -s), slice(-s, None))
    for n, (hs, ws) in enumerate((hs, ws) for hs in spans for ws in spans):
        regions[hs, ws] = n
    windows = regions.view(r // w, w, r // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def to_timm054(state, depths, img_size=224, patch=4):
    """Current timm Swin keys → timm 0.5.4 keys, with the buffers 0.5.4 saved."""
    out = OrderedDict()
    for key, value in state.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if m:
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        elif key.startswith("head.fc."):
            key = "head." + key.removeprefix("head.fc.")
        out[key] = value
    for i, depth in enumerate(depths):
        r = img_size // patch // 2**i
        for j in range(depth):
            out[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = _relative_position_index(
                WINDOW
            )
            if j % 2 == 1 and r > WINDOW:
                out[f"layers.{i}.blocks.{j}.attn_mask"] = _shifted_window_mask(r, WINDOW)
    return out


class ArkRelease(nn.Module):
    """The weights Ark trained, in current timm: Swin (with its unused 1000-class head), heads."""

    def __init__(self, name, projector, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.swin = timm.create_model(name, pretrained=False)  # head.fc: 1000 classes
        width = self.swin.num_features
        if projector == "mlp":
            self.projector = nn.Sequential(
                nn.Linear(width, EMBED), nn.ReLU(), nn.Linear(EMBED, EMBED)
            )
        else:
            self.projector = nn.Linear(width, EMBED)
        self.heads = nn.ModuleList(nn.Linear(EMBED, c) for c in HEADS)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # move every parameter off its default (LayerNorm 1/0 included)
            for p in self.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        self.eval()

    def forward(self, x):
        f = self.swin.forward_head(self.swin.forward_features(x), pre_logits=True)
        z = self.projector(f)
        return z, [h(z) for h in self.heads]

    def released_state(self, depths):
        """The released teacher file: a bare state dict in timm 0.5.4 names."""
        sd = to_timm054(self.swin.state_dict(), depths)
        for prefix, module in (("projector.", self.projector), ("omni_heads.", self.heads)):
            sd.update((prefix + k, v) for k, v in module.state_dict().items())
        return sd
