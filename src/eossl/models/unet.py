"""U-Net whose encoder IS an eossl backbone (or encoder): dense embeddings or segmentation logits
per pixel.

The encoder side is anything with ``pyramid(x)`` (maps at distinct resolutions, finest first)
and ``pyramid_channels()``: a :class:`~eossl.models.backbones.Backbone` on normalised input (the
dense method's pretraining) or an :class:`~eossl.models.encoder.Encoder` on raw input
(segmentation and change detection, whatever the encoder type). The decoder is
segmentation-models-pytorch's ``UnetDecoder`` fed with those maps. We do not build
``smp.Unet(encoder_name="tu-...")``: its encoder wraps timm under other parameter names
(``encoder.model...``) and its own stride bookkeeping, so an eossl checkpoint's ``backbone.*``
weights would need renaming and its ``stem_stride`` (no max-pool for small EO patches) would
break smp's fixed stride-2 ladder. Feeding smp's decoder directly keeps the backbone's weights
identical to a pretext checkpoint's ``backbone.`` entries, so any eossl encoder drops in and a
dense checkpoint's decoder loads onto its encoder (``Encoder.unet``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from ..errors import ConfigError

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class UNet(nn.Module):
    """Encoder pyramid + smp U-Net decoder + a 3x3 conv head at input resolution.

    ``mode="embed"`` returns L2-normalised embeddings (N, out_channels, H, W) for dense
    contrastive pretraining; ``mode="logits"`` returns raw class scores for segmentation.
    Input sides must be multiples of the encoder's total stride.
    """

    def __init__(self, encoder: nn.Module, out_channels: int, *, mode: str = "embed",
                 decoder_channels: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if mode not in ("embed", "logits"):
            raise ConfigError(f"U-Net mode must be 'embed' or 'logits', got {mode!r}")
        if out_channels < 1:
            raise ConfigError(f"U-Net out_channels must be >= 1, got {out_channels}")
        self.encoder, self.mode = encoder, mode
        enc_ch = encoder.pyramid_channels()
        n = len(enc_ch)
        dec = tuple(decoder_channels or DEFAULT_DECODER_CHANNELS[:n])
        if len(dec) != n:
            raise ConfigError(f"decoder_channels {list(dec)} must have one entry per encoder "
                              f"scale ({n} for this encoder)")
        self.decoder_channels = dec
        # smp's decoder drops its first feature (the full-resolution input, used for its size
        # only), so that entry's channel count is a placeholder
        self.decoder = UnetDecoder(encoder_channels=[1, *enc_ch], decoder_channels=dec,
                                   n_blocks=n)
        self.head = nn.Conv2d(dec[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.decoder([x, *self.encoder.pyramid(x)]))
        return F.normalize(y, dim=1) if self.mode == "embed" else y

    def new_head(self, out_channels: int) -> "UNet":
        """Replace the head by a fresh logits head (segmentation from a dense pretraining:
        the decoder keeps its pretrained weights)."""
        self.head = nn.Conv2d(self.decoder_channels[-1], out_channels, kernel_size=3, padding=1)
        self.mode = "logits"
        return self

    def config(self) -> dict:
        """Plain description saved with checkpoints, enough to rebuild the decoder."""
        return {"decoder_channels": list(self.decoder_channels),
                "out_channels": int(self.head.out_channels)}
