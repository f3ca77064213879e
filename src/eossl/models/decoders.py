"""Decoders used only during pretraining.

:class:`ColorizationDecoder` is the bottleneck decoder of colorization pretraining (Vincenzi et
al. 2020, "The color out of space"): it receives only the encoder's global-pooled code, never
its feature maps, so every bit of colour it paints must have passed through the code the
downstream tasks keep. Dense decoders with skip connections (U-Net) come from
segmentation-models-pytorch in ``models/unet.py``; a bottleneck decoder without skips is not
something smp or timm provide, hence the small hand-written residual blocks here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["UpResidualBlock", "ColorizationDecoder", "backbone_reduction"]


class UpResidualBlock(nn.Module):
    """A ResNet basic block run backwards: a stride-2 transposed convolution doubles the grid
    (or a plain 3x3 convolution keeps it), a 3x3 convolution follows, and a projection
    shortcut of the same stride carries the input around both."""

    def __init__(self, in_ch: int, out_ch: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.conv1 = nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1,
                                            output_padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if upsample or in_ch != out_ch:
            conv = (nn.ConvTranspose2d(in_ch, out_ch, 1, stride=2, output_padding=1, bias=False)
                    if upsample else nn.Conv2d(in_ch, out_ch, 1, bias=False))
            self.shortcut = nn.Sequential(conv, nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class ColorizationDecoder(nn.Module):
    """Global code (N, D) -> sigmoid map (N, out_channels, H, W) through a true bottleneck.

    The code passes dropout (paper: 0.3), is "un-pooled" by a linear layer onto the grid the
    encoder's last stage had (``size / reduction``), then one stage of ``blocks_per_stage``
    residual blocks per stride-2 step of the encoder upsamples it back (the mirror of the
    ResNet's stages; the first block of a stage doubles the grid). A 3x3 convolution and a
    sigmoid give the output; sizes that are not a power-of-two multiple of the start grid are
    finished by bilinear resizing.

    Args:
        code_dim: length of the encoder's pooled code (``backbone.out_dim``).
        size: output height and width in px (the pretraining crop size).
        reduction: total stride of the encoder (e.g. 16 for a ResNet with a stride-2 stem), see
            :func:`backbone_reduction`.
        channels: widths of the upsampling stages, widest first (our choice: 256, 128, 64, 32;
            the paper mirrors its encoder's widths). Stages beyond ``log2(reduction)`` are
            dropped; missing ones repeat the last width.
        blocks_per_stage: residual blocks per stage (2 mirrors a ResNet-18).
        out_channels: 2 for the Lab a, b channels.
        dropout: dropout on the code (paper: 0.3).
    """

    def __init__(self, code_dim: int, size: int, reduction: int = 16,
                 channels: Sequence[int] = (256, 128, 64, 32), blocks_per_stage: int = 2,
                 out_channels: int = 2, dropout: float = 0.3) -> None:
        super().__init__()
        if size < 1 or reduction < 1 or code_dim < 1:
            raise ConfigError(f"colorization decoder: need size, reduction and code_dim >= 1, "
                              f"got {size}, {reduction}, {code_dim}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"colorization decoder: dropout must be in [0, 1), got {dropout}")
        if blocks_per_stage < 1 or not channels or min(channels) < 1:
            raise ConfigError("colorization decoder: need blocks_per_stage >= 1 and positive "
                              f"channel widths, got {blocks_per_stage}, {list(channels)}")
        self.size = int(size)
        n_up = max(0, int(round(math.log2(reduction))))
        self.start = max(1, math.ceil(size / 2 ** n_up))
        widths = list(channels)[: max(n_up, 1)]
        widths += [widths[-1]] * (max(n_up, 1) - len(widths))
        self.dropout = nn.Dropout(dropout)
        self.unpool = nn.Linear(code_dim, widths[0] * self.start * self.start)
        self.unpool_bn = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for i in range(max(n_up, 1)):
            for j in range(blocks_per_stage):
                blocks.append(UpResidualBlock(in_ch, widths[i], upsample=(j == 0 and i < n_up)))
                in_ch = widths[i]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(in_ch, out_channels, 3, padding=1)

    def forward(self, code: torch.Tensor, size: int | tuple[int, int] | None = None
                ) -> torch.Tensor:
        n = code.shape[0]
        x = self.unpool(self.dropout(code)).view(n, -1, self.start, self.start)
        x = self.blocks(F.relu(self.unpool_bn(x), inplace=True))
        x = self.head(x)
        hw = (size, size) if isinstance(size, int) else tuple(size or (self.size, self.size))
        if tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


@torch.no_grad()
def backbone_reduction(backbone: nn.Module, in_chans: int, probe_size: int = 64) -> int:
    """Total stride of a backbone's ``forward_features``, measured by one dry run.

    timm's ``feature_info`` is not updated when eossl changes a stem stride, so the stride is
    measured rather than read. Two samples and eval mode keep BatchNorm happy at 1x1 maps.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        p = next(iter(backbone.parameters()), None)
        x = torch.zeros(2, in_chans, probe_size, probe_size,
                        device=p.device if p is not None else "cpu")
        h = backbone.forward_features(x).shape[-1]
    finally:
        backbone.train(was_training)
    return max(1, round(probe_size / max(int(h), 1)))
