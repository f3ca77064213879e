"""Colorization pretraining (Vincenzi et al. 2020, "The color out of space").

The encoder sees every band except the visible ones and must paint their colour: the a, b
channels of CIE-Lab computed from the quantile-clipped red, green and blue bands. Lightness L
never enters the network (it is only used to re-assemble a colour picture), and the decoder
has no skip connections, so the colour must be carried by the global code that downstream
tasks keep. Which bands are visible is decided by the band registry's roles, never by index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..bands import find_sensor
from ..errors import BandError, ConfigError
from ..models.backbones import build_backbone
from ..models.decoders import ColorizationDecoder, backbone_reduction
from ..normalization import BandStats, Normalizer
from ..report import save_figure
from . import register_method
from .base import PretextMethod

__all__ = ["Colorization", "split_bands", "ab_target", "lab_to_rgb", "AlignedAugmentation",
           "colorization_loss", "colorization_figure", "HIDDEN_ROLES", "AB_OFFSET", "AB_SCALE"]

# Roles hidden from the encoder. The panchromatic band (Landsat 7/8) integrates the visible
# range, so seeing it would leak the lightness and much of the colour the task asks for.
HIDDEN_ROLES = ("red", "green", "blue", "pan")
# Lab a, b of sRGB colours lie within about [-128, 127]; (ab + 128) / 255 maps them to [0, 1],
# the range of the decoder's sigmoid.
AB_OFFSET, AB_SCALE = 128.0, 255.0
PICTURE_NAME = "colorization.png"


def split_bands(bands: Sequence[str]) -> tuple[list[str], list[str]]:
    """(encoder input bands, [red, green, blue]) for a band list, from the registry's roles.

    Raises ConfigError when the data lack a red, green or blue band (nothing to colour) or
    hold nothing but visible bands (nothing to colour from).
    """
    bands = list(bands)
    sensor = find_sensor(bands)
    if sensor is None:
        raise BandError(f"colorization: bands {', '.join(bands)} do not all belong to one "
                        "registered sensor, so their roles (which are visible) are unknown")
    roles = {b: sensor.band(b).role for b in bands}
    rgb = []
    for role in ("red", "green", "blue"):
        named = [b for b in bands if roles[b] == role]
        if not named:
            raise ConfigError(f"colorization needs the visible red, green and blue bands as its "
                              f"target, but the data ({sensor.name}: {', '.join(bands)}) have "
                              f"no {role} band; add it with --bands, or choose another method")
        rgb.append(named[0])
    inputs = [b for b in bands if roles[b] not in HIDDEN_ROLES]
    if not inputs:
        raise ConfigError(f"colorization needs non-visible bands as its input, but the data "
                          f"({', '.join(bands)}) hold only visible bands; add NIR/SWIR/red-edge "
                          "bands with --bands, or choose another method")
    return inputs, rgb


def ab_target(rgb_raw: torch.Tensor, q_lo: torch.Tensor, q_hi: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (N, 3, H, W) red, green, blue -> (L in [0, 100], a/b scaled to [0, 1]).

    Each band is clipped to its 2%-98% quantiles and scaled to [0, 1] (the paper's display
    stretch), then converted by kornia's sRGB -> CIE-Lab.
    """
    q_lo, q_hi = q_lo.view(1, 3, 1, 1), q_hi.view(1, 3, 1, 1)
    rgb = ((rgb_raw.float() - q_lo) / (q_hi - q_lo).clamp_min(1e-6)).clamp(0.0, 1.0)
    lab = kornia.color.rgb_to_lab(rgb)
    ab = ((lab[:, 1:] + AB_OFFSET) / AB_SCALE).clamp(0.0, 1.0)
    return lab[:, :1], ab


def lab_to_rgb(lightness: torch.Tensor, ab01: torch.Tensor) -> torch.Tensor:
    """True L (N, 1, H, W) + scaled a, b (N, 2, H, W) -> RGB in [0, 1] for display."""
    lab = torch.cat([lightness, ab01 * AB_SCALE - AB_OFFSET], dim=1)
    return kornia.color.lab_to_rgb(lab, clip=True)


class AlignedAugmentation(nn.Module):
    """The paper's augmentation, drawn per sample and applied to the whole band stack before
    the split, so input bands and colour target stay aligned: one of {rotation by an angle in
    [-15, 15) degrees, vertical flip, horizontal flip, none}, each with probability 1/4.

    Rotation uses kornia with reflection padding (our choice): zero-filled corners would be
    black target colours and zero reflectance, which the log normalisation turns into extreme
    inputs.
    """

    def __init__(self, max_degrees: float = 15.0) -> None:
        super().__init__()
        self.max_degrees = max_degrees

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        op = torch.randint(0, 4, (n,), device=x.device)
        out = x.clone()
        rot = op == 0
        if rot.any():
            angle = (torch.rand(int(rot.sum()), device=x.device) * 2 - 1) * self.max_degrees
            out[rot] = kornia.geometry.transform.rotate(x[rot], angle, padding_mode="reflection")
        out[op == 1] = torch.flip(x[op == 1], dims=[-2])
        out[op == 2] = torch.flip(x[op == 2], dims=[-1])
        return out


