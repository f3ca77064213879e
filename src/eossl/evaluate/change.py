"""Change detection downstream (OSCD-style): a Siamese U-Net on a FROZEN eossl encoder.

Both dates go through the same frozen encoder; at every scale the absolute difference of
their feature maps |f1 - f2| feeds segmentation-models-pytorch's U-Net decoder, which alone is
trained, with binary cross-entropy on the change mask. Scores: precision, recall and F1 of the
"change" class (torchmetrics). Data: the OSCD on-disk layout (read by torchgeo's OSCD class) or
any pair of co-registered rasters + a mask. Without labels (the Landsat time series), a
label-free change picture: per-pixel feature distance between two dates a year apart.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn
from torchmetrics.classification import BinaryF1Score, BinaryPrecision, BinaryRecall

from ..errors import ConfigError, DataError
from ..models.unet import DEFAULT_DECODER_CHANNELS

OSCD_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
              "B11", "B12")


# ------------------------------------------------------------------------ data
@dataclass
class ChangePair:
    """Two co-registered acquisitions (C, H, W) raw float32 and a change mask (H, W) int64
    (1 = change, 0 = no change)."""

    name: str
    before: torch.Tensor
    after: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.before.shape != self.after.shape:
            raise DataError(f"change pair {self.name}: the two dates differ in shape, "
                            f"{tuple(self.before.shape)} vs {tuple(self.after.shape)}; they "
                            "must be co-registered on one grid")
        if tuple(self.mask.shape) != tuple(self.before.shape[-2:]):
            raise DataError(f"change pair {self.name}: mask {tuple(self.mask.shape)} does not "
                            f"match the images' grid {tuple(self.before.shape[-2:])}")


def load_oscd(root: str | Path, split: str, bands: Sequence[str] = OSCD_BANDS) -> list[ChangePair]:
    """OSCD regions of one split, read by torchgeo (``download=False``)."""
    from torchgeo.datasets import OSCD
    from torchgeo.datasets.errors import DatasetNotFoundError

    if split not in ("train", "test"):
        raise ConfigError(f"OSCD split must be train or test, got {split!r}")
    try:
        ds = OSCD(str(root), split=split, bands=tuple(bands), download=False)
    except DatasetNotFoundError:
        raise DataError(f"{root}: no OSCD data set there (expected 'Onera Satellite Change "
                        "Detection dataset - Images/' and '... - Train Labels/', "
                        "'... - Test Labels/')") from None
    if len(ds) == 0:
        raise DataError(f"{root}: the OSCD {split} split holds no region (no "
                        f"'... - {split.capitalize()} Labels/REGION/cm/cm.png')")
    pairs = []
    for i, files in enumerate(ds.files):
        n = len(files["images1"]), len(files["images2"])
        if n != (len(bands), len(bands)):
            raise DataError(f"OSCD region {files['region']}: {n[0]} / {n[1]} band files in "
                            f"imgs_1_rect / imgs_2_rect, expected {len(bands)}")
        try:
            s = ds[i]
        except (ValueError, RuntimeError) as e:  # np.stack of bands with different sizes
            raise DataError(f"OSCD region {files['region']}: {str(e).splitlines()[0]}") from None
        pairs.append(ChangePair(str(files["region"]), s["image"][0].float(),
                                s["image"][1].float(), s["mask"][0].long()))
    return pairs


def load_pair(before: str | Path, after: str | Path, mask: str | Path) -> ChangePair:
    """Two co-registered multi-band rasters and a single-band mask (0 / non-zero)."""
    import rasterio

    arrays = []
    for p in (before, after, mask):
        try:
            with rasterio.open(p) as src:
                arrays.append(src.read())
        except rasterio.errors.RasterioIOError as e:
            raise DataError(f"{p}: cannot read raster ({str(e).splitlines()[0]})") from None
    a, b, m = arrays
    if a.shape != b.shape:
        raise DataError(f"{after}: {b.shape[0]} bands x {b.shape[1]} x {b.shape[2]} px but "
                        f"{before} is {a.shape[0]} x {a.shape[1]} x {a.shape[2]}; the two dates "
                        "must share bands and grid")
    if m.shape[0] != 1:
        raise DataError(f"{mask}: a change mask has one band, found {m.shape[0]}")
    return ChangePair(Path(before).stem, torch.from_numpy(a.astype(np.float32)),
                      torch.from_numpy(b.astype(np.float32)),
                      torch.from_numpy((m[0] > 0).astype(np.int64)))


def split_pair(pair: ChangePair, train_fraction: float = 0.6, gap: int = 16
               ) -> tuple[ChangePair, ChangePair]:
    """West block for training, east block for testing (one scene, spatial split)."""
    w = pair.mask.shape[-1]
    b = int(round(w * train_fraction))
    if b < 8 or w - b - gap < 8:
        raise DataError(f"change pair {pair.name}: {w} px wide is too narrow to split into a "
                        "training and a test block")
    cut = lambda t, c0, c1: t[..., c0:c1]  # noqa: E731
    return (ChangePair(pair.name + ":west", cut(pair.before, 0, b), cut(pair.after, 0, b),
                       cut(pair.mask, 0, b)),
            ChangePair(pair.name + ":east", cut(pair.before, b + gap, w),
                       cut(pair.after, b + gap, w), cut(pair.mask, b + gap, w)))


# ------------------------------------------------------------------------ model
def _frozen_pyramid(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Multi-scale maps of a frozen Encoder for RAW input."""
    with torch.no_grad():
        return encoder.pyramid(x)


