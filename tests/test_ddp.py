"""Distributed correctness: k DDP ranks with batch B each must compute the loss and the
gradients that one process computes on the global batch kB.

End to end through Lightning: two CPU processes (gloo) each build a method and fit it with
``Trainer(accelerator="cpu", devices=2, strategy="ddp")``, so Lightning's DDP strategy does
what it does on a cluster (wraps the module in DistributedDataParallel, inserts the
DistributedSampler that splits the global batch between ranks, all-reduces gradients, steps
the method's own optimiser and LR schedule); one process fits the same method with the whole
batch. The mean of the ranks' losses and the (DDP-averaged) backbone gradients must match the
single-process ones at every step, so cross-rank parts (NT-Xent negatives gathered from all
ranks, MoCo's and SeCo's queues filled with every rank's keys, EMA targets) are pinned. One
method of each family: contrastive (simclr, moco, seco), distillation (byol), reconstruction
(colorization), dense (dense). ``test_pretrain_cli_runs_ddp_on_two_processes`` runs the
``eossl pretrain --devices 2 --strategy ddp`` command itself (Lightning's own launcher).

The processes are started by torch.multiprocessing with ``LOCAL_RANK``/``WORLD_SIZE`` set, the
way torchrun or SLURM start them, so Lightning does not relaunch pytest; each keeps its
process group for all methods (start-up dominates the cost).

Two things are made identical on purpose, because they are not what this test is about:

- view randomness: a method's random views are replaced by fixed per-sample ones, so a
  sample's views do not depend on which rank it lands on;
- BatchNorm batch statistics: BN layers run in eval mode. Under DDP each rank normalises over
  its own batch (MoCo's per-GPU BN); only SyncBatchNorm, which torch supports on GPUs only,
  would reproduce one-process statistics, so with BN in train mode the two runs would differ
  by design, not by a bug in the loss.

Lightning always gives a DDP training loader a shuffling DistributedSampler (seed
``PL_GLOBAL_SEED``, else 0), which deals a seeded permutation round-robin (rank r gets
perm[r], perm[r + k], ...). The one-process run reads the same permutation (a one-replica
DistributedSampler with the same seed), so step s covers the same SET of samples in both;
every loss here is a mean over samples and queue order does not enter the loss, so the set is
what matters (the test checks the sets too). Queue sizes are multiples of the global batch so
that no key is dropped at the end of the ring (which keys are dropped would depend on order).

Adding a method: one entry in ADAPTERS (name -> Adapter) with tiny model options, and if its
training batch is not ``{"image": (N, C, H, W)}``, a ``batch`` function building the global
batch, and a ``determinize`` hook that removes its view randomness. Then add the name to
DDP_CORRECT (or to the negative controls).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DistributedSampler

BANDS = ["B02", "B03", "B04", "B08"]
GLOBAL_BATCH = 16
WORLD = 2
STEPS = 3
CROP = 16
MARGIN = 4  # source images are CROP + MARGIN px (dense cuts shifted views from them)


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

    def pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views of a step, as ContrastiveViews.pair gives them to the two-view methods."""
        return self(x), self(x)


