"""Embedding Earth (Tarasiou & Zafeiriou 2022): dense contrastive pretraining of a U-Net.

Two views of one patch with a KNOWN geometric relation (integer-offset crops that overlap,
flips, 90-degree rotations) plus per-band jitter; the same ground pixel in both views is a
positive pair, every other sampled pixel (same image and other images) a negative; InfoNCE over
sampled pixel pairs, in the style of PixPro / DenseCL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..models.encoder import Encoder
from ..models.unet import UNet
from ..report import save_figure
from ..views import BandJitter
from . import register_method
from .base import PretextMethod, float32_loss


# ------------------------------------------------------------------------ geometry
# Views are cut and transformed with exact integer operations (slicing, torch.flip,
# torch.rot90) instead of kornia's RandomResizedCrop / warps: those resample by interpolation,
# so a view pixel would not be one source pixel and the correspondence would only be
# approximate. The functions below are the ground truth the loss relies on, and are tested on
# an image whose pixel values are their own coordinates.

@dataclass(frozen=True)
class ViewParams:
    """How one view was cut from a source crop: window corner, flips, then k x 90 degrees
    counter-clockwise (torch.rot90's direction), applied in that order."""

    top: int
    left: int
    hflip: bool
    vflip: bool
    k: int


def make_view(src: torch.Tensor, p: ViewParams, size: int) -> torch.Tensor:
    """Cut and transform one view (..., size, size) from a source (..., S, S)."""
    v = src[..., p.top:p.top + size, p.left:p.left + size]
    if v.shape[-2:] != (size, size):
        raise DataError(f"view window {p} of size {size} leaves the {tuple(src.shape[-2:])} "
                        "source crop")
    if p.hflip:
        v = torch.flip(v, dims=(-1,))
    if p.vflip:
        v = torch.flip(v, dims=(-2,))
    return torch.rot90(v, p.k % 4, dims=(-2, -1)) if p.k % 4 else v


def view_to_source(rows, cols, p: ViewParams, size: int):
    """Source-crop coordinates of view pixels (inverse of :func:`make_view`).

    Works on ints, numpy arrays or tensors. One counter-clockwise rot90 maps in[r, c] to
    out[size-1-c, r], so undoing it maps out (i, j) back to in (j, size-1-i).
    """
    r, c = rows, cols
    for _ in range(p.k % 4):
        r, c = c, size - 1 - r
    if p.vflip:
        r = size - 1 - r
    if p.hflip:
        c = size - 1 - c
    return r + p.top, c + p.left


def source_to_view(rows, cols, p: ViewParams, size: int):
    """View coordinates of source-crop pixels (forward map of :func:`make_view`)."""
    r, c = rows - p.top, cols - p.left
    if p.hflip:
        c = size - 1 - c
    if p.vflip:
        r = size - 1 - r
    for _ in range(p.k % 4):
        r, c = size - 1 - c, r
    return r, c


def random_view_params(rng: torch.Generator | None, source_size: int, size: int,
                       flips: bool = True, rot90: bool = True) -> ViewParams:
    def draw(n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=rng))

    return ViewParams(top=draw(source_size - size + 1), left=draw(source_size - size + 1),
                      hflip=bool(draw(2)) if flips else False,
                      vflip=bool(draw(2)) if flips else False, k=draw(4) if rot90 else 0)


