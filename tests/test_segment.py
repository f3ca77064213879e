"""Segmentation downstream on the REAL scene's OSM label map: whole-tile label fractions, a
tiny fine-tune and linear probe, mIoU bookkeeping, and clear errors on bad label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eossl.data.datasets import IGNORE_INDEX, OSM_CLASSES, DenseLabelTiles, SpatialSplit
from eossl.errors import ConfigError, DataError
from eossl.evaluate.segment import ModelSpec, evaluate_segmentation, iou_scores


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
    """A few steps on real tiles: records carry mIoU and per-class IoU for both kinds, the 1%
    row uses few whole tiles, and scores are proper probabilities."""
    from eossl.models.encoder import Encoder

    random = Encoder.random(brandenburg.stats()).random_twin(0)
    recs = evaluate_segmentation(brandenburg, [ModelSpec("random", random)], fractions=[0.01],
                                 seeds=[0], tile_size=32, steps=3, batch_size=4,
                                 linear_probe=True, probe_steps=5)
    assert {r["kind"] for r in recs} == {"finetune", "linear"}
    for r in recs:
        assert 0 <= r["miou"] <= 1 and 0 <= r["pixel_accuracy"] <= 1
        assert set(r["per_class_iou"]) == set(OSM_CLASSES)
        assert 1 <= r["tiles"] <= 20 and r["labelled_share"] >= 0.01
    with pytest.raises(ConfigError, match="unique"):
        evaluate_segmentation(brandenburg, [ModelSpec("a", random), ModelSpec("a", random)],
                              fractions=[1.0],
                              seeds=[0])


def test_encoder_checkpoint_gets_a_fresh_decoder(tmp_path, brandenburg):
    """Any eossl checkpoint (here a hand-made 'moco'-like one) -> kind 'encoder'; its encoder
    weights are those of the checkpoint, and IGNORE pixels never count."""
    from eossl.evaluate.segment import build_segmentation_net, specs_from_checkpoints
    from eossl.models.backbones import build_backbone

    bands = brandenburg.bands
    bb = build_backbone("resnet18", in_chans=len(bands), stem_stride=2)
    stats = brandenburg.stats()
    from eossl.normalization import Normalizer
    norm = Normalizer(stats)
    state = {**{"backbone." + k: v for k, v in bb.state_dict().items()},
             **{"normalizer." + k: v for k, v in norm.state_dict().items()}}
    meta = {"method": "moco", "bands": bands, "stats": stats.to_dict(), "backbone": "resnet18",
            "stem_stride": 2, "backbone_kwargs": {}}
    path = tmp_path / "moco.ckpt"
    torch.save({"state_dict": state, "eossl": meta}, path)
    (spec,) = specs_from_checkpoints({"moco": str(path)}, random=False)
    net = build_segmentation_net(spec, len(OSM_CLASSES), bands)
    for k, v in bb.state_dict().items():
        assert torch.equal(net.encoder.backbone.state_dict()[k], v)
    x = torch.from_numpy(brandenburg.scenes[0].read((0, 0, 32, 32)))[None]
    assert net.eval()(x).shape == (1, len(OSM_CLASSES), 32, 32)
    assert IGNORE_INDEX == 255