class FixedSeasonalViews(nn.Module):
    """SeCo's (q, k0, k1, k2) = crop(t0), crop(augment(t1)), crop(t2), crop(augment(t0)), with
    a fixed crop and a fixed "augmentation" (flip + band scaling) per sample."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, t0, t1, t2):
        s = self.size

        def aug(t):
            return t.flip(-1) * torch.linspace(0.8, 1.2, t.shape[1]).view(1, -1, 1, 1)

        return (t0[..., :s, :s], aug(t1)[..., -s:, -s:], t2[..., :s, :s],
                aug(t0)[..., -s:, -s:])


def fixed_views(model: nn.Module) -> None:
    model.views = FixedViews(model.hparams.crop_size)


def fixed_seasonal_views(model: nn.Module) -> None:
    model.views = FixedSeasonalViews(model.hparams.crop_size)


def no_augmentation(model: nn.Module) -> None:
    model.augment = nn.Identity()  # colorization's per-sample flips/rotations


def fixed_dense_views(model: nn.Module) -> None:
    """The same two exactly-aligned views of every image (one shifted, flipped and rotated);
    with num_pairs >= the overlap every overlapping pixel is a pair, so which pairs are drawn
    (the per-rank RNG) no longer matters, only their order, and the loss ignores order."""
    from eossl.methods.dense import ViewParams, make_view

    size = model.hparams.crop_size
    p1, p2 = ViewParams(0, 0, False, False, 0), ViewParams(MARGIN, MARGIN, True, False, 1)

    def views(x):
        v1 = torch.stack([make_view(img, p1, size) for img in x])
        v2 = torch.stack([make_view(img, p2, size) for img in x])
        return [(p1, p2)] * len(x), v1, v2

    model._views = views
    model.jitter = nn.Identity()
    # BN runs in eval mode here; with its initial statistics (mean 0, var 1) the U-Net's pixel
    # embeddings are all but parallel (cosine ~0.9996), the loss sits at log(pairs) and the
    # gradients are ~0, which would make the comparison vacuous. Statistics of one fixed batch,
    # the same in every process, give it real, diverse embeddings to train.
    calibrate_bn(model, lambda b: model.embed(model.normalizer(b["image"])[..., :size, :size]))


def calibrate_bn(model: nn.Module, forward: Callable[[dict], torch.Tensor]) -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.momentum = None  # cumulative average: one batch gives exactly its statistics
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        forward(image_batch(GLOBAL_BATCH, 99))


def image_batch(n: int, step: int) -> dict:
    g = torch.Generator().manual_seed(1000 + step)
    return {"image": torch.rand(n, len(BANDS), CROP + MARGIN, CROP + MARGIN, generator=g)
            * 3000 + 10}


def series_batch(n_dates: int) -> Callable[[int, int], dict]:
    def batch(n: int, step: int) -> dict:
        g = torch.Generator().manual_seed(2000 + step)
        return {"image": torch.rand(n, n_dates, len(BANDS), CROP + MARGIN, CROP + MARGIN,
                                    generator=g) * 3000 + 10}

    return batch


@dataclass
class Adapter:
    """How to run one method in this test (see the module docstring)."""

    kwargs: dict = field(default_factory=dict)
    determinize: Callable[[nn.Module], None] = fixed_views
    batch: Callable[[int, int], dict] = image_batch
    method: str | None = None  # registry name when the adapter's key is a variant


COMMON = {"lr": 0.2, "warmup_fraction": 0.0, "max_steps": STEPS}
ADAPTERS: dict[str, Adapter] = {
    # contrastive
    "simclr": Adapter({"proj_hidden_dim": 64, "proj_dim": 32}),
    "moco": Adapter({"queue_size": 32, "proj_dim": 32, "bn_splits": 1}),  # queue wraps at step 2
    "moco-symmetric": Adapter({"queue_size": 64, "proj_dim": 32, "bn_splits": 1,
                               "symmetric": True}, method="moco"),
    "seco": Adapter({"queue_size": 32, "proj_dim": 32, "proj_hidden_dim": 64, "bn_splits": 1},
                    fixed_seasonal_views, series_batch(3)),
    # distillation
    "byol": Adapter({"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64,
                     "ema_momentum": 0.9}),
    # reconstruction: B08 in, Lab a,b of B04/B03/B02 out
    "colorization": Adapter({"decoder_channels": [32, 16, 16, 8], "decoder_blocks": 1,
                             "dropout": 0.0, "picture_patches": 0}, no_augmentation),
    # dense: per-pixel InfoNCE; cross_negatives=0 (see test_dense_cross_image_negatives_...)
    "dense": Adapter({"embed_dim": 16, "num_pairs": 256, "cross_negatives": 0,
                      "max_shift": MARGIN,
                                      "decoder_channels": [32, 16, 16, 8],
                      "map_at_end": False}, fixed_dense_views),
    # negative controls: settings that must NOT match, proving the comparison can fail
    "moco-local-queue": Adapter({"queue_size": 32, "proj_dim": 32, "bn_splits": 1,
                                 "gather_distributed": False}, method="moco"),
    "simclr-local-negatives": Adapter({"proj_hidden_dim": 64, "proj_dim": 32,
                                       "gather_distributed": False}, method="simclr"),
    "seco-local-queue": Adapter({"queue_size": 32, "proj_dim": 32, "proj_hidden_dim": 64,
                                 "bn_splits": 1, "gather_distributed": False},
                                fixed_seasonal_views, series_batch(3), method="seco"),
    "dense-cross-negatives": Adapter({"embed_dim": 16, "num_pairs": 256, "cross_negatives": 64,
                                      "max_shift": MARGIN,
                                      "decoder_channels": [32, 16, 16, 8],
                                      "map_at_end": False}, fixed_dense_views, method="dense"),
}
DDP_CORRECT = ["simclr", "moco", "moco-symmetric", "seco", "byol", "colorization", "dense"]
NOT_DDP_CORRECT = ["moco-local-queue", "simclr-local-negatives", "seco-local-queue",
                   "dense-cross-negatives"]
FAMILIES = {"contrastive": {"simclr", "moco", "seco"}, "distillation": {"byol", "rsbyol"},
            "reconstruction": {"colorization", "spectral"}, "dense": {"dense"}}


class _Batches(torch.utils.data.Dataset):
    """STEPS global batches as one sequential dataset of samples (dicts of tensors)."""

    def __init__(self, ad: Adapter) -> None:
        full = [ad.batch(GLOBAL_BATCH, i) for i in range(STEPS)]
        self.data = {k: torch.cat([b[k] for b in full]) for k in full[0]}
        self.data["index"] = torch.arange(STEPS * GLOBAL_BATCH)  # which samples a step saw

    def __len__(self) -> int:
        return STEPS * GLOBAL_BATCH

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.data.items()}


def _record_callback():
    from lightning.pytorch.callbacks import Callback
    from torch.nn.modules.batchnorm import _BatchNorm

    class Record(Callback):
        """BN in eval mode every step; the step's local loss and the synchronised backbone
        gradients (after DDP's all-reduce, before the optimiser uses them)."""

        def __init__(self) -> None:
            self.losses, self.grads, self.samples = [], [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.samples.append(batch["index"].tolist())
            for m in pl_module.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.grads.append({n: p.grad.detach().clone()
                               for n, p in pl_module.backbone.named_parameters()
                               if p.grad is not None})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(outputs["loss"].detach().float().clone())

    return Record()


def _stats():
    from eossl.normalization import BandStats

    return BandStats(BANDS, [6.5] * 4, [1.0] * 4, [100.0] * 4, [3000.0] * 4).to_dict()


def _fit_method(name: str, world: int, root: str) -> dict:
    import lightning as L

    from eossl.methods import get_method

    ad = ADAPTERS[name]
    torch.manual_seed(0)
    model = get_method(ad.method or name)(BANDS, _stats(), crop_size=CROP,
                                          **{**COMMON, **ad.kwargs})
    ad.determinize(model)
    rec = _record_callback()
    trainer = L.Trainer(accelerator="cpu", devices=world,
                        strategy="ddp" if world > 1 else "auto", max_steps=STEPS,
                        max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[rec],
                        default_root_dir=root)
    data = _Batches(ad)
    # DDP: Lightning replaces the sampler with its shuffling DistributedSampler (seed 0 here);
    # one process: the same seeded permutation, read whole.
    sampler = None if world > 1 else DistributedSampler(data, num_replicas=1, rank=0, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=GLOBAL_BATCH // world,
                                         sampler=sampler, drop_last=True)
    trainer.fit(model, loader)
    assert trainer.world_size == world and trainer.global_step == STEPS
    return {"loss": torch.stack(rec.losses), "grads": rec.grads, "samples": rec.samples}


def _worker(rank: int, world: int, port: int, names: list[str], out: str) -> None:
    import logging

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    if world > 1:  # what torchrun / SLURM set: Lightning joins these processes, launches none
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank), NODE_RANK="0", RANK=str(rank))
    res = {name: _fit_method(name, world, out) for name in names}
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
    ranks = mp.spawn(_worker, args=(WORLD, _free_port(), names, out), nprocs=WORLD,
                     join=False)
    # The one-process reference runs here meanwhile: the ranks spend much of their time
    # starting up and waiting on each other's collectives, which leaves a core free.
    threads = torch.get_num_threads()
    try:
        _worker(0, 1, 0, names, out)
    finally:
        torch.set_num_threads(threads)
        while not ranks.join():
            pass

    def load(name: str) -> dict:  # every step's gradients: 1.4 GB a file, gone once read
        path = os.path.join(out, name)
        res = torch.load(path, weights_only=False)
        os.remove(path)
        return res

    return load("w1-r0.pt"), [load(f"w{WORLD}-r{r}.pt") for r in range(WORLD)]


