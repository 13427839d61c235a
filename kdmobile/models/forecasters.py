"""Spatiotemporal forecasters for SDKD: two teachers (conv + Transformer, SimVP v2-style) and two light students.

All map normalised frames (B, T_in, H, W) -> (B, T_out, H, W) and expose `forward_with_latent`, whose latent
(B, C, H/4, W/4) is what spectral distillation aligns. Only `forward` is exported: no FFT in any model.
"""

from __future__ import annotations

import torch
from torch import nn

from kdmobile.models.registry import register_model


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout // 4 or 1), cout), nn.SiLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout))


class ConvBlock(nn.Module):
    """Local mixing (high frequencies): depthwise 5x5 conv + pointwise MLP, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.norm = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, dim * 2, 1), nn.GELU(), nn.Conv2d(dim * 2, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(self.dw(x)))


class TransformerBlock(nn.Module):
    """Global mixing (low frequencies): multi-head self-attention over all latent positions, then an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        y = self.norm1(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class GSTABlock(nn.Module):
    """SimVP v2's gated spatiotemporal attention: a large-kernel attention map (depthwise 5x5, then depthwise 7x7
    with dilation 3, then 1x1: a 21x21 receptive field) gates the features, followed by an MLP; both residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.lka = nn.Sequential(nn.Conv2d(dim, dim, 5, padding=2, groups=dim),
                                 nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim), nn.Conv2d(dim, dim, 1))
        self.out = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = nn.functional.gelu(self.proj(self.norm1(x)))
        x = x + self.out(u * torch.sigmoid(self.lka(u)))
        return x + self.mlp(self.norm2(x))


class _EncoderDecoder(nn.Module):
    """Shared frame encoder (stride 4) and decoder with a full-resolution skip, around a latent stage."""

    def __init__(self, frames_in: int, frames_out: int, width: int, latent: nn.Module) -> None:
        super().__init__()
        self.frames_in, self.frames_out = frames_in, frames_out
        self.stem = _conv(frames_in, width)
        self.down = nn.Sequential(_conv(width, width, 2), _conv(width, width, 2))
        self.latent = latent
        self.up = nn.Sequential(_up(width, width), _up(width, width))
        self.head = nn.Conv2d(width * 2, frames_out, 3, padding=1)

    def forward_with_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast and the latent map it was decoded from."""
        skip = self.stem(x)
        z = self.latent(self.down(skip))
        out = self.head(torch.cat([self.up(z), skip], dim=1))
        if self.frames_in == self.frames_out:  # predict the change from the input frames
            out = out + x
        return out, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_latent(x)[0]


@register_model("sdkd_teacher")
def sdkd_teacher(frames_in: int = 10, frames_out: int = 10, width: int = 64, conv_blocks: int = 3,
                 transformer_blocks: int = 3, heads: int = 4) -> nn.Module:
    """SimVP-style teacher whose latent stage interleaves conv (local) and Transformer (global) blocks."""
    blocks: list[nn.Module] = []
    for i in range(max(conv_blocks, transformer_blocks)):
        if i < conv_blocks:
            blocks.append(ConvBlock(width))
        if i < transformer_blocks:
            blocks.append(TransformerBlock(width, heads))
    return _EncoderDecoder(frames_in, frames_out, width, nn.Sequential(*blocks))


@register_model("sdkd_simvp")
def sdkd_simvp(frames_in: int = 10, frames_out: int = 10, width: int = 64, blocks: int = 4) -> nn.Module:
    """SimVP v2-style teacher: the same frame encoder/decoder around a translator of gated large-kernel blocks
    (all convolution, no attention): a second, differently built teacher for multi-teacher SDKD."""
    return _EncoderDecoder(frames_in, frames_out, width, nn.Sequential(*(GSTABlock(width) for _ in range(blocks))))


class _ResBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(dim, dim), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


@register_model("sdkd_resnet")
def sdkd_resnet(frames_in: int = 10, frames_out: int = 10, width: int = 32, blocks: int = 3) -> nn.Module:
    """Lightweight ResNet-style student: plain residual conv blocks in the latent stage."""
    return _EncoderDecoder(frames_in, frames_out, width, nn.Sequential(*(_ResBlock(width) for _ in range(blocks))))


@register_model("sdkd_unet")
class UNetForecaster(nn.Module):
    """Lightweight U-Net student: two down/up levels with skips; the bottleneck (H/4) is the latent."""

    def __init__(self, frames_in: int = 10, frames_out: int = 10, width: int = 24) -> None:
        super().__init__()
        self.frames_in, self.frames_out = frames_in, frames_out
        self.e1 = _conv(frames_in, width)
        self.e2 = _conv(width, width * 2, 2)
        self.e3 = nn.Sequential(_conv(width * 2, width * 2, 2), _ResBlock(width * 2))
        self.u2 = _up(width * 2, width * 2)
        self.d2 = _conv(width * 4, width)
        self.u1 = _up(width, width)
        self.head = nn.Conv2d(width * 2, frames_out, 3, padding=1)

    def forward_with_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast and the bottleneck latent."""
        s1 = self.e1(x)
        s2 = self.e2(s1)
        z = self.e3(s2)
        d2 = self.d2(torch.cat([self.u2(z), s2], 1))
        out = self.head(torch.cat([self.u1(d2), s1], 1))
        if self.frames_in == self.frames_out:
            out = out + x
        return out, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_latent(x)[0]


def latent_channels(model: nn.Module) -> int:
    """Channels of a forecaster's latent map (for sizing the 1x1 distillation adapter)."""
    with torch.no_grad():
        probe = torch.zeros(1, model.frames_in, 16, 16)
        return int(model.forward_with_latent(probe)[1].shape[1])