def sample_correspondences(p1: ViewParams, p2: ViewParams, size: int, n: int,
                           generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` distinct ground pixels seen by both views, as flat pixel indices into
    view 1 and view 2 (equal length). Drawn uniformly from the windows' overlap."""
    r0, r1 = max(p1.top, p2.top), min(p1.top, p2.top) + size
    c0, c1 = max(p1.left, p2.left), min(p1.left, p2.left) + size
    if r1 <= r0 or c1 <= c0:
        raise DataError(f"views {p1} and {p2} of size {size} do not overlap")
    h, w = r1 - r0, c1 - c0
    pick = torch.randperm(h * w, generator=generator)[:n]
    rows, cols = pick // w + r0, pick % w + c0
    a = source_to_view(rows, cols, p1, size)
    b = source_to_view(rows, cols, p2, size)
    return a[0] * size + a[1], b[0] * size + b[1]


# ------------------------------------------------------------------------ loss
def dense_info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.1,
                   cross_negatives: int = 1024, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """InfoNCE over pixel pairs. ``q``, ``k``: (N, P, D) L2-normalised; (q[n, i], k[n, i]) is a
    positive pair. Negatives of q[n, i]: the other P-1 keys of image n, plus up to
    ``cross_negatives`` keys drawn from the OTHER images of the batch.

    A full (N*P) x (N*P) similarity would cost 4 GB at N=32, P=1024; the shared random pool of
    cross-image keys keeps other images' negatives at a fixed, configurable cost.
    """
    if q.shape != k.shape or q.ndim != 3:
        raise DataError(f"dense InfoNCE needs q and k of one shape (N, P, D), got "
                        f"{tuple(q.shape)} and {tuple(k.shape)}")
    n, p, _ = q.shape
    logits = torch.bmm(q, k.transpose(1, 2))  # (N, P, P), positives on the diagonal
    if cross_negatives > 0 and n > 1:
        m = min(cross_negatives, (n - 1) * p)
        flat = torch.randperm(n * p, generator=generator)[:m].to(q.device)
        pool, owner = k.reshape(n * p, -1)[flat], flat // p
        other = torch.einsum("npd,md->npm", q, pool)
        same = owner.view(1, 1, m) == torch.arange(n, device=q.device).view(n, 1, 1)
        other = other.masked_fill(same, float("-inf"))  # the pool may hold own-image keys
        logits = torch.cat([logits, other], dim=2)
    target = torch.arange(p, device=q.device).repeat(n)
    return F.cross_entropy(logits.reshape(n * p, -1) / temperature, target)


# ------------------------------------------------------------------------ data
class DenseCrops(Dataset):
    """Random source crops (view size + max shift) that remember their data source, so the
    method can draw its embedding picture of the scene at the end of training."""

    def __init__(self, crops, source) -> None:
        self.crops, self.source = crops, source

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict:
        return self.crops[i]


def _region_columns(region, width: int) -> tuple[int, int] | None:
    """``data.region``: None, 'west'/'train', 'east'/'test' (SpatialSplit blocks) or [c0, c1]."""
    from ..data.datasets import SpatialSplit

    if region in (None, "", "all"):
        return None
    if region in ("west", "train", "east", "test"):
        return SpatialSplit().columns("train" if region in ("west", "train") else "test", width)
    try:
        c0, c1 = (int(v) for v in region)
    except (TypeError, ValueError):
        raise ConfigError(f"data.region must be west, east, all or [col_start, col_end], got "
                          f"{region!r}") from None
    return c0, c1


# ------------------------------------------------------------------------ method
@register_method("dense")
class DenseContrast(PretextMethod):
    """Embedding Earth: per-pixel InfoNCE on a U-Net (backbone encoder + smp decoder).

    ``crop_size`` is the view side; source crops are ``crop_size + max_shift`` px, so two views
    overlap by at least ``1 - max_shift / crop_size`` per axis. Defaults follow the paper:
    128-d embeddings, up to 1024 pixel pairs per image, temperature 0.1.
    """

    def __init__(self, bands: list[str], stats: dict, *, embed_dim: int = 128,
                 num_pairs: int = 1024, temperature: float = 0.1, cross_negatives: int = 1024,
                 max_shift: int | None = None, flips: bool = True, rot90: bool = True,
                 jitter: dict | None = None, decoder_channels: list[int] | None = None,
                 map_at_end: bool = True, **kwargs) -> None:
        super().__init__(bands, stats, **kwargs)
        size = self.hparams.crop_size
        max_shift = size // 2 if max_shift is None else int(max_shift)
        if not 0 <= max_shift < size:
            raise ConfigError(f"dense: max_shift must be in [0, crop_size={size}) so the views "
                              f"overlap, got {max_shift}")
        if num_pairs < 1 or temperature <= 0 or cross_negatives < 0 or embed_dim < 1:
            raise ConfigError(f"dense: need num_pairs >= 1, temperature > 0, cross_negatives "
                              f">= 0, embed_dim >= 1; got {num_pairs}, {temperature}, "
                              f"{cross_negatives}, {embed_dim}")
        self.hparams.max_shift = max_shift
        unet = UNet(self.backbone, embed_dim, mode="embed",
                    decoder_channels=tuple(decoder_channels) if decoder_channels else None)
        # decoder and head sit on the method itself, so the checkpoint holds "backbone.*"
        # exactly once and its encoder loads as every other method's
        self.decoder, self.head = unet.decoder, unet.head
        self._unet_config = unet.config()
        self.jitter = BandJitter(**(jitter or {}))

    @classmethod
    def train_dataset(cls, source, data_cfg: dict):
        size = int(data_cfg["crop_size"])
        shift = data_cfg.get("max_shift")
        shift = size // 2 if shift is None else int(shift)
        width = source.scenes[0].width if hasattr(source, "scenes") else None
        region = _region_columns(data_cfg.get("region"), width) if width else None
        if not hasattr(source, "crops"):
            raise ConfigError(f"dense: data source {source.name!r} cannot give random crops")
        kw = {"region": region} if region else {}
        return DenseCrops(source.crops(size + shift, int(data_cfg["crops_per_epoch"]), **kw),
                          source)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised per-pixel embeddings (N, D, H, W) of a NORMALISED batch."""
        feats = self.backbone.pyramid(x)
        return F.normalize(self.head(self.decoder([x, *feats])), dim=1)

    def _views(self, x: torch.Tensor):
        hp = self.hparams
        size, src = hp.crop_size, x.shape[-1]
        if x.shape[-2] != src or src < size:
            raise DataError(f"dense: source crops must be square and >= {size} px, got "
                            f"{tuple(x.shape[-2:])}")
        shift = min(hp.max_shift, src - size)
        params, v1, v2 = [], [], []
        for img in x:
            # both windows inside one (size + shift) square: overlap >= size - shift per axis
            o_r = int(torch.randint(0, src - size - shift + 1, (1,)))
            o_c = int(torch.randint(0, src - size - shift + 1, (1,)))
            pair = []
            for _ in range(2):
                p = random_view_params(None, size + shift, size, hp.flips, hp.rot90)
                pair.append(ViewParams(p.top + o_r, p.left + o_c, p.hflip, p.vflip, p.k))
            params.append(pair)
            v1.append(make_view(img, pair[0], size))
            v2.append(make_view(img, pair[1], size))
        return params, self.jitter(torch.stack(v1)), self.jitter(torch.stack(v2))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        x = self.normalizer(batch["image"])
        params, v1, v2 = self._views(x)
        n, size = len(x), hp.crop_size
        z = self.embed(torch.cat([v1, v2]))  # one pass: both views share BatchNorm statistics
        z1, z2 = z[:n].flatten(2), z[n:].flatten(2)  # (N, D, H*W)
        idx = [sample_correspondences(a, b, size, hp.num_pairs) for a, b in params]
        p = min(len(i) for i, _ in idx)  # equal count per image for batched InfoNCE
        i1 = torch.stack([i[:p] for i, _ in idx]).to(x.device)
        i2 = torch.stack([j[:p] for _, j in idx]).to(x.device)
        q = torch.gather(z1, 2, i1.unsqueeze(1).expand(-1, z1.shape[1], -1)).transpose(1, 2)
        k = torch.gather(z2, 2, i2.unsqueeze(1).expand(-1, z2.shape[1], -1)).transpose(1, 2)
        # symmetric: each view queries the other
        # float32, outside autocast: per-pixel logits / temperature under bf16-mixed
        loss = 0.5 * (float32_loss(dense_info_nce, q, k, hp.temperature, hp.cross_negatives)
                      + float32_loss(dense_info_nce, k, q, hp.temperature, hp.cross_negatives))
        with torch.no_grad():
            pos = (q * k).sum(-1).mean()
            neg = torch.bmm(q, k.transpose(1, 2)).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/pos_cos", pos)
        self.log("train/neg_cos", neg)
        self.log_collapse(q.reshape(-1, q.shape[-1])[:4096])
        return loss

    # ---------------------------------------------------------------- kNN probe on pooled
    # backbone features comes from PretextMethod unchanged.

    def eossl_metadata(self) -> dict:
        meta = super().eossl_metadata()
        meta["unet"] = dict(self._unet_config)
        return meta

    def encoder(self) -> Encoder:
        """The encoder with its pretrained U-Net decoder (``Encoder.unet``)."""
        enc = super().encoder()
        enc.decoder_state = {f"{part}.{k}": v for part in ("decoder", "head")
                             for k, v in getattr(self, part).state_dict().items()}
        return enc

    def picture(self, source, path, *, max_side: int = 768, **_) -> str | None:
        """PCA of the pixel embeddings of the scene (central ``max_side`` px) beside true
        colour and the label map; None for a source without scenes."""
        if not getattr(source, "scenes", None):
            return None
        labels = source.label_map() if getattr(source, "polygons", None) else None
        was = self.training
        self.eval()
        try:
            write_embedding_map(lambda raw: self.embed(self.normalizer(raw)), source.scenes[0],
                                labels, path, device=self.device, max_side=max_side,
                                class_names=tuple(source.classes) if labels is not None
                                else None)
        finally:
            self.train(was)
        return "PCA of the U-Net's pixel embeddings"

    def on_train_end(self) -> None:
        """Write the embedding picture (PCA of pixel embeddings beside true colour and the OSM
        map) into the run folder, when the data source is a scene."""
        if not self.hparams.map_at_end or not self.trainer.is_global_zero:
            return
        ds = getattr(self.trainer.train_dataloader, "dataset", None)
        source = getattr(ds, "source", None)
        if source is None or not hasattr(source, "scenes"):
            return
        self.picture(source, Path(self.trainer.default_root_dir) / "embedding_pca.png",
                     max_side=2048)


# ------------------------------------------------------------------------ picture
@torch.no_grad()
def scene_embeddings(embed_fn, scene, tile: int = 256, multiple: int = 32,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Per-pixel embeddings (D, H, W) float16 of a whole scene, tile by tile (raw input).

    Tiles are padded by reflection up to a multiple of the network's total stride.
    """
    arr = scene.load() if hasattr(scene, "load") else np.asarray(scene)
    _, h, w = arr.shape
    out = None
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            a = arr[:, r:r + tile, c:c + tile]
            th, tw = a.shape[-2:]
            ph, pw = (-th) % multiple, (-tw) % multiple
            t = torch.from_numpy(np.ascontiguousarray(a)).float()[None]
            if ph or pw:
                t = F.pad(t, (0, pw, 0, ph), mode="reflect" if min(th, tw) > max(ph, pw)
                          else "replicate")
            z = embed_fn(t.to(device))[0, :, :th, :tw].float().cpu().numpy()
            if out is None:
                out = np.zeros((z.shape[0], h, w), dtype=np.float16)
            out[:, r:r + th, c:c + tw] = z
    return out


def pca_rgb(emb: np.ndarray, sample: int = 50_000, seed: int = 0) -> np.ndarray:
    """First three principal components of (D, H, W) embeddings as an (H, W, 3) image in
    [0, 1] (each component stretched between its 2nd and 98th percentile)."""
    d, h, w = emb.shape
    X = torch.from_numpy(emb.reshape(d, -1).T.astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    fit = X[torch.randperm(len(X), generator=g)[:sample]]
    mean = fit.mean(0, keepdim=True)
    _, _, V = torch.linalg.svd(fit - mean, full_matrices=False)
    pcs = ((X - mean) @ V[:3].T).numpy()
    lo, hi = np.percentile(pcs, 2, axis=0), np.percentile(pcs, 98, axis=0)
    return np.clip((pcs - lo) / np.maximum(hi - lo, 1e-8), 0, 1).reshape(h, w, 3)


def true_colour(scene) -> np.ndarray:
    """(H, W, 3) in [0, 1] from the scene's red, green, blue bands (B04, B03, B02), stretched
    between the 2nd and 98th percentile; falls back to the first three bands."""
    arr = scene.load()
    bands = list(getattr(scene, "bands", []))
    idx = [bands.index(b) for b in ("B04", "B03", "B02") if b in bands]
    if len(idx) < 3:
        idx = list(range(min(3, arr.shape[0]))) * (3 if arr.shape[0] < 3 else 1)
        idx = idx[:3]
    rgb = np.stack([arr[i] for i in idx], axis=-1).astype(np.float32)
    lo, hi = np.percentile(rgb, 2, axis=(0, 1)), np.percentile(rgb, 98, axis=(0, 1))
    return np.clip((rgb - lo) / np.maximum(hi - lo, 1e-8), 0, 1)


def write_embedding_map(embed_fn, scene, label_map: np.ndarray | None, path: str | Path,
                        device: torch.device | str = "cpu",
                        class_names: tuple[str, ...] | None = None,
                        max_side: int = 2048) -> Path:
    """True colour | PCA of pixel embeddings | OSM labels, side by side, as one PNG (atomic).

    Scenes larger than ``max_side`` px are drawn from their central ``max_side`` window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ..data.datasets import IGNORE_INDEX, OSM_CLASSES

    class_names = class_names or OSM_CLASSES
    h, w = scene.height, scene.width
    if max(h, w) > max_side:
        # a full Sentinel-2 tile (10980 px) would need ~30 GB of float16 embeddings: draw the
        # central max_side window instead
        r0, c0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        hh, ww = min(h, max_side), min(w, max_side)
        scene = _Window(scene.read((r0, c0, hh, ww)), list(scene.bands))
        if label_map is not None:
            label_map = label_map[r0:r0 + hh, c0:c0 + ww]
    emb = scene_embeddings(embed_fn, scene, device=device)
    panels = [("true colour (B04, B03, B02)", true_colour(scene)),
              ("pixel embeddings: PCA 1-3 as RGB", pca_rgb(emb))]
    ncol = 3 if label_map is not None else 2
    h, w = emb.shape[1:]
    fig, axes = plt.subplots(1, ncol, figsize=(4.2 * ncol * w / max(h, w) + 1, 4.6 * h / max(h, w)
                                               + 0.6), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    if label_map is not None:
        cmap = ListedColormap(plt.get_cmap("tab10").colors[:len(class_names)])
        lab = np.ma.masked_equal(label_map, IGNORE_INDEX)
        ax = axes[0][2]
        ax.set_facecolor("white")
        ax.imshow(lab, cmap=cmap, vmin=-0.5, vmax=len(class_names) - 0.5,
                  interpolation="nearest")
        ax.set_title("OSM land use (white: unlabelled)", fontsize=9)
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(class_names))]
        fig.legend(handles, class_names, loc="lower center", ncol=min(8, len(class_names)),
                   fontsize=7, frameon=False)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(rect=(0, 0.06 if label_map is not None else 0, 1, 1))
    return save_figure(fig, path)


@dataclass
class _Window:
    """An in-memory window of a scene, with the two things the picture needs."""

    array: np.ndarray
    bands: list[str]

    def load(self) -> np.ndarray:
        return self.array
