"""Segmentation downstream on the REAL scene's OSM label map: whole-tile label fractions, a
tiny fine-tune and linear probe, mIoU bookkeeping, and clear errors on bad label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eossl.data.datasets import OSM_CLASSES, DenseLabelTiles, SpatialSplit
from eossl.errors import ConfigError, DataError
from eossl.evaluate.base import Context
from eossl.evaluate.metrics import iou_scores
from eossl.evaluate.segment import Segmentation


def test_fractions_are_whole_seeded_tiles(brandenburg):
    scene, labels = brandenburg.scenes[0], brandenburg.label_map()
    tiles = DenseLabelTiles(scene, labels, split="train", size=32, min_labelled=1e-9)
    counts = tiles.labelled_counts()
    total = counts.sum()
    for f in (0.01, 0.1):
        idx = tiles.fraction_indices(f, seed=0)
        share = counts[idx].sum() / total
        # whole tiles: at least the asked share, overshooting by less than one tile
        assert f <= share < f + counts.max() / total
        assert np.array_equal(idx, tiles.fraction_indices(f, seed=0))
        assert not np.array_equal(idx, tiles.fraction_indices(f, seed=1))
    assert len(tiles.fraction_indices(1.0, 0)) == int((counts > 0).sum())
    # a selected tile's mask is exactly the label map under its corner
    i = int(tiles.fraction_indices(0.01, 0)[0])
    r, c = tiles.corners[i]
    assert np.array_equal(tiles[i]["mask"].numpy(), labels[r:r + 32, c:c + 32])
    # every train tile lies in the west block, away from the east block by the gap
    split = SpatialSplit(gap=32)
    assert max(c for _, c in tiles.corners) + 32 <= split.border(scene.width)
    with pytest.raises(ConfigError, match="label fraction"):
        tiles.fraction_indices(0.0, 0)


def test_mirrored_split_trains_east():
    s = SpatialSplit(gap=10, train_side="east")
    assert s.columns("train", 100) == (40, 100) and s.columns("test", 100) == (0, 30)
    with pytest.raises(ConfigError, match="train_side"):
        SpatialSplit(train_side="north")


def test_label_map_errors(brandenburg):
    scene, labels = brandenburg.scenes[0], brandenburg.label_map()
    with pytest.raises(DataError, match="does not match the image grid"):
        DenseLabelTiles(scene, labels[:, :-1], size=32)
    bad = labels.copy()
    bad[0, 0] = 9  # 8 classes declared
    with pytest.raises(DataError, match=r"class ids \[9\] are outside"):
        DenseLabelTiles(scene, bad, size=32)


def test_iou_ignores_classes_absent_from_the_test_truth():
    cm = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    s = iou_scores(cm, ["a", "b", "c"])
    assert s["per_class_iou"]["c"] is None
    assert s["per_class_iou"]["a"] == pytest.approx(8 / 11)
    assert s["miou"] == pytest.approx((8 / 11 + 9 / 12) / 2)


def test_segmentation_on_real_tiles(brandenburg):
    """A few steps on real tiles: records carry mIoU and per-class IoU for both kinds, the
    label fraction buys few whole tiles, and scores are proper probabilities."""
    from eossl.models.encoder import Encoder

    ev = Segmentation(fractions=(0.01,), steps=2, batch_size=4, probe_steps=2)
    ctx = Context("brandenburg", source=brandenburg)
    recs = ev.run(ctx, {"random": Encoder.random(brandenburg.stats())}, seed=0)
    assert {r["table"] for r in recs} == set(ev.tables)
    for r in recs:
        assert 0 <= r["value"] <= 1 and r["column"] == "1% labels"
        assert set(r["per_class_iou"]) == set(OSM_CLASSES)
        assert 1 <= r["tiles"] <= 20 and r["labelled_share"] >= 0.01


def test_a_dense_checkpoint_keeps_its_decoder_and_its_twin_does_not(tiny_checkpoints):
    from eossl.checkpoint import load_encoder
    from eossl.evaluate.finetune import SegmentationNet

    enc = load_encoder(tiny_checkpoints["dense"])
    ck = torch.load(tiny_checkpoints["dense"], weights_only=True)["state_dict"]
    net = SegmentationNet(enc, len(OSM_CLASSES))
    for k, v in net.unet.decoder.state_dict().items():
        assert torch.equal(v, ck["decoder." + k])
    twin = SegmentationNet(enc.random_twin(0), len(OSM_CLASSES))
    assert not torch.equal(next(iter(twin.unet.decoder.parameters())),
                           next(iter(net.unet.decoder.parameters())))
    moco = SegmentationNet(load_encoder(tiny_checkpoints["moco"]), len(OSM_CLASSES))
    x = torch.rand(1, 13, 32, 32) * 2000
    assert moco.eval()(x).shape == (1, len(OSM_CLASSES), 32, 32)
