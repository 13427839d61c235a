"""A convolutional stem for the built-in ViT teachers (Xiao et al., "Early Convolutions Help Transformers See
Better", NeurIPS 2021): stride-2 3x3 convolutions replace the patchify convolution. A ViT trained from scratch on a
few thousand small images learns several times faster with it; the Transformer itself is unchanged."""

from __future__ import annotations

from torch import nn


class ConvStem(nn.Sequential):
    """(B,3,H,W) -> (B,width,H/patch,W/patch), like the patch embedding it replaces: stride-2 3x3 conv + BN + ReLU
    stages up to 8x, then one conv of the remaining stride (1x1 when the patch is a power of two up to 8)."""

    def __init__(self, patch: int, width: int) -> None:
        halvings = 0
        while patch % (2 ** (halvings + 1)) == 0 and 2 ** (halvings + 1) <= 8:
            halvings += 1
        rest = patch // 2**halvings
        layers: list[nn.Module] = []
        chans = 3
        for i in range(halvings):
            out = max(16, width // 2 ** (halvings - i))
            layers += [nn.Conv2d(chans, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            chans = out
        layers.append(nn.Conv2d(chans, width, rest, stride=rest))
        super().__init__(*layers)


def use_conv_stem(visual: nn.Module) -> None:
    """Swap an open_clip VisionTransformer's patch embedding (`conv1`) for a `ConvStem` of the same geometry."""
    conv = visual.conv1
    visual.conv1 = ConvStem(int(conv.stride[0]), int(conv.out_channels))