class SiameseDiffUNet(nn.Module):
    """Frozen encoder on both dates, |f1 - f2| per scale, trainable smp U-Net decoder -> one
    change logit per pixel."""

    def __init__(self, encoder: nn.Module, decoder_channels: Sequence[int] | None = None
                 ) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        n_bands = len(encoder.bands)
        probe = _frozen_pyramid(encoder, torch.zeros(1, n_bands, 64, 64))
        ch = [int(f.shape[1]) for f in probe]
        dec = tuple(decoder_channels or DEFAULT_DECODER_CHANNELS[:len(ch)])
        self.decoder = UnetDecoder(encoder_channels=[n_bands, *ch], decoder_channels=dec,
                                   n_blocks=len(ch))
        self.head = nn.Conv2d(dec[-1], 1, 3, padding=1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen, BatchNorm statistics included
        return self

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        f1 = _frozen_pyramid(self.encoder, before)
        f2 = _frozen_pyramid(self.encoder, after)
        diffs = [(a - b).abs() for a, b in zip(f1, f2)]
        return self.head(self.decoder([before, *diffs]))[:, 0]


# ------------------------------------------------------------------------ train / score
def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _random_crops(pairs: Sequence[ChangePair], size: int, n: int, g: torch.Generator):
    b, a, m = [], [], []
    for _ in range(n):
        p = pairs[int(torch.randint(0, len(pairs), (1,), generator=g))]
        h, w = p.mask.shape
        s = min(size, h, w)
        r = int(torch.randint(0, h - s + 1, (1,), generator=g))
        c = int(torch.randint(0, w - s + 1, (1,), generator=g))
        crop = lambda t: t[..., r:r + s, c:c + s]  # noqa: E731
        x1, x2, y = crop(p.before), crop(p.after), crop(p.mask)
        if s < size:  # small scenes: pad (mask padding counts as no change, ignored below)
            x1, x2 = (F.pad(t, (0, size - s, 0, size - s), mode="replicate") for t in (x1, x2))
            y = F.pad(y, (0, size - s, 0, size - s), value=-1)
        if torch.rand(1, generator=g) < 0.5:
            x1, x2, y = x1.flip(-1), x2.flip(-1), y.flip(-1)
        k = int(torch.randint(0, 4, (1,), generator=g))
        b.append(torch.rot90(x1, k, (-2, -1)))
        a.append(torch.rot90(x2, k, (-2, -1)))
        m.append(torch.rot90(y, k, (-2, -1)))
    return torch.stack(b), torch.stack(a), torch.stack(m)


def train_change(model: SiameseDiffUNet, pairs: Sequence[ChangePair], *, steps: int = 200,
                 crop: int = 64, batch_size: int = 8, lr: float = 1e-3,
                 pos_weight: float | None = None, seed: int = 0, device="cpu"
                 ) -> SiameseDiffUNet:
    """Train the decoder with BCE on random crops (flips, 90-degree rotations, both dates
    alike). ``pos_weight`` (default: no-change / change pixel ratio, capped at 20) offsets how
    rare change is (a few percent of OSCD pixels)."""
    if not pairs:
        raise DataError("no training pair for change detection")
    if crop % 32:
        raise ConfigError(f"change crop must be a multiple of 32 px, got {crop}")
    if pos_weight is None:
        pos = sum(int(p.mask.sum()) for p in pairs)
        tot = sum(p.mask.numel() for p in pairs)
        pos_weight = float(min(20.0, max(1.0, (tot - pos) / max(pos, 1))))
    g = torch.Generator().manual_seed(seed)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    pw = torch.tensor(pos_weight, device=device)
    for _ in range(steps):
        x1, x2, y = _random_crops(pairs, crop, batch_size, g)
        logit = model(x1.to(device), x2.to(device))
        y = y.to(device)
        valid = y >= 0
        loss = F.binary_cross_entropy_with_logits(logit[valid], y[valid].float(), pos_weight=pw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict_change(model: SiameseDiffUNet, pair: ChangePair, device="cpu") -> torch.Tensor:
    """Change probability (H, W) of a whole pair (padded to the network's stride)."""
    h, w = pair.mask.shape
    x1 = _pad_to(pair.before[None], 32).to(device)
    x2 = _pad_to(pair.after[None], 32).to(device)
    return torch.sigmoid(model(x1, x2))[0, :h, :w].cpu()


def change_scores(model: SiameseDiffUNet, pairs: Sequence[ChangePair], threshold: float = 0.5,
                  device="cpu") -> dict:
    """Precision, recall and F1 of the change class over all test pixels."""
    metrics = [BinaryPrecision(threshold), BinaryRecall(threshold), BinaryF1Score(threshold)]
    for p in pairs:
        prob = predict_change(model, p, device).flatten()
        for m in metrics:
            m.update(prob, p.mask.flatten())
    pos = sum(int(p.mask.sum()) for p in pairs)
    return {"precision": float(metrics[0].compute()), "recall": float(metrics[1].compute()),
            "f1": float(metrics[2].compute()), "change_share": pos / max(1, sum(
                p.mask.numel() for p in pairs))}


def evaluate_change(encoders: Mapping[str, nn.Module], train: Sequence[ChangePair],
                    test: Sequence[ChangePair], *, seeds: Sequence[int] = (0,),
                    steps: int = 200, crop: int = 64, batch_size: int = 8, lr: float = 1e-3,
                    device="cpu", log=None) -> list[dict]:
    records = []
    for name, enc in encoders.items():
        for seed in seeds:
            torch.manual_seed(seed)
            model = SiameseDiffUNet(enc)
            model = train_change(model, train, steps=steps, crop=crop, batch_size=batch_size,
                                 lr=lr, seed=seed, device=device)
            rec = {"model": name, "seed": int(seed), **change_scores(model, test, device=device)}
            records.append(rec)
            if log:
                log(f"{name:>14s} seed {seed}: precision {rec['precision']:.3f} recall "
                    f"{rec['recall']:.3f} F1 {rec['f1']:.3f}")
    return records


def change_table(records: Sequence[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in records))
    lines = ["| model | precision | recall | F1 (change) | seeds |", "|---|---|---|---|---|"]
    for m in models:
        rs = [r for r in records if r["model"] == m]
        cell = lambda k: (f"{np.mean([r[k] for r in rs]):.3f}"  # noqa: E731
                          + (f" ± {np.std([r[k] for r in rs], ddof=1):.3f}" if len(rs) > 1
                             else ""))
        lines.append(f"| {m} | {cell('precision')} | {cell('recall')} | {cell('f1')} | "
                     f"{len(rs)} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ qualitative map
@torch.no_grad()
def feature_change(encoder: nn.Module, before: torch.Tensor, after: torch.Tensor
                   ) -> torch.Tensor:
    """Label-free change magnitude (H, W): mean over scales of 1 - cosine similarity of the
    frozen features of the two dates, each scale upsampled to the input grid."""
    h, w = before.shape[-2:]
    f1 = _frozen_pyramid(encoder, _pad_to(before[None].float(), 32))
    f2 = _frozen_pyramid(encoder, _pad_to(after[None].float(), 32))
    size = (_pad_to(before[None], 32).shape[-2:])
    maps = []
    for a, b in zip(f1, f2):
        d = 1 - F.cosine_similarity(a, b, dim=1, eps=1e-6)[:, None]
        maps.append(F.interpolate(d, size=tuple(size), mode="bilinear", align_corners=False))
    return torch.cat(maps, 1).mean(1)[0, :h, :w]


def pick_dates_a_year_apart(ts, min_clear: float = 0.95, days: int = 365
                            ) -> tuple[int, int]:
    """The earliest clear acquisition that has a clear partner about ``days`` later, and that
    partner (the one nearest to +days, within 45 days)."""
    usable = ts.usable(min_clear)
    for i in usable:
        target = ts.dates[i] + _dt.timedelta(days=days)
        best = min((j for j in usable if j != i), default=None,
                   key=lambda j: abs((ts.dates[j] - target).days))
        if best is not None and abs((ts.dates[best] - target).days) <= 45:
            return i, best
    raise DataError(f"no two acquisitions with >= {min_clear:.0%} clear pixels lie about "
                    f"{days} days apart in {getattr(ts, 'root', 'the time series')}")


def write_landsat_change_map(encoder: nn.Module, ts, path: str | Path,
                             pair: tuple[int, int] | None = None) -> dict:
    """PNG: the two dates (false colour NIR/red/SWIR1 order as bands allow) and the feature
    change magnitude. No score: the sample has no change labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import save_figure

    i, j = pair or pick_dates_a_year_apart(ts)
    a, b = ts[i]["image"], ts[j]["image"]
    change = feature_change(encoder, a, b).numpy()

    def rgb(x: torch.Tensor) -> np.ndarray:
        arr = x.numpy()[: 3].transpose(1, 2, 0)[..., ::-1].astype(np.float32)  # SWIR, NIR, red
        lo, hi = np.percentile(arr, 2, axis=(0, 1)), np.percentile(arr, 98, axis=(0, 1))
        return np.clip((arr - lo) / np.maximum(hi - lo, 1e-6), 0, 1)

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(rgb(a))
    axes[0].set_title(f"{ts.dates[i]} (bands {', '.join(ts.band_names[:3][::-1])})", fontsize=9)
    axes[1].imshow(rgb(b))
    axes[1].set_title(f"{ts.dates[j]}", fontsize=9)
    im = axes[2].imshow(change, cmap="magma")
    axes[2].set_title("feature change (1 - cosine), no labels", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return {"date_a": str(ts.dates[i]), "date_b": str(ts.dates[j]), "path": str(path),
            "mean_change": float(change.mean()), "p95_change": float(np.percentile(change, 95))}
