"""Patch-classification fine-tuning: the encoder learns more slowly than the new head."""

import torch
from torch.utils.data import Dataset

from eossl.normalization import BandStats, Normalizer
from eossl.evaluate.finetune import finetune
from eossl.models.backbones import build_backbone
from eossl.models.encoder import Encoder


class _Patches(Dataset):
    def __init__(self, n=16, bands=4):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, bands, 16, 16, generator=g) * 1000
        self.labels = [i % 2 for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.labels[i]}


def _encoder(bands=4):
    names = [f"b{i}" for i in range(bands)]
    stats = BandStats(names, mean=[5.0] * bands, std=[1.0] * bands, q02=[0.0] * bands,
                      q98=[2000.0] * bands, log=[True] * bands)
    torch.manual_seed(0)
    return Encoder(build_backbone("resnet18", in_chans=bands, stem_stride=2), Normalizer(stats))


def _weights(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_backbone_lr_scale_sets_how_fast_the_encoder_moves():
    enc = _encoder()
    before = _weights(enc)
    model = finetune(enc, _Patches(), 2, epochs=1, batch_size=8, backbone_lr_scale=0.0)
    after = _weights(model.encoder)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weight decay x lr 0 too
    model2 = finetune(enc, _Patches(), 2, epochs=1, batch_size=8, backbone_lr_scale=1.0)
    moved = [k for k, v in _weights(model2.encoder).items() if not torch.equal(v, before[k])]
    assert moved  # at full lr the encoder does train
    assert torch.equal(_weights(enc)["backbone.model.conv1.weight"],
                       before["backbone.model.conv1.weight"])  # the given encoder is untouched