def test_every_family_is_covered():
    from eossl.methods import available_methods

    methods = {ADAPTERS[n].method or n for n in DDP_CORRECT}
    for family, members in FAMILIES.items():
        assert methods & members, f"no DDP equivalence test for the {family} family"
    assert {m for ms in FAMILIES.values() for m in ms} <= set(available_methods())


@pytest.mark.parametrize("name", DDP_CORRECT)
def test_ddp_matches_single_process(runs, name):
    single, ranks = runs
    ref = single[name]
    assert ref["loss"].shape == (STEPS,) and torch.isfinite(ref["loss"]).all()
    for step in range(STEPS):  # both runs saw the same global batch at every step
        both = [i for res in ranks for i in res[name]["samples"][step]]
        assert len(both) == len(set(both)) == GLOBAL_BATCH
        assert set(both) == set(ref["samples"][step])
    # the global loss is the mean of the ranks' (equal-size) local means
    mean_loss = torch.stack([res[name]["loss"] for res in ranks]).mean(0)
    torch.testing.assert_close(mean_loss, ref["loss"], rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{name} loss: {m}")
    assert not torch.allclose(ref["loss"][0], ref["loss"][-1])  # the weights did move
    for r, res in enumerate(ranks):
        assert len(res[name]["grads"]) == len(ref["grads"]) == STEPS
        for step, (g, g_ref) in enumerate(zip(res[name]["grads"], ref["grads"])):
            assert g.keys() == g_ref.keys() and len(g) > 0
            for key in g_ref:
                torch.testing.assert_close(
                    g[key], g_ref[key], rtol=1e-3, atol=1e-6,
                    msg=lambda m: f"{name} rank {r} step {step} grad {key}: {m}")


@pytest.mark.parametrize("name", NOT_DDP_CORRECT)
def test_negative_controls_differ(runs, name):
    """Without gathering, ranks see fewer negatives (SimCLR, dense's cross-image pool) or a
    queue of their own keys only (MoCo, SeCo): the losses must differ from one process, or the
    test above could not fail."""
    single, ranks = runs
    ref = single[name]["loss"]
    mean_loss = torch.stack([res[name]["loss"] for res in ranks]).mean(0)
    assert torch.isfinite(mean_loss).all()
    assert not torch.allclose(mean_loss, ref, rtol=1e-4, atol=1e-5)


def test_dense_cross_image_negatives_are_per_rank(runs):
    """Documents a property, not a wish: dense's pool of other-image negatives is drawn from
    the rank's own batch (it is not gathered), so with cross_negatives > 0 k ranks with batch B
    optimise a different loss than one process with kB (docs/scale.md says so)."""
    single, ranks = runs
    diff = (torch.stack([r["dense-cross-negatives"]["loss"] for r in ranks]).mean(0)
            - single["dense-cross-negatives"]["loss"]).abs().max()
    assert diff > 1e-3


def test_pretrain_cli_runs_ddp_on_two_processes(sample_cache, tmp_path):
    """``eossl pretrain --devices 2 --num-nodes 1 --strategy ddp`` end to end: Lightning's own
    launcher re-runs the command as rank 1; both ranks must agree on the run folder (no
    ``--out`` given: rank 0 picks it), rank 1 must not refuse the folder rank 0 just filled,
    and the summary counts both ranks' images. bf16-mixed and channels-last pass through."""
    from eossl.checkpoint import load_encoder

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "EOSSL_RUN_DIR"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "eossl.cli", "--cache", str(sample_cache), "pretrain",
           "--method", "simclr", "--accelerator", "cpu", "--devices", "2", "--num-nodes", "1",
           "--strategy", "ddp", "--precision", "bf16-mixed", "--channels-last",
           "--max-steps", "2", "--batch-size", "4", "--crop-size", "32", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # Lightning's own rank banner is silenced (pretrain quiets lightning's INFO loggers), so
    # the proof that rank 1 joined is the summary: world_size 2 with both steps done (gloo's
    # process group does not start training until every rank has joined).
    runs_made = list((tmp_path / "runs").iterdir())
    assert len(runs_made) == 1, runs_made  # one folder for both ranks
    run = runs_made[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert summary["precision"] == "bf16-mixed"
    import yaml

    t = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert (t["devices"], t["num_nodes"], t["strategy"], t["channels_last"]) == (2, 1, "ddp", True)
    enc = load_encoder(run / "checkpoints" / "last.ckpt")
    x = torch.rand(2, len(enc.bands), 32, 32) * 3000
    assert torch.isfinite(enc(x)).all()
    assert not (Path(tmp_path) / "lightning_logs").exists()


def test_pretrain_under_torchrun(sample_cache, tmp_path, monkeypatch, capsys):
    """The docs' torchrun launch (``torchrun ... -m eossl.cli pretrain``): torchrun starts both
    ranks at once, Lightning joins them; only rank 0 prepares the folder. Without ``--out`` each
    rank would pick its own timestamped folder, so that is refused with a clear error."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "EOSSL_RUN_DIR")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    port = _free_port()
    base = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", "2", "--master-port", str(port), "-m", "eossl.cli",
            "--cache", str(sample_cache), "pretrain", "--accelerator", "cpu", "--devices", "2",
            "--num-nodes", "1", "--strategy", "ddp", "--method", "simclr", "--max-steps", "2",
            "--batch-size", "4", "--crop-size", "32", "--no-progress"]
    run = tmp_path / "run"
    proc = subprocess.run([*base, "--out", str(run)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert (run / "checkpoints" / "last.ckpt").is_file()

    # Without --out, each rank refuses before it makes or joins anything: checked here, in
    # this process, under the variables torchrun gives its workers (a second torchrun launch
    # only to see both workers refuse cost three more interpreter start-ups).
    from eossl.cli import main

    monkeypatch.chdir(tmp_path)
    for rank in range(2):
        with monkeypatch.context() as m:
            for k, v in {"RANK": rank, "LOCAL_RANK": rank, "GROUP_RANK": 0, "ROLE_RANK": rank,
                         "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2, "ROLE_WORLD_SIZE": 2,
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                         "TORCHELASTIC_RUN_ID": "none"}.items():
                m.setenv(k, str(v))
            m.delenv("EOSSL_RUN_DIR", raising=False)
            code = main(base[base.index("--cache"):])
        assert code == 2 and "need --out RUN_FOLDER" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
