"""Distributed correctness: k DDP ranks with batch B each must compute the loss and the
gradients that one process computes on the global batch kB.

Two CPU processes (gloo) each run a few real training steps of a method on their half of a
fixed global batch, wrapped in torch's DistributedDataParallel (what Lightning's ``ddp``
strategy wraps the module in); one process runs the same steps on the whole batch. The mean
of the ranks' losses and the (DDP-averaged) backbone gradients must match the single-process
ones at every step, so cross-rank parts (NT-Xent negatives gathered from all ranks, MoCo's
queue filled with every rank's keys, EMA targets) are pinned.

Two things are made identical on purpose, because they are not what this test is about:

- view randomness: ``model.views`` is replaced by fixed per-sample views, so a sample's
  views do not depend on which rank it lands on;
- BatchNorm batch statistics: BN layers run in eval mode. Under DDP each rank normalises over
  its own batch (MoCo's per-GPU BN); only SyncBatchNorm, which torch supports on GPUs only,
  would reproduce one-process statistics, so with BN in train mode the two runs would differ
  by design, not by a bug in the loss.

Adding a method: one entry in ADAPTERS (name -> Adapter) with tiny model options, and if its
training batch is not ``{"image": (N, C, H, W)}``, a ``batch`` function building the global
batch (every tensor is split along dim 0 between ranks) and a ``determinize`` hook that
removes its view randomness. Then add the name to DDP_CORRECT (or to the negative controls).
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

BANDS = ["B02", "B03", "B04", "B08"]
GLOBAL_BATCH = 16
WORLD = 2
STEPS = 3
CROP = 16


class FixedViews(nn.Module):
    """Deterministic per-sample views in place of a method's random ones: even calls give the
    top-left crop, odd calls the bottom-right crop flipped (a real change between views)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, k = self.size, self.calls % 2
        self.calls += 1
        return x[..., :s, :s] if k == 0 else x[..., -s:, -s:].flip(-1)


def fixed_views(model: nn.Module) -> None:
    model.views = FixedViews(model.hparams.crop_size)


def image_batch(n: int, step: int) -> dict:
    g = torch.Generator().manual_seed(1000 + step)
    return {"image": torch.rand(n, len(BANDS), CROP + 4, CROP + 4, generator=g) * 3000 + 10}


@dataclass
class Adapter:
    """How to run one method in this test (see the module docstring)."""

    kwargs: dict = field(default_factory=dict)
    determinize: Callable[[nn.Module], None] = fixed_views
    batch: Callable[[int, int], dict] = image_batch
    method: str | None = None  # registry name when the adapter's key is a variant


ADAPTERS: dict[str, Adapter] = {
    "simclr": Adapter({"proj_hidden_dim": 64, "proj_dim": 32}),
    "moco": Adapter({"queue_size": 32, "proj_dim": 32, "bn_splits": 1}),  # queue wraps at step 2
    "moco-symmetric": Adapter({"queue_size": 64, "proj_dim": 32, "bn_splits": 1,
                               "symmetric": True}, method="moco"),
    "byol": Adapter({"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64,
                     "ema_momentum": 0.9}),
    # negative controls: settings that must NOT match, proving the comparison can fail
    "moco-local-queue": Adapter({"queue_size": 32, "proj_dim": 32, "bn_splits": 1,
                                 "gather_distributed": False}, method="moco"),
    "simclr-local-negatives": Adapter({"proj_hidden_dim": 64, "proj_dim": 32,
                                       "gather_distributed": False}, method="simclr"),
}
DDP_CORRECT = ["simclr", "moco", "moco-symmetric", "byol"]
NOT_DDP_CORRECT = ["moco-local-queue", "simclr-local-negatives"]


class _Step(nn.Module):
    """DDP wraps a module's forward; a method's forward is its training_step."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: dict, i: int) -> torch.Tensor:
        return self.method.training_step(batch, i)


def _stats():
    from eossl.data.stats import BandStats

    return BandStats(BANDS, [6.5] * 4, [1.0] * 4, [100.0] * 4, [3000.0] * 4).to_dict()


def _run_method(name: str, rank: int, world: int) -> dict:
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.parallel import DistributedDataParallel

    from eossl.methods import get_method

    ad = ADAPTERS[name]
    torch.manual_seed(0)
    model = get_method(ad.method or name)(BANDS, _stats(), crop_size=CROP, **ad.kwargs)
    ad.determinize(model)
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    step = DistributedDataParallel(_Step(model)) if world > 1 else _Step(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses, grads = [], []
    for i in range(STEPS):
        full = ad.batch(GLOBAL_BATCH, i)
        local = {k: v.chunk(world)[rank] for k, v in full.items()}
        opt.zero_grad(set_to_none=True)
        loss = step(local, i)
        loss.backward()
        loss = loss.detach().clone()
        if world > 1:  # the global loss is the mean of the ranks' (equal-size) means
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss)
        grads.append({n: p.grad.clone() for n, p in model.backbone.named_parameters()
                      if p.grad is not None})
        opt.step()
    return {"loss": torch.stack(losses), "grads": grads}


def _worker(rank: int, world: int, port: int, names: list[str], out: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if world > 1:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = {name: _run_method(name, rank, world) for name in names}
    finally:
        if world > 1:
            dist.destroy_process_group()
    torch.save(res, os.path.join(out, f"w{world}-r{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All methods in one spawn (process start-up dominates the cost)."""
    out = str(tmp_path_factory.mktemp("ddp"))
    names = DDP_CORRECT + NOT_DDP_CORRECT
    mp.spawn(_worker, args=(WORLD, _free_port(), names, out), nprocs=WORLD, join=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _worker(0, 1, 0, names, out)
    load = lambda f: torch.load(os.path.join(out, f), weights_only=False)  # noqa: E731
    return load("w1-r0.pt"), [load(f"w{WORLD}-r{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", DDP_CORRECT)
def test_ddp_matches_single_process(runs, name):
    single, ranks = runs
    ref = single[name]
    assert torch.isfinite(ref["loss"]).all()
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res[name]["loss"], ref["loss"], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name} rank {r} loss: {m}")
        for step, (g, g_ref) in enumerate(zip(res[name]["grads"], ref["grads"])):
            assert g.keys() == g_ref.keys() and len(g) > 0
            for key in g_ref:
                torch.testing.assert_close(
                    g[key], g_ref[key], rtol=1e-3, atol=1e-6,
                    msg=lambda m: f"{name} rank {r} step {step} grad {key}: {m}")


@pytest.mark.parametrize("name", NOT_DDP_CORRECT)
def test_negative_controls_differ(runs, name):
    """Without gathering, ranks see fewer negatives (SimCLR) or a queue of their own keys
    only (MoCo): the losses must differ from one process, or the test above could not fail."""
    single, ranks = runs
    ref = single[name]["loss"]
    assert not torch.allclose(ranks[0][name]["loss"], ref, rtol=1e-4, atol=1e-5)
