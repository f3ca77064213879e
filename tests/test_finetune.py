"""The one fine-tuning loop: the encoder learns more slowly than the new head, image and mask
get the same augmentation, and every network kind trains through it."""

import copy

import torch
from torch.utils.data import Dataset

from eossl.evaluate.finetune import (ChangeNet, PatchNet, SegmentationNet, dihedral_augmentation,
                                     fit)
from eossl.models.encoder import Encoder
from eossl.normalization import BandStats


class _Patches(Dataset):
    def __init__(self, n=16, bands=4, mask=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, bands, 16, 16, generator=g) * 1000
        self.labels = [i % 2 for i in range(n)]
        self.mask = mask

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.mask:
            m = (self.x[i, 0] > 500).long()
            m[0, 0] = 255  # unlabelled
            return {"image": self.x[i], "mask": m}
        return {"image": self.x[i], "label": self.labels[i]}


def _encoder(bands=4):
    names = [f"b{i}" for i in range(bands)]
    stats = BandStats(names, mean=[5.0] * bands, std=[1.0] * bands, q02=[0.0] * bands,
                      q98=[2000.0] * bands, log=[True] * bands)
    return Encoder.random(stats)


def _weights(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_backbone_lr_scale_sets_how_fast_the_encoder_moves():
    enc = _encoder()
    before = _weights(enc)
    net = fit(PatchNet(copy.deepcopy(enc), 2), _Patches(), "cross_entropy", steps=2,
              batch_size=8, backbone_lr_scale=0.0)
    assert all(torch.equal(before[k], v) for k, v in _weights(net.encoder).items())
    net2 = fit(PatchNet(copy.deepcopy(enc), 2), _Patches(), "cross_entropy", steps=2,
               batch_size=8, backbone_lr_scale=1.0)
    moved = [k for k, v in _weights(net2.encoder).items() if not torch.equal(v, before[k])]
    assert moved  # at full lr the encoder does train
    assert all(torch.equal(before[k], v) for k, v in _weights(enc).items())  # a copy trained


def test_one_augmentation_moves_image_and_mask_together():
    torch.manual_seed(0)
    aug = dihedral_augmentation(with_mask=True)
    x = torch.rand(64, 3, 8, 8)
    m = torch.randint(0, 9, (64, 1, 8, 8)).float()
    xo, mo = aug(x, m)
    assert torch.equal(mo, mo.round())  # exact: no interpolated labels
    seen = set()
    for i in range(64):
        match = [(f, k) for f in (False, True) for k in range(4)
                 if torch.allclose(torch.rot90(x[i].flip(-1) if f else x[i], k, (-2, -1)),
                                   xo[i], atol=1e-5)]
        assert match, i  # one of the 8 symmetries of a square...
        f, k = match[0]
        assert torch.equal(torch.rot90(m[i].flip(-1) if f else m[i], k, (-2, -1)), mo[i])
        seen.add((f, k))  # ...the same for the mask
    assert len(seen) >= 6


def test_segmentation_and_change_nets_train_through_the_same_loop():
    enc = _encoder()
    seg = fit(SegmentationNet(copy.deepcopy(enc), 2), _Patches(8, mask=True),
              "pixel_cross_entropy", steps=2, batch_size=4)
    with torch.no_grad():
        assert seg(torch.rand(2, 4, 16, 16) * 1000).shape == (2, 2, 16, 16)

    class Pairs(_Patches):
        def __getitem__(self, i):
            x = self.x[i]
            return {"image": torch.cat([x, x * 1.5]), "mask": (x[0] > 500).long()}

    change = ChangeNet(enc)
    frozen = _weights(change.encoder)
    fit(change, Pairs(8), "change_bce", steps=2, batch_size=4, pos_weight=3.0)
    assert all(torch.equal(frozen[k], v) for k, v in _weights(change.encoder).items())
    assert all(p.requires_grad for p in enc.parameters())  # the caller's encoder untouched
