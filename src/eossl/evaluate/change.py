"""Change detection downstream (OSCD-style): a Siamese U-Net on a FROZEN eossl encoder.

Both dates go through the same frozen encoder; at every scale the absolute difference of
their feature maps |f1 - f2| feeds segmentation-models-pytorch's U-Net decoder, which alone is
trained (the one fine-tuning loop, evaluate/finetune.py), with binary cross-entropy on the
change mask. Scores: precision, recall and F1 of the "change" class (torchmetrics). Data: the OSCD on-disk layout (read by torchgeo's OSCD class) or
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
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .base import Context, Evaluation, register_evaluation
from .finetune import ChangeNet, fit
from .metrics import change_metrics

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


# ------------------------------------------------------------------------ training data
class ChangeCrops(Dataset):
    """Random square crops of change pairs for training: ``{"image": before and after stacked
    on the channel axis (2C, s, s), "mask": (s, s)}``, mask -1 where a small pair was padded.
    ``length`` crops, drawn from ``seed`` (index-seeded, so the same epoch twice is the same)."""

    def __init__(self, pairs: Sequence[ChangePair], size: int, length: int, seed: int = 0
                 ) -> None:
        if not pairs:
            raise DataError("no training pair for change detection")
        self.pairs, self.size, self.length, self.seed = list(pairs), int(size), int(length), seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        p = self.pairs[int(torch.randint(0, len(self.pairs), (1,), generator=g))]
        h, w = p.mask.shape
        s = min(self.size, h, w)
        r = int(torch.randint(0, h - s + 1, (1,), generator=g))
        c = int(torch.randint(0, w - s + 1, (1,), generator=g))
        x = torch.cat([p.before, p.after])[:, r:r + s, c:c + s]
        y = p.mask[r:r + s, c:c + s]
        if s < self.size:  # small scenes: pad (mask padding is ignored by the loss)
            x = F.pad(x, (0, self.size - s, 0, self.size - s), mode="replicate")
            y = F.pad(y, (0, self.size - s, 0, self.size - s), value=-1)
        return {"image": x, "mask": y}


def pos_weight_of(pairs: Sequence[ChangePair]) -> float:
    """no-change / change pixel ratio, capped at 20: offsets how rare change is."""
    pos = sum(int(p.mask.sum()) for p in pairs)
    tot = sum(p.mask.numel() for p in pairs)
    return float(min(20.0, max(1.0, (tot - pos) / max(pos, 1))))


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@torch.no_grad()
def predict_change(net: nn.Module, pair: ChangePair) -> torch.Tensor:
    """Change probability (H, W) of a whole pair (padded to the network's stride)."""
    h, w = pair.mask.shape
    x = _pad_to(torch.cat([pair.before, pair.after])[None].float(), 32)
    return torch.sigmoid(net.eval()(x))[0, :h, :w]


def change_scores(net: nn.Module, pairs: Sequence[ChangePair], threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of the change class over all test pixels."""
    probs = torch.cat([predict_change(net, p).flatten() for p in pairs])
    masks = torch.cat([p.mask.flatten() for p in pairs])
    return change_metrics(probs, masks, threshold)


@register_evaluation("change", position=70)
class ChangeDetection(Evaluation):
    """A Siamese U-Net on the frozen encoder, |f1 - f2| per scale, decoder trained on the
    training pairs; precision, recall and F1 of change on the test pairs."""

    title = "Change detection"
    shown_metrics, finding_metrics = ("f1", "precision", "recall"), ("f1",)
    settings = dict(steps=200, patch_size=64, batch_size=8, lr=1e-3)
    in_benchmark = False
    description = ("{where}. Both dates go through the frozen encoder; the absolute difference "
                   "of their feature maps at every scale feeds a U-Net decoder trained for "
                   "{steps} AdamW steps of batch {batch_size} random {patch_size} px windows (lr {lr}, "
                   "warmup and cosine, flips and 90-degree rotations of both dates and the "
                   "mask together, BCE weighted by the no-change / change ratio); precision, "
                   "recall and F1 of change over every test pixel.")

    def protocol(self) -> str:
        return self.description.format(**self.params(),
                                       where=getattr(self, "_where", "Labelled change pairs"))

    def splits(self, ctx: Context) -> str:
        return self._data(ctx)[3]

    def pretraining_note(self, ctx: Context, encoder) -> str:
        return ""  # change pairs are not a labelled source pretraining could have seen

    def available(self, ctx: Context) -> str | None:
        if not (ctx.options.get("oscd") or ctx.options.get("pair")):
            return ("needs labelled change data (--oscd ROOT or --pair BEFORE AFTER MASK); the "
                    "sample data have none")
        return None

    def _data(self, ctx: Context):
        def build():
            if ctx.options.get("oscd"):
                root = ctx.options["oscd"]
                return (list(OSCD_BANDS), load_oscd(root, "train"), load_oscd(root, "test"),
                        f"OSCD at {root}, its train split trains, its test split scores")
            before, after, mask = ctx.options["pair"]
            pair = load_pair(before, after, mask)
            bands = ctx.options.get("bands") or []
            if len(bands) != pair.before.shape[0]:
                raise ConfigError(f"{before} holds {pair.before.shape[0]} bands but "
                                  f"{len(bands)} band names are known ({', '.join(bands)}); "
                                  "name them with --band-names")
            tr, te = split_pair(pair)
            return (list(bands), [tr], [te],
                    f"pair {before} / {after}: west 60% trains, east 40% scores")

        return ctx.cached(("change",), build)

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        from .classify import _accelerator

        bands, train, test, self._where = self._data(ctx)
        out = []
        for name, enc in encoders.items():
            net = ChangeNet(self.fed(name, enc, bands))
            fit(net, ChangeCrops(train, self.patch_size, self.steps * self.batch_size, seed),
                "change_bce", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                pos_weight=pos_weight_of(train), seed=seed, accelerator=_accelerator(ctx))
            scores = change_scores(net, test)
            out += self.rec(self.tables[0], name, seed, 0, "test pairs", 1.0, scores,
                            self.shown_metrics, change_share=scores["change_share"])
        return out


# ------------------------------------------------------------------------ qualitative map
@torch.no_grad()
def feature_change(encoder: nn.Module, before: torch.Tensor, after: torch.Tensor
                   ) -> torch.Tensor:
    """Label-free change magnitude (H, W): mean over scales of 1 - cosine similarity of the
    frozen features of the two dates, each scale upsampled to the input grid."""
    h, w = before.shape[-2:]
    encoder = encoder.eval()
    f1 = encoder.pyramid(_pad_to(before[None].float(), 32))
    f2 = encoder.pyramid(_pad_to(after[None].float(), 32))
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
    save_figure(fig, path)
    return {"date_a": str(ts.dates[i]), "date_b": str(ts.dates[j]), "path": str(path),
            "mean_change": float(change.mean()), "p95_change": float(np.percentile(change, 95))}
