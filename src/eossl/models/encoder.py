"""The encoder as every downstream task sees it: one interface for every kind of pretrained
network.

An :class:`Encoder` takes RAW values (N, C, H, W) in the band order of :attr:`Encoder.bands`
and normalises them itself, with the statistics it was pretrained with. It gives

- pooled embeddings (``forward``), every stage's feature map (``stage_features``), the maps a
  U-Net reads (``pyramid``) and one embedding per pixel (``pixel_features``);
- ``for_bands(data_bands)``: the same encoder fed from data with other bands (picked by name,
  a stand-in on another sensor, or filled with the band's training mean when the data lack it);
- ``random_twin(seed)``: the same architecture, stem, bands and normalisation with other
  (randomly initialised) weights: the reference every evaluation compares a pretrained encoder
  with, so that a difference is the pretraining's and not the architecture's;
- ``architecture()`` / ``describe()`` / ``signature()``: what it is, for reports.

Kinds: the plain encoder (backbone + normaliser; also the spectral-stem, colorization and dense
U-Net encoders, the last carrying its pretrained decoder), :class:`~eossl.models.bandwise.
BandwiseEncoder` (RS-BYOL's 1- or 3-channel backbone run on each band) and :class:`BandInput`
(any encoder fed from another band list). Every kind implements the whole interface, so no
caller needs to ask what it holds. Checkpoints are read in :mod:`eossl.checkpoint`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn

from ..bands import equivalent_bands
from ..errors import BandError, ConfigError, DataError
from ..normalization import BandStats, Normalizer
from .backbones import Backbone, _probe_channels, build_backbone

RANDOM_TWIN = "random init"
# metadata that describes a pretraining run rather than an architecture: a twin has none of it
_RUN_KEYS = ("collapse", "elapsed_s", "pretrain_data", "checkpoint")


class Encoder(nn.Module):
    """Backbone + normaliser (the plain kind). Subclasses change ``prepare`` (raw input ->
    what the backbone reads) and ``combine`` (backbone output -> the encoder's output)."""

    def __init__(self, backbone: Backbone, normalizer: Normalizer, name: str = "encoder",
                 metadata: dict | None = None, decoder_state: dict | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalizer = normalizer
        self.name = name
        self.metadata = dict(metadata or {})
        # A dense checkpoint's pretrained U-Net decoder and head (plain tensors, not
        # parameters: a classifier built on this encoder must not carry them).
        self.decoder_state = decoder_state

    # ------------------------------------------------------------------ what it reads
    @property
    def bands(self) -> list[str]:
        """Names of the input channels, in order."""
        return list(self.normalizer.bands)

    @property
    def wanted_bands(self) -> list[str]:
        """The bands this encoder reads when the data have them (for choosing what to load)."""
        return self.bands

    @property
    def stats(self) -> BandStats:
        """The pretraining statistics it normalises with."""
        return self.normalizer.stats

    @property
    def out_dim(self) -> int:
        return self.backbone.out_dim

    @property
    def is_random_twin(self) -> bool:
        return bool(self.metadata.get("random_twin"))

    @property
    def collapse(self) -> dict | None:
        """The pretraining's collapse-monitor verdict (``{"collapsed": bool, ...}``), if any."""
        return self.metadata.get("collapse")

    @property
    def collapsed(self) -> bool:
        return bool((self.collapse or {}).get("collapsed"))

    # ------------------------------------------------------------------ the two hooks
    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw (N, C, H, W) in ``bands`` order -> the backbone's input."""
        return self.normalizer(raw)

    def combine(self, out: torch.Tensor, n: int) -> torch.Tensor:
        """The backbone's output for a prepared batch -> the encoder's output for ``n`` images."""
        return out

    # ------------------------------------------------------------------ features
    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings (N, out_dim)."""
        return self.combine(self.backbone(self.prepare(raw)), raw.shape[0])

    def forward_features(self, raw: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling (N, D, h, w)."""
        return self.combine(self.backbone.forward_features(self.prepare(raw)), raw.shape[0])

    def stage_features(self, raw: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's feature map (N, C_i, h_i, w_i), finest first."""
        return [self.combine(f, raw.shape[0])
                for f in self.backbone.stage_features(self.prepare(raw))]

    def pyramid(self, raw: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at distinct resolutions, finest first (a U-Net decoder's input)."""
        return [self.combine(f, raw.shape[0]) for f in self.backbone.pyramid(self.prepare(raw))]

    def pixel_features(self, raw: torch.Tensor, points: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """One embedding per pixel (N, D, H, W): a spectral stem's own, otherwise the last
        feature map upsampled to the input size; with ``points`` (N, M, 2 row, col) only those
        pixels, (N, D, M)."""
        x = self.prepare(raw)
        if points is not None:  # a band-wise encoder runs each image as several inputs
            points = points.repeat_interleave(x.shape[0] // raw.shape[0], dim=0)
        return self.combine(self.backbone.pixel_features(x, points), raw.shape[0])

    def pyramid_channels(self, size: int = 64) -> list[int]:
        return _probe_channels(self, self.pyramid, self._zeros(size))

    def stage_channels(self, size: int = 64) -> list[int]:
        return _probe_channels(self, self.stage_features, self._zeros(size))

    def _zeros(self, size: int) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.zeros(1, len(self.bands), size, size, device=device)

    # ------------------------------------------------------------------ variants
    def for_bands(self, data_bands: Sequence[str]) -> "Encoder":
        """This encoder fed from data whose channels are ``data_bands`` (itself when they are
        its own bands): each band it needs is picked by name, or its stand-in on another
        sensor, or (when the data lack it) filled with its training mean."""
        data_bands = list(data_bands)
        if data_bands == self.bands:
            return self
        return BandInput(self, data_bands)

    def random_twin(self, seed: int = 0) -> "Encoder":
        """The same architecture, stem, bands and normalisation with weights drawn from
        ``seed``: what the encoder was before pretraining (up to the draw)."""
        twin = self._with_backbone(self.backbone.fresh(seed))
        twin.name = RANDOM_TWIN
        meta = {k: v for k, v in self.metadata.items() if k not in _RUN_KEYS}
        twin.metadata = {**meta, "random_twin": {"of": self.name, "seed": int(seed)}}
        twin.decoder_state = None  # a dense twin gets a fresh decoder too
        return twin.train(self.training)

    def _with_backbone(self, backbone: Backbone) -> "Encoder":
        """A copy of this encoder around another backbone of the same architecture."""
        return Encoder(backbone, copy.deepcopy(self.normalizer), self.name, self.metadata,
                       self.decoder_state)

    def unet(self, num_classes: int | None = None):
        """A U-Net on this encoder (shared, not copied): with ``num_classes``, segmentation
        logits from a new head; without, the pretrained dense U-Net (embeddings). A dense
        checkpoint's decoder weights are loaded; any other encoder gets a fresh decoder."""
        from .unet import UNet

        cfg = self.metadata.get("unet") or {}
        if num_classes is None and not self.decoder_state:
            raise ConfigError(f"encoder {self.name!r} holds no pretrained U-Net decoder (not a "
                              "'dense' checkpoint); give a number of classes for a fresh one")
        out = num_classes if num_classes is not None else int(cfg["out_channels"])
        net = UNet(self, out, mode="embed" if num_classes is None else "logits",
                   decoder_channels=tuple(cfg["decoder_channels"]) if cfg else None)
        if self.decoder_state:
            parts = [("decoder.", net.decoder)] + ([("head.", net.head)] if num_classes is None
                                                   else [])
            try:
                for prefix, module in parts:
                    module.load_state_dict({k[len(prefix):]: v for k, v in
                                            self.decoder_state.items() if k.startswith(prefix)})
            except RuntimeError as e:
                raise DataError(f"encoder {self.name!r}: its U-Net decoder weights do not fit "
                                f"its metadata: {str(e).splitlines()[0]}") from None
        return net

    # ------------------------------------------------------------------ description
    def architecture(self) -> dict:
        """What fixes the network's function up to its weights, as plain data."""
        return {"type": "plain", **self.backbone.spec(), "pixel_stem":
                self.backbone.has_pixel_stem, "inputs": self.bands}

    def describe(self) -> str:
        """One line for a report's protocol section: architecture and inputs."""
        bb = self.backbone
        stem = " with a per-pixel spectral stem" if bb.has_pixel_stem else ""
        return (f"{bb.name}{stem} (stem stride {bb.stem_stride}, {_millions(self)} weights) on "
                f"{len(self.bands)} bands ({', '.join(self.bands)}), each standardised with "
                "its pretraining statistics")

    def signature(self) -> str:
        """A short hash of architecture, inputs and normalisation: equal for two encoders that
        differ in their weights only (an encoder and its random twin)."""
        data = {"architecture": self.architecture(), "stats": self.stats.to_dict()}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(cls, stats: BandStats | dict, backbone: str = "resnet18", stem_stride: int = 2,
               seed: int = 0, name: str = "encoder") -> "Encoder":
        """A plain encoder of ``stats``' bands with weights drawn from ``seed`` (an
        un-pretrained member, e.g. the RGB classifier of the colorization ensemble)."""
        normalizer = Normalizer(stats)
        bb = build_backbone(backbone, in_chans=len(normalizer.bands), stem_stride=stem_stride)
        return cls(bb.fresh(seed), normalizer, name=name)

    @classmethod
    def from_state(cls, meta: dict, state: dict) -> "Encoder":
        """Rebuild from a checkpoint's eossl metadata and state dict (eossl.checkpoint)."""
        backbone = build_backbone(meta["backbone"],
                                  in_chans=int(meta.get("in_chans", len(meta["bands"]))),
                                  stem_stride=meta["stem_stride"],
                                  **meta.get("backbone_kwargs", {}))
        normalizer = Normalizer(meta["stats"])
        for prefix, module in (("backbone.", backbone), ("normalizer.", normalizer)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                    if k.startswith(prefix)})
        decoder = ({k: v for k, v in state.items() if k.startswith(("decoder.", "head."))}
                   if meta.get("unet") else None)
        return cls(backbone, normalizer, name=meta.get("method", "encoder"), metadata=meta,
                   decoder_state=decoder)


def _millions(module: nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.1f} M"


class BandInput(Encoder):
    """An encoder fed from data with another band list: each band the encoder needs is taken
    by name, else by its stand-in on another sensor (bands.equivalent_bands: Landsat b3 for
    Sentinel-2 B04), else filled with the raw value its normaliser maps to 0 (its training
    mean: "no information"). ``stand_ins`` and ``filled`` say which; reports print them.

    Several methods train on a subset (colorization hides R, G, B), on another sensor (SeCo on
    Landsat) or on bands an evaluation's data lack (B10 in L2A): the adapter, not the data,
    adapts. Everything else is the wrapped encoder's.
    """

    def __init__(self, inner: Encoder, data_bands: Sequence[str]) -> None:
        nn.Module.__init__(self)
        self.inner = inner
        self.data_bands = list(data_bands)
        src, self.filled, self.stand_ins = [], [], {}
        for b in inner.bands:
            try:
                (found,) = equivalent_bands([b], self.data_bands)
            except BandError:
                src.append(-1)
                self.filled.append(b)
                continue
            src.append(self.data_bands.index(found))
            if found != b:
                self.stand_ins[b] = found
        if len(self.filled) == len(src):
            raise BandError(f"none of the bands of encoder {inner.name!r} "
                            f"({', '.join(inner.bands)}) is in the data (bands: "
                            f"{', '.join(self.data_bands)})")
        fill = inner.stats.raw_mean()
        self.register_buffer("src", torch.as_tensor(src), persistent=False)
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32), persistent=False)

    # the wrapped encoder's identity
    backbone = property(lambda self: self.inner.backbone)
    normalizer = property(lambda self: self.inner.normalizer)
    name = property(lambda self: self.inner.name)
    metadata = property(lambda self: self.inner.metadata)
    decoder_state = property(lambda self: self.inner.decoder_state)

    @property
    def bands(self) -> list[str]:
        return list(self.data_bands)

    @property
    def wanted_bands(self) -> list[str]:
        return self.inner.wanted_bands

    @property
    def stats(self) -> BandStats:
        return self.inner.stats

    @property
    def out_dim(self) -> int:
        return self.inner.out_dim

    def adapt(self, raw: torch.Tensor) -> torch.Tensor:
        """Data channels -> the wrapped encoder's channels."""
        if raw.ndim != 4 or raw.shape[1] != len(self.data_bands):
            raise DataError(f"encoder {self.name!r} fed from bands {', '.join(self.data_bands)}"
                            f" expects (N, {len(self.data_bands)}, H, W), got {tuple(raw.shape)}")
        if not self.filled:
            return raw.index_select(1, self.src)
        n, _, h, w = raw.shape
        out = self.fill.to(raw.dtype).view(1, -1, 1, 1).expand(n, -1, h, w).clone()
        have = (self.src >= 0).nonzero().flatten()
        out[:, have] = raw.index_select(1, self.src[have])
        return out

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        return self.inner.prepare(self.adapt(raw))

    def combine(self, out: torch.Tensor, n: int) -> torch.Tensor:
        return self.inner.combine(out, n)

    def for_bands(self, data_bands: Sequence[str]) -> Encoder:
        return self.inner.for_bands(data_bands)

    def random_twin(self, seed: int = 0) -> Encoder:
        return BandInput(self.inner.random_twin(seed), self.data_bands).train(self.training)

    def architecture(self) -> dict:
        return {**self.inner.architecture(), "fed_from": self.data_bands,
                "stand_ins": dict(self.stand_ins), "filled": list(self.filled)}

    def describe(self) -> str:
        parts = []
        if self.stand_ins:
            parts.append("stand-ins " + ", ".join(f"{d} for {b}" for b, d in
                                                  self.stand_ins.items()))
        if self.filled:
            parts.append("filled with its training mean: " + ", ".join(self.filled))
        note = f" ({'; '.join(parts)})" if parts else ""
        return f"{self.inner.describe()}; read from the data's bands by name{note}"
