"""Per-pixel probe on the real scene: seeded bounded sampling inside the fold areas, exact pixel
gathering from tiles that stay inside their area, scores above chance, and a reference row of
the same architecture (a spectral stem's twin has a spectral stem)."""

import json

import numpy as np
import torch

from eossl.cli import main
from eossl.data.datasets import IGNORE_INDEX
from eossl.evaluate.folds import area_folds
from eossl.evaluate.pixel_probe import area_tiles, embed_pixels, sample_pixels
from eossl.models.backbones import at_points
from eossl.normalization import Normalizer


def test_sampling_is_bounded_seeded_and_inside_the_area(brandenburg):
    lm = brandenburg.label_map()
    fold = area_folds(brandenburg)[0]  # spatial k-fold blocks: fold 0's test blocks
    train, test = fold.train[0], fold.test[0]
    tiles = area_tiles(test, 32)
    assert tiles and all(test[r:r + 32, c:c + 32].all() for r, c in tiles)
    k, r, c, y = sample_pixels([lm], [tiles], 32, 50, seed=3)
    assert (k == 0).all() and test[r, c].all() and not train[r, c].any()
    assert (lm[r, c] == y).all() and (y != IGNORE_INDEX).all()
    counts = np.bincount(y)
    assert counts.max() <= 50 and (counts[counts > 0] >= 1).all()
    assert len(np.unique(y)) >= 6  # the real test blocks hold most OSM classes
    _, r2, c2, _ = sample_pixels([lm], [tiles], 32, 50, seed=3)
    assert (r2 == r).all() and (c2 == c).all()
    _, r3, _, _ = sample_pixels([lm], [tiles], 32, 50, seed=4)
    assert not np.array_equal(r3, r)


def test_tiles_gather_the_right_pixels(brandenburg):
    scene = brandenburg.scenes[0]
    norm = Normalizer(brandenburg.stats())
    mask = np.zeros((scene.height, scene.width), bool)
    mask[:, :200] = True  # an area narrower than a tile multiple: edge tiles shift inside
    tiles = area_tiles(mask, 64)
    rng = np.random.default_rng(0)
    rows, cc = rng.integers(0, scene.height, 300), rng.integers(0, 200, 300)
    emb = embed_pixels(lambda x, p: at_points(norm(x), p), scene.read, tiles, 64, rows, cc)
    full = norm(torch.from_numpy(scene.load()[None]))[0].numpy()
    np.testing.assert_allclose(emb, full[:, rows, cc].T, rtol=1e-5, atol=1e-5)


def test_a_spectral_stem_is_compared_with_a_random_spectral_stem(tiny_checkpoints,
                                                                 sample_cache, tmp_path):
    """The reference row of the pixel probe is the encoder's random twin: the same per-pixel
    spectral stem and ResNet, other weights (it once was a plain ResNet whose last map was
    upsampled from 1/16 resolution, which measured the architecture, not the pretraining)."""
    out = tmp_path / "pp"
    assert main(["--cache", str(sample_cache), "evaluate", "pixel-probe", "--checkpoint",
                 f"spectral={tiny_checkpoints['spectral']}", "--seeds", "0", "--per-class",
                 "30", "--test-per-class", "60", "--patch-size", "32", "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    rows = {r["model"]: r for r in records if r["table"] == "_model"}
    assert set(rows) == {"spectral", "random init"}
    twin, enc = rows["random init"], rows["spectral"]
    assert twin["role"] == "twin" and twin["signature"] == enc["signature"]
    assert "per-pixel spectral stem" in twin["architecture"] == enc["architecture"]
    scores = {r["model"]: r["value"] for r in records if r["metric"] == "balanced_accuracy"}
    assert set(scores) == {"spectral baseline", "spectral", "random init"}
    # 8 classes: chance balanced accuracy is 0.125; the spectrum alone is far above it
    assert scores["spectral baseline"] > 0.3, scores
    md = (out / "report.md").read_text()
    assert "**random init**: the random twin of spectral" in md
    assert (out / "report.html").stat().st_size > 1000