def colorization_loss(pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 10.0,
                      gradient_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """``l1_weight * L1 + gradient_weight * (MSE(Sobel-x) + MSE(Sobel-y))`` of prediction vs
    target (paper: 10 and, optionally, 0.01). Returns the total and its parts for logging."""
    l1 = F.l1_loss(pred, target)
    parts = {"l1": l1}
    total = l1_weight * l1
    if gradient_weight:
        # spatial_gradient with mode="sobel" gives Sobel-x and Sobel-y separately (N, C, 2, H, W);
        # kornia.filters.sobel would only give their magnitude.
        gp = kornia.filters.spatial_gradient(pred, mode="sobel")
        gt = kornia.filters.spatial_gradient(target, mode="sobel")
        grad = F.mse_loss(gp[:, :, 0], gt[:, :, 0]) + F.mse_loss(gp[:, :, 1], gt[:, :, 1])
        parts["gradient"] = grad
        total = total + gradient_weight * grad
    return total, parts


@register_method("colorization")
class Colorization(PretextMethod):
    """Colorization: non-visible bands -> Lab a,b of the visible ones (Vincenzi et al. 2020).

    The backbone (and the checkpoint's band metadata) covers only the encoder's input bands, so
    ``eossl.checkpoint.load_encoder`` gives an encoder of those bands; evaluations feed it from
    full-band data by name. Paper defaults: ResNet-18, dropout 0.3 on the code, SGD lr 0.01 momentum 0.9 with a
    x0.1 step at 80% of training (epoch 40 of 50): ``lr_schedule="step"``.
    """

    def __init__(self, bands: list[str], stats: dict | BandStats, *, l1_weight: float = 10.0,
                 gradient_weight: float = 0.0, dropout: float = 0.3,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32), decoder_blocks: int = 2,
                 augment: bool = True, lr_schedule: str = "cosine", step_at: float = 0.8,
                 step_gamma: float = 0.1, picture_patches: int = 6, **kwargs) -> None:
        input_bands, rgb_bands = split_bands(bands)  # fail before building anything
        kwargs.setdefault("lr", 0.01)
        super().__init__(bands, stats, **kwargs)
        if lr_schedule not in ("cosine", "step"):
            raise ConfigError(f"colorization: lr_schedule must be 'cosine' or 'step', got "
                              f"{lr_schedule!r}")
        if l1_weight < 0 or gradient_weight < 0:
            raise ConfigError(f"colorization: loss weights must be >= 0, got l1_weight="
                              f"{l1_weight}, gradient_weight={gradient_weight}")
        if not 0 < step_at < 1:
            raise ConfigError(f"colorization: step_at must be in (0, 1), got {step_at}")
        self.hparams.decoder_channels = [int(c) for c in decoder_channels]
        full = self.normalizer.stats  # all data bands, as the base class built it
        self.input_bands, self.rgb_bands = input_bands, rgb_bands
        # The encoder sees only the input bands: its normaliser and first convolution are built
        # for them, and the checkpoint metadata (from self.normalizer) says so.
        self.normalizer = Normalizer(full.subset(input_bands))
        hp = self.hparams
        self.backbone = build_backbone(hp.backbone, in_chans=len(input_bands),
                                       stem_stride=hp.stem_stride, **(hp.backbone_kwargs or {}))
        rgb_stats = full.subset(rgb_bands)
        self.register_buffer("in_idx", torch.as_tensor([full.bands.index(b)
                                                        for b in input_bands]), persistent=False)
        self.register_buffer("rgb_idx", torch.as_tensor([full.bands.index(b)
                                                         for b in rgb_bands]), persistent=False)
        self.register_buffer("q_lo", torch.tensor(rgb_stats.q02, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("q_hi", torch.tensor(rgb_stats.q98, dtype=torch.float32),
                             persistent=False)
        reduction = backbone_reduction(self.backbone, len(input_bands))
        self.decoder = ColorizationDecoder(self.backbone.out_dim, hp.crop_size, reduction,
                                           channels=decoder_channels,
                                           blocks_per_stage=decoder_blocks, dropout=dropout)
        self.augment = AlignedAugmentation() if augment else nn.Identity()

    # ---------------------------------------------------------------- schedule
    def lr_factor(self) -> float:
        if self.hparams.lr_schedule == "step" and self.has_budget():
            return self.hparams.step_gamma if self.progress() >= self.hparams.step_at else 1.0
        return super().lr_factor()

    # ---------------------------------------------------------------- the task
    def split(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw full-band batch -> (normalised encoder input, L, a/b target in [0, 1])."""
        x = self.normalizer(raw.index_select(1, self.in_idx))
        lightness, ab = ab_target(raw.index_select(1, self.rgb_idx), self.q_lo, self.q_hi)
        return x, lightness, ab

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw full-band batch -> predicted a/b in [0, 1], (N, 2, H, W)."""
        x = self.normalizer(raw.index_select(1, self.in_idx))
        return self.decoder(self.backbone(x), size=tuple(x.shape[-2:]))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        raw = self.augment(batch["image"].float())
        x, _, target = self.split(raw)
        code = self.backbone(x)
        pred = self.decoder(code, size=tuple(x.shape[-2:]))
        loss, parts = colorization_loss(pred, target, self.hparams.l1_weight,
                                        self.hparams.gradient_weight)
        self.log("train/loss", loss, prog_bar=True)
        for k, v in parts.items():
            self.log(f"train/{k}", v)
        self.log_collapse(code)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        # The kNN probe's patches carry every band; the encoder takes its input bands only.
        batch = dict(batch, image=batch["image"].index_select(1, self.in_idx.to(
            batch["image"].device)))
        super().validation_step(batch, batch_idx, dataloader_idx)

    # ---------------------------------------------------------------- the picture
    @torch.no_grad()
    def colorize(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """True and predicted colour of raw full-band patches (eval mode, no augmentation):
        ``rgb_true`` (clipped RGB), ``rgb_pred`` (true L + predicted a,b), ``delta_e``
        (per-pixel a,b error in Lab units), all (N, ., H, W) on the CPU."""
        was_training = self.training
        self.eval()
        try:
            raw = raw.float().to(self.q_lo.device)
            _, lightness, ab = self.split(raw)
            pred = self(raw)
        finally:
            self.train(was_training)
        true_rgb = lab_to_rgb(lightness, ab)
        pred_rgb = lab_to_rgb(lightness, pred)
        delta_e = ((pred - ab) * AB_SCALE).norm(dim=1, keepdim=True)
        return {"rgb_true": true_rgb.cpu(), "rgb_pred": pred_rgb.cpu(), "delta_e": delta_e.cpu()}

    def on_train_end(self) -> None:
        """Write the predicted-vs-true colour picture into the run folder."""
        trainer = self.trainer
        if not trainer.is_global_zero or self.hparams.picture_patches < 1:
            return
        try:
            batch = next(iter(trainer.train_dataloader))
            raw = batch["image"][: self.hparams.picture_patches]
            path = Path(trainer.default_root_dir) / PICTURE_NAME
            colorization_figure(self.colorize(raw), path,
                                title=f"colorization after {trainer.global_step} steps "
                                      f"(input: {', '.join(self.input_bands)})")
        except Exception as e:  # a picture must never cost a finished training run
            rank_zero_warn(f"colorization picture not written: {type(e).__name__}: {e}")

    def picture(self, source, path: str | os.PathLike, *, seed: int = 0, patches: int = 4,
                area=None, **_) -> str:
        """Predicted vs true colour of ``patches`` crops of ``source``'s scenes at the
        training crop size, wholly inside ``area`` (one mask per scene, e.g. a fold's test
        area; None: anywhere); returns a caption."""
        from ..data.datasets import RandomCropDataset

        size = int(self.hparams.crop_size)
        crops = RandomCropDataset(source.scenes, size, patches, seed=seed, allowed=area)
        raw = torch.stack([crops[i]["image"] for i in range(patches)])
        colorization_figure(self.colorize(raw), path, title=f"colorization: {patches} {size} px "
                            f"patches (input: {', '.join(self.input_bands)})")
        return f"predicted vs true colour on {patches} {size} px patches"


def colorization_figure(result: dict[str, torch.Tensor], path: str | os.PathLike,
                        title: str = "colorization") -> Path:
    """One row per patch: true RGB | predicted colour (true L + predicted a,b) | a,b error.

    Written atomically (temporary file + rename) as a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result["rgb_true"].shape[0]
    vmax = max(float(result["delta_e"].max()), 1.0)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.4 * n + 0.6), squeeze=False,
                             layout="constrained")
    for i in range(n):
        err = result["delta_e"][i, 0]
        panels = [(result["rgb_true"][i].permute(1, 2, 0).numpy(), "true RGB (2-98% clip)"),
                  (result["rgb_pred"][i].permute(1, 2, 0).numpy(), "true L + predicted a,b"),
                  (err.numpy(), f"a,b error (mean {float(err.mean()):.1f})")]
        for j, (img, label) in enumerate(panels):
            ax = axes[i, j]
            if j == 2:
                im = ax.imshow(img, cmap="magma", vmin=0, vmax=vmax)
            else:
                ax.imshow(img.clip(0, 1), interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.6, label="Lab a,b distance")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
