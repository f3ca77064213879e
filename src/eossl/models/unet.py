"""U-Net whose encoder IS the eossl backbone: dense embeddings or segmentation logits per pixel.

The encoder is the same :class:`~eossl.models.backbones.Backbone` module every pretext method
trains (timm, any band count, ``stem_stride``), kept under the attribute ``backbone``; the
decoder is segmentation-models-pytorch's ``UnetDecoder`` fed with the backbone's multi-scale
maps (timm ``forward_intermediates``). We do not build ``smp.Unet(encoder_name="tu-...")``:
its encoder wraps timm under other parameter names (``encoder.model...``) and its own stride
bookkeeping, so an eossl checkpoint's ``backbone.*`` weights would need renaming and its
``stem_stride`` (no max-pool for small EO patches) would break smp's fixed stride-2 ladder.
Feeding smp's decoder directly keeps ``unet.backbone.state_dict()`` identical to a pretext
checkpoint's ``backbone.`` entries, so any eossl encoder drops in and a dense checkpoint's
encoder loads with :func:`eossl.methods.base.load_encoder` like every other method's.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from ..errors import ConfigError, DataError
from .backbones import Backbone, build_backbone

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def backbone_pyramid(backbone: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's feature maps at distinct resolutions, finest first.

    timm returns one map per stage; with ``stem_stride`` 2 the stem and the first stage share a
    resolution, and smp's decoder needs every skip one step coarser than the last, so only the
    deepest map of each resolution is kept.
    """
    model = backbone.model if isinstance(backbone, Backbone) else backbone
    if not hasattr(model, "forward_intermediates"):
        raise ConfigError(f"backbone {type(model).__name__}: no forward_intermediates in timm; "
                          "a U-Net needs a timm model with multi-scale features")
    maps = model.forward_intermediates(x, intermediates_only=True)
    out: list[torch.Tensor] = []
    for f in maps:
        if out and out[-1].shape[-2:] == f.shape[-2:]:
            out[-1] = f
        else:
            out.append(f)
    return out


def pyramid_channels(backbone: Backbone, in_chans: int, size: int = 64) -> list[int]:
    """Channel counts of :func:`backbone_pyramid`, found with one tiny forward pass."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        feats = backbone_pyramid(backbone, torch.zeros(1, in_chans, size, size))
    backbone.train(was_training)
    return [int(f.shape[1]) for f in feats]


class UNet(nn.Module):
    """Backbone encoder + smp U-Net decoder + a 3x3 conv head at input resolution.

    ``mode="embed"`` returns L2-normalised embeddings (N, out_channels, H, W) for dense
    contrastive pretraining; ``mode="logits"`` returns raw class scores for segmentation.
    Inputs are NORMALISED images; input sides must be multiples of the backbone's total stride.
    """

    def __init__(self, backbone: Backbone, out_channels: int, *, mode: str = "embed",
                 decoder_channels: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if mode not in ("embed", "logits"):
            raise ConfigError(f"U-Net mode must be 'embed' or 'logits', got {mode!r}")
        if out_channels < 1:
            raise ConfigError(f"U-Net out_channels must be >= 1, got {out_channels}")
        self.backbone, self.mode = backbone, mode
        enc_ch = pyramid_channels(backbone, backbone.in_chans)
        n = len(enc_ch)
        dec = tuple(decoder_channels or DEFAULT_DECODER_CHANNELS[:n])
        if len(dec) != n:
            raise ConfigError(f"decoder_channels {list(dec)} must have one entry per encoder "
                              f"scale ({n} for backbone {backbone.name!r})")
        self.decoder_channels = dec
        # smp's decoder drops its first feature (the full-resolution input, used for its size)
        self.decoder = UnetDecoder(encoder_channels=[backbone.in_chans, *enc_ch],
                                   decoder_channels=dec, n_blocks=n)
        self.head = nn.Conv2d(dec[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = backbone_pyramid(self.backbone, x)
        y = self.head(self.decoder([x, *feats]))
        return F.normalize(y, dim=1) if self.mode == "embed" else y

    def config(self) -> dict:
        """Plain description saved with checkpoints, enough to rebuild the decoder."""
        return {"decoder_channels": list(self.decoder_channels),
                "out_channels": int(self.head.out_channels)}


def load_unet(checkpoint_path: str | os.PathLike, num_classes: int | None = None,
              map_location: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Rebuild the U-Net of a ``dense`` checkpoint: backbone AND decoder weights.

    With ``num_classes`` the embedding head is replaced by a fresh segmentation head (the
    decoder keeps its pretrained weights), which is how segmentation fine-tunes from dense
    pretraining. Returns (unet, eossl metadata); the normaliser is rebuilt by the caller from
    the metadata's ``stats`` (or with :func:`eossl.methods.base.load_encoder`).
    """
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise DataError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"checkpoint {path!r} is corrupt or not a PyTorch checkpoint: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    meta = ckpt.get("eossl") if isinstance(ckpt, dict) else None
    if not meta or "unet" not in meta:
        raise DataError(f"checkpoint {path!r} holds no U-Net decoder (not a 'dense' "
                        "checkpoint); use its encoder with a fresh decoder instead")
    state = ckpt["state_dict"]
    bb = build_backbone(meta["backbone"], in_chans=len(meta["bands"]),
                        stem_stride=meta["stem_stride"], **meta.get("backbone_kwargs", {}))
    cfg = meta["unet"]
    unet = UNet(bb, cfg["out_channels"], mode="embed",
                decoder_channels=tuple(cfg["decoder_channels"]))
    try:
        for prefix, module in (("backbone.", unet.backbone), ("decoder.", unet.decoder),
                               ("head.", unet.head)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                    if k.startswith(prefix)})
    except RuntimeError as e:
        raise DataError(f"checkpoint {path!r}: U-Net weights do not match its metadata: "
                        f"{str(e).splitlines()[0]}") from None
    if num_classes is not None:
        unet.head = nn.Conv2d(unet.decoder_channels[-1], num_classes, kernel_size=3, padding=1)
        unet.mode = "logits"
    return unet, meta
