"""Small timm backbones for CPU-sized presets, registered under their own timm names.

PEAC's Swin-B has no absolute position embedding (Swin uses a relative position bias), and
issue #18 found that ViT-Tiny's absolute embeddings let the tiny preset's order head read the
answer off the position (100 % on unshuffled crops) while its tokens turned into position codes.
These stand in for Swin-B on a CPU with the same property, at 16-px cells:

- ``resnet18_os16``: ResNet-18 with its last stage dilated (output stride 16), 512 channels;
  convolutions see only relative position (translation-equivariant up to the padding);
- ``vit_relpos_tiny_patch16``: a ViT-Tiny (192 wide, 12 blocks, 3 heads) with timm's relative
  position bias instead of absolute embeddings, no class token, as ``vit_relpos_small``.

Registering makes them ordinary timm names (``timm.create_model``, ``model_args``, export).
"""

from __future__ import annotations

import timm
from timm.models import register_model


@register_model
def resnet18_os16(pretrained: bool = False, **kwargs):
    """ResNet-18, last stage dilated: a 7 × 7 token map at 112 px."""
    kwargs.pop("img_size", None)  # convolutions take any size
    return timm.create_model("resnet18", pretrained=pretrained, output_stride=16, **kwargs)


@register_model
def vit_relpos_tiny_patch16(pretrained: bool = False, **kwargs):
    """ViT-Tiny/16 with a relative position bias and no absolute position embedding."""
    return timm.create_model(
        "vit_relpos_small_patch16_224",
        pretrained=pretrained,
        **{"embed_dim": 192, "num_heads": 3} | kwargs,
    )
