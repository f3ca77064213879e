"""Pretraining throughput on CPU: eossl's MoCo v2, SimCLR and BYOL next to torchgeo's MoCoTask,
SimCLRTask and BYOLTask, same data, at several precisions and memory layouts in one run.

Every (method, variant) row runs in its own subprocess (so its peak RSS is its own) on the
same data loader: random 13-band crops of the real Sentinel-2 sample scene (``brandenburg``),
batch 64, ``num_workers=0``, a Lightning ``Trainer(accelerator="cpu", precision=...)``. A
callback times each step with ``time.perf_counter`` at ``on_train_batch_start`` /
``on_train_batch_end``, skipping warm-up steps. A bare timm ResNet-18 forward+backward gives
the ceiling.

Variants: ``fp32`` (``precision="32-true"``), ``bf16`` (``"bf16-mixed"``: CPU autocast to
bfloat16, float32 master weights), and ``-cl`` for channels-last (eossl.train.ChannelsLast, the
callback ``eossl pretrain --channels-last`` uses, applied to torchgeo's tasks the same way).
torchgeo's tasks are LightningModules, so the same Trainer precision applies to them: the
comparison stays like for like. Each row also reports the FLOPs of one training step (counted
by ``torch.utils.flop_counter`` on one extra, untimed step: convolutions and matmuls, forward
and backward), the GFLOP/s the timed steps reach, and their share of the machine's matmul peak
measured in the same run (a 2048^2 float32 sgemm and bfloat16 gemm; a bf16 row is compared
with the bf16 peak).

    python benchmarks/throughput.py                       # all methods and variants
    python benchmarks/throughput.py --steps 1 --warmup 1 --batch-size 8 --profile 0 \
        --methods bare,eossl-s4,torchgeo --out /tmp/t.json  # smoke test
    python benchmarks/throughput.py --methods bare,torchgeo-simclr,eossl-simclr-s4 \
        --variants fp32 --out benchmarks/results/throughput-baselines.json  # a subset

Writes benchmarks/results/throughput.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "throughput.json"

# name -> (description, encoder passes per image per step: (fwd+bwd, fwd-only))
METHODS = {
    "bare": ("timm resnet18 forward+backward, stride-4 stem (ceiling)", (1, 0)),
    "bare-s2": ("timm resnet18 forward+backward, stride-2 stem (ceiling for eossl default)",
                (1, 0)),
    "torchgeo": ("torchgeo MoCoTask v2, stride-4 stem", (1, 1)),
    "eossl-s4": ("eossl MoCoV2, stem_stride=4 (like for like with torchgeo)", (1, 1)),
    "eossl": ("eossl MoCoV2, default stem_stride=2", (1, 1)),
    "eossl-s4-sym": ("eossl MoCoV2, stem_stride=4, symmetric=True (both directions)", (2, 2)),
    "torchgeo-simclr": ("torchgeo SimCLRTask v1 (2-layer 512-128 head, no bank, LARS), "
                        "stride-4 stem", (2, 0)),
    "eossl-simclr-s4": ("eossl SimCLR, stem_stride=4 (like for like with torchgeo)", (2, 0)),
    "eossl-simclr": ("eossl SimCLR, default stem_stride=2", (2, 0)),
    "torchgeo-byol": ("torchgeo BYOLTask with its views at the crop size (64 px), stride-4 stem",
                      (2, 2)),
    "torchgeo-byol-224": ("torchgeo BYOLTask as shipped: resizes every view to 224 px",
                          None),
    "eossl-byol-s4": ("eossl BYOL (4096/256 heads as torchgeo), stem_stride=4 (like for like)",
                      (2, 2)),
    "eossl-byol": ("eossl BYOL (4096/256 heads), default stem_stride=2", (2, 2)),
}
# each eossl row is compared with the torchgeo row of the same method
TORCHGEO_OF = {"eossl": "torchgeo", "eossl-s4": "torchgeo", "eossl-s4-sym": "torchgeo",
               "eossl-simclr": "torchgeo-simclr", "eossl-simclr-s4": "torchgeo-simclr",
               "eossl-byol": "torchgeo-byol", "eossl-byol-s4": "torchgeo-byol"}
STRIDE2 = {"bare-s2", "eossl", "eossl-simclr", "eossl-byol"}
# variant -> (Lightning precision, channels-last); rows are named METHOD@VARIANT
VARIANTS = {"fp32": ("32-true", False), "fp32-cl": ("32-true", True),
            "bf16": ("bf16-mixed", False), "bf16-cl": ("bf16-mixed", True)}


def is_torchgeo(method: str) -> bool:
    return method.startswith("torchgeo")


def row_name(method: str, variant: str) -> str:
    return f"{method}@{variant}"


# ------------------------------------------------------------------------ machine
def machine_info() -> dict:
    import torch

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_cores": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def matmul_peak_gflops(dtype_name: str, n: int = 2048, min_s: float = 1.0) -> float:
    """Best GFLOP/s of an n x n x n matmul (2 n^3 flops) in ``dtype_name``, after a warm-up:
    the machine's practical matmul peak at that precision, with torch's default threads."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    for _ in range(2):
        a @ b
    best, spent = 0.0, 0.0
    while spent < min_s:
        t = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t
        spent += dt
        best = max(best, 2 * n ** 3 / dt / 1e9)
    return best


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB). VmHWM rather than ru_maxrss: ru_maxrss
    survives exec, so a worker started by a large driver would report the driver's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_now_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------ workers
def _loader(args, n_batches: int):
    from torch.utils.data import DataLoader

    from eossl.data import samples, sources

    from eossl.normalization import BandStats

    src = sources.brandenburg(samples.cache_dir())
    # statistics come from the driver, so a worker's peak RSS is data + model + training only
    stats = BandStats.from_dict(json.loads(Path(args.stats).read_text()))
    ds = src.crops(args.size, length=args.batch_size * n_batches, seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=0, shuffle=False,
                        drop_last=True)
    return src, stats, loader


def _timer_callback(warmup: int, timed: int):
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """perf_counter at batch start/end; the step = training_step + backward + optimiser."""

        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())

        def summary(self, batch_size: int) -> dict:
            steps = [e - s for s, e in zip(self.starts, self.ends)][warmup:warmup + timed]
            # end-to-end: previous step's end to this step's end (adds loading + transfer)
            iters = [b - a for a, b in zip(self.ends, self.ends[1:])][
                max(warmup - 1, 0):warmup - 1 + timed]
            return _rates(steps, iters, batch_size)

    return StepTimer()


def _rates(steps: list[float], iters: list[float], batch_size: int) -> dict:
    import statistics

    out = {"timed_steps": len(steps), "step_s_mean": sum(steps) / len(steps),
           "step_s_median": statistics.median(steps), "step_s_min": min(steps),
           "images_per_s": batch_size * len(steps) / sum(steps)}
    if iters:
        out["images_per_s_end_to_end"] = batch_size * len(iters) / sum(iters)
    return out


def _flop_callback(step: int):
    """FLOPs of training step ``step`` (forward, loss, backward; counted by FlopCounterMode,
    which slows that step down, so it must be one the timer does not count)."""
    from lightning.pytorch.callbacks import Callback
    from torch.utils.flop_counter import FlopCounterMode

    class StepFlops(Callback):
        def __init__(self) -> None:
            self.flops: int | None = None
            self._mode = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == step:
                self._mode = FlopCounterMode(display=False)
                self._mode.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self.flops, self._mode = int(self._mode.get_total_flops()), None

    return StepFlops()


def _trainer(args, callbacks):
    import lightning as L

    if args.channels_last:
        from eossl.train import ChannelsLast

        callbacks = [*callbacks, ChannelsLast()]
    # one extra step after the timed ones, for the FLOP count
    return L.Trainer(accelerator="cpu", devices=1, max_steps=args.warmup + args.steps + 1,
                     precision=args.precision, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, callbacks=callbacks)


def _autocast(args):
    """The precision of the Trainer, for code run outside it (bare backbone, profiles)."""
    import contextlib

    import torch

    if args.precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_bare(args, stem_stride: int) -> dict:
    import timm
    import torch

    from eossl.normalization import Normalizer
    from eossl.models.backbones import set_stem_stride

    from torch.utils.flop_counter import FlopCounterMode

    _, stats, loader = _loader(args, 1)
    x = Normalizer(stats)(next(iter(loader))["image"])  # a real, normalised batch
    model = timm.create_model("resnet18", pretrained=False, in_chans=x.shape[1], num_classes=0)
    set_stem_stride(model, stem_stride)
    model.train()
    if args.channels_last:  # what eossl.train.ChannelsLast does to a module and a batch
        for t in [*model.parameters(), *model.buffers()]:
            if t.ndim == 4 and tuple(t.shape[-2:]) != (1, 1):
                t.data = t.data.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    rss0 = rss_now_mb()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with _autocast(args):
            y = model(x)
        y.float().pow(2).mean().backward()

    steps = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        fwd_bwd()
        if i >= args.warmup:
            steps.append(time.perf_counter() - t)
    res = _rates(steps, [], args.batch_size)
    with FlopCounterMode(display=False) as counter:
        fwd_bwd()
    res["step_flops"] = int(counter.get_total_flops())
    fwd = []  # forward only, no grad: what a momentum (key) encoder costs
    with torch.no_grad(), _autocast(args):
        for i in range(args.warmup + max(3, args.steps // 2)):
            t = time.perf_counter()
            model(x)
            if i >= args.warmup:
                fwd.append(time.perf_counter() - t)
    res["fwd_only_s_mean"] = sum(fwd) / len(fwd)
    res["fwd_bwd_s_mean"] = res["step_s_mean"]
    res["rss_before_fit_mb"] = rss0
    return res


def _fit_timed(args, module, loader) -> dict:
    """Fit with the step timer; the same measurement for every method compared."""
    timer = _timer_callback(args.warmup, args.steps)
    flops = _flop_callback(args.warmup + args.steps)
    trainer = _trainer(args, [timer, flops])
    rss0 = rss_now_mb()
    trainer.fit(module, loader)
    res = timer.summary(args.batch_size)
    res["rss_before_fit_mb"] = rss0
    res["step_flops"] = flops.flops
    return res


def run_eossl(args, stem_stride: int, symmetric: bool = False) -> dict:
    import torch

    from eossl.methods import get_method

    src, stats, loader = _loader(args, args.warmup + args.steps + 2)
    model = get_method("moco")(bands=src.bands, stats=stats.to_dict(), crop_size=args.size,
                               max_steps=args.warmup + args.steps, stem_stride=stem_stride,
                               symmetric=symmetric)
    res = _fit_timed(args, model, loader)
    if args.profile:
        with _autocast(args):
            res["breakdown_s"] = profile_eossl_step(model, next(iter(loader)), args.profile)
    res["config"] = {"queue_size": model.hparams.queue_size, "proj_dim": model.hparams.proj_dim,
                     "bn_splits": model.hparams.bn_splits, "stem_stride": stem_stride,
                     "symmetric_loss": symmetric, "threads": torch.get_num_threads()}
    return res


def profile_eossl_step(model, batch, repeats: int) -> dict:
    """Wall time of each part of MoCoV2.training_step (src/eossl/methods/moco.py), replayed
    outside Lightning with the same modules, to show where a step's time goes."""
    import torch
    from lightly.models.utils import update_momentum

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    parts: dict[str, float] = {}

    def tick(name, t0):
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return time.perf_counter()

    for _ in range(repeats):
        t = time.perf_counter()
        x = model.normalizer(batch["image"])
        t = tick("normalize", t)
        v0, v1 = model.make_views(x)
        t = tick("views (ContrastiveViews.pair)", t)
        update_momentum(model.backbone, model.backbone_momentum, 0.99)
        update_momentum(model.projection_head, model.projection_head_momentum, 0.99)
        t = tick("update_momentum", t)
        sym = model.hparams.symmetric
        with torch.no_grad():
            keys = [model._split_forward(model.backbone_momentum, model.projection_head_momentum,
                                         v, shuffle=True) for v in ((v1, v0) if sym else (v1,))]
        t = tick("key forward (split BN)", t)
        queries = [model._split_forward(model.backbone, model.projection_head, v, shuffle=False)
                   for v in ((v0, v1) if sym else (v0,))]
        t = tick("query forward (split BN)", t)
        loss = model.criterion(torch.cat(queries), torch.cat(keys))
        t = tick("NTXent loss + queue", t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = tick("backward", t)
        opt.step()
        t = tick("optimizer step", t)
        with torch.no_grad():  # the same key forward without the split-BN chunks
            for v in ((v0, v1) if sym else (v1,)):
                model.projection_head_momentum(model.backbone_momentum(v))
        t = tick("(ref) key forward without split BN", t)
    return {k: v / repeats for k, v in parts.items()}


def run_eossl_method(args, name: str, stem_stride: int) -> dict:
    """eossl SimCLR / BYOL at their defaults; BYOL with torchgeo's head sizes (4096 hidden,
    256 out), so head cost is like for like (the heads are <3% of a step either way)."""
    import torch

    from eossl.methods import get_method

    src, stats, loader = _loader(args, args.warmup + args.steps + 2)
    extra = ({"proj_hidden_dim": 4096, "proj_dim": 256, "pred_hidden_dim": 4096}
             if name == "byol" else {})
    model = get_method(name)(bands=src.bands, stats=stats.to_dict(), crop_size=args.size,
                             max_steps=args.warmup + args.steps, stem_stride=stem_stride, **extra)
    res = _fit_timed(args, model, loader)
    if args.profile:
        with _autocast(args):
            res["breakdown_s"] = PROFILES[name](model, next(iter(loader)), args.profile)
    hp = model.hparams
    res["config"] = {k: hp[k] for k in ("temperature", "proj_dim", "proj_hidden_dim",
                                        "pred_hidden_dim", "ema_momentum") if k in hp}
    res["config"].update(stem_stride=stem_stride, threads=torch.get_num_threads())
    return res


def _profiler(model, batch):
    import torch

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    parts: dict[str, float] = {}

    def tick(name, t0):
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return time.perf_counter()

    return opt, parts, tick


def profile_simclr_step(model, batch, repeats: int) -> dict:
    """The parts of SimCLR.training_step (src/eossl/methods/simclr.py), replayed."""

    opt, parts, tick = _profiler(model, batch)
    for _ in range(repeats):
        t = time.perf_counter()
        x = model.normalizer(batch["image"])
        t = tick("normalize", t)
        v0, v1 = model.make_views(x)
        t = tick("views (ContrastiveViews.pair)", t)
        z0, z1 = (model.projection_head(model.backbone(v)) for v in (v0, v1))
        t = tick("forward (2 views, one pass each)", t)
        loss = model.criterion(z0, z1)
        t = tick("NT-Xent loss", t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = tick("backward", t)
        opt.step()
        t = tick("optimizer step", t)
    return {k: v / repeats for k, v in parts.items()}


def profile_byol_step(model, batch, repeats: int) -> dict:
    """The parts of BYOL.training_step (src/eossl/methods/byol.py), replayed."""
    from lightly.models.utils import update_momentum

    opt, parts, tick = _profiler(model, batch)
    for _ in range(repeats):
        t = time.perf_counter()
        x = model.normalizer(batch["image"])
        t = tick("normalize", t)
        v0, v1 = model.make_views(x)
        t = tick("views (ContrastiveViews.pair)", t)
        update_momentum(model.backbone, model.backbone_momentum, 0.99)
        update_momentum(model.projection_head, model.projection_head_momentum, 0.99)
        t = tick("update_momentum", t)
        _, p0 = model.online(v0)
        _, p1 = model.online(v1)
        t = tick("online forward (2 views)", t)
        t0, t1 = model.target(v0), model.target(v1)
        t = tick("target forward (2 views, no grad)", t)
        loss = model.byol_loss(p0, p1, t0, t1)
        t = tick("loss", t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = tick("backward", t)
        opt.step()
        t = tick("optimizer step", t)
    return {k: v / repeats for k, v in parts.items()}


PROFILES = {"simclr": profile_simclr_step, "byol": profile_byol_step}


def _normalised(task_cls):
    """torchgeo tasks expect normalised batches (its datamodules normalise); normalise in the
    step, as eossl does, so both pay the same cost inside the timed window."""

    class Normalised(task_cls):
        def training_step(self, batch, batch_idx, dataloader_idx=0):
            return super().training_step({"image": self.normalizer(batch["image"])}, batch_idx,
                                         dataloader_idx)

    Normalised.__name__ = f"Normalised{task_cls.__name__}"
    return Normalised


def run_torchgeo_simclr(args) -> dict:
    import torch
    from torchgeo.trainers import SimCLRTask

    from eossl.normalization import Normalizer

    src, stats, loader = _loader(args, args.warmup + args.steps + 2)
    # SimCLR v1 sized like eossl's: 512-512-128 projector, in-batch negatives, T 0.5; torchgeo
    # trains with LARS (lr 0.3 x 64/256) and its SimCLR augmentations (RRC, flips,
    # brightness/contrast p 0.8, grayscale p 0.2, blur always).
    task = _normalised(SimCLRTask)(model="resnet18", weights=None, in_channels=len(src.bands),
                                   version=1, layers=2, hidden_dim=512, output_dim=128,
                                   lr=0.075, weight_decay=1e-6, temperature=0.5,
                                   memory_bank_size=0, size=args.size)
    task.normalizer = Normalizer(stats)
    res = _fit_timed(args, task, loader)
    res["config"] = {"proj_dim": 128, "hidden_dim": 512, "temperature": 0.5, "stem_stride": 4,
                     "optimizer": "LARS", "threads": torch.get_num_threads()}
    return res


def run_torchgeo_byol(args, image_size: int | None) -> dict:
    import timm
    import torch
    from torchgeo.trainers import BYOLTask
    from torchgeo.trainers.byol import BYOL as TorchgeoBYOL

    from eossl.normalization import Normalizer

    src, stats, loader = _loader(args, args.warmup + args.steps + 2)
    base = _normalised(BYOLTask)

    class SizedBYOLTask(base):
        """BYOLTask.configure_models hard-codes image_size=(224, 224): every view is resized
        to 224 px. With ``image_size`` given, build the same model at that size instead."""

        def configure_models(self) -> None:
            if image_size is None:
                return super().configure_models()
            backbone = timm.create_model(self.hparams["model"],
                                         in_chans=self.hparams["in_channels"], pretrained=False)
            self.model = TorchgeoBYOL(backbone, in_channels=self.hparams["in_channels"],
                                      image_size=(image_size, image_size))

    task = SizedBYOLTask(model="resnet18", weights=None, in_channels=len(src.bands))
    task.normalizer = Normalizer(stats)
    res = _fit_timed(args, task, loader)
    res["config"] = {"image_size": image_size or 224, "projection_size": 256,
                     "hidden_size": 4096, "stem_stride": 4, "optimizer": "AdamW (torchgeo)",
                     "threads": torch.get_num_threads()}
    return res


def run_torchgeo(args) -> dict:
    import torch
    from torchgeo.trainers import MoCoTask

    from eossl.normalization import Normalizer

    src, stats, loader = _loader(args, args.warmup + args.steps + 2)

    class NormalisedMoCoTask(MoCoTask):
        """torchgeo expects normalised batches (its datamodules normalise); normalise in the
        step, as eossl does, so both pay the same cost inside the timed window."""

        def training_step(self, batch, batch_idx, dataloader_idx=0):
            return super().training_step({"image": self.normalizer(batch["image"])}, batch_idx,
                                         dataloader_idx)

    # MoCo v2 sized like eossl's: 512-512-128 projector, queue 4096, T 0.2, momentum 0.99,
    # SGD lr 0.03 wd 1e-4; torchgeo's default v2 augmentations (RRC 0.2-1, brightness/contrast
    # p 0.8, grayscale p 0.2, blur p 0.5 k 7, h/v flips) match eossl's views except rot90.
    task = NormalisedMoCoTask(model="resnet18", weights=None, in_channels=len(src.bands),
                              version=2, layers=2, hidden_dim=512, output_dim=128, lr=0.03,
                              weight_decay=1e-4, momentum=0.9, temperature=0.2,
                              memory_bank_size=4096, moco_momentum=0.99, size=args.size)
    task.normalizer = Normalizer(stats)
    res = _fit_timed(args, task, loader)
    res["config"] = {"queue_size": 4096, "proj_dim": 128, "hidden_dim": 512, "stem_stride": 4,
                     "symmetric_loss": False, "threads": torch.get_num_threads()}
    return res


def worker(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    m = args.worker
    args.precision, args.channels_last = VARIANTS[args.variant]
    if m == "bare":
        res = run_bare(args, 4)
    elif m == "bare-s2":
        res = run_bare(args, 2)
    elif m == "eossl":
        res = run_eossl(args, 2)
    elif m == "eossl-s4":
        res = run_eossl(args, 4)
    elif m == "eossl-s4-sym":
        res = run_eossl(args, 4, symmetric=True)
    elif m == "torchgeo":
        res = run_torchgeo(args)
    elif m == "torchgeo-simclr":
        res = run_torchgeo_simclr(args)
    elif m == "torchgeo-byol":
        res = run_torchgeo_byol(args, args.size)
    elif m == "torchgeo-byol-224":
        res = run_torchgeo_byol(args, None)
    elif m in ("eossl-simclr", "eossl-simclr-s4", "eossl-byol", "eossl-byol-s4"):
        res = run_eossl_method(args, m.split("-")[1], 2 if m in STRIDE2 else 4)
    else:
        raise SystemExit(f"unknown method {m!r}")
    if "breakdown_s" in res:
        res["profile_repeats"] = args.profile
    res.update(method=m, variant=args.variant, row=row_name(m, args.variant),
               precision=args.precision, channels_last=args.channels_last,
               description=METHODS[m][0], peak_rss_mb=peak_rss_mb(),
               wall_s=time.perf_counter() - t0)
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------------ driver
def torchgeo_row(r: dict, by_row: dict) -> dict | None:
    """The torchgeo row an eossl row is compared with: same method, same variant, else the same
    precision in the default layout."""
    tg = TORCHGEO_OF.get(r["method"])
    if tg is None:
        return None
    v = r["variant"]
    return by_row.get(row_name(tg, v)) or by_row.get(row_name(tg, v.removesuffix("-cl")))


def derived(results: list[dict], ceilings: dict, peaks: dict) -> None:
    """Add ceiling, share of ceiling, x torchgeo, GFLOP/s and share of matmul peak per row."""
    by_row = {r["row"]: r for r in results}
    for r in results:
        ceil = ceilings.get(r["row"])
        r["ceiling_images_per_s"] = ceil
        r["share_of_ceiling"] = r["images_per_s"] / ceil if ceil else None
        tg = torchgeo_row(r, by_row)
        r["vs_torchgeo_row"] = tg["row"] if tg else None
        r["x_torchgeo"] = r["images_per_s"] / tg["images_per_s"] if tg else None
        flops = r.get("step_flops")
        if flops:
            gflops = flops / r["step_s_mean"] / 1e9
            peak = peaks.get("bf16_gflops" if r["precision"] == "bf16-mixed" else
                             "fp32_gflops")
            r["achieved_gflops"] = gflops
            r["share_of_matmul_peak"] = gflops / peak if peak else None
            r["share_of_fp32_peak"] = (gflops / peaks["fp32_gflops"]
                                       if peaks.get("fp32_gflops") else None)


def table(results: list[dict]) -> str:
    rows = ["| method | variant | images/s (step) | images/s (incl. loading) | step s (median) | "
            "encoder passes/img (fwd+bwd, fwd) | ceiling images/s | % of ceiling | "
            "x torchgeo (same precision) | GFLOP/step | GFLOP/s | % of matmul peak | "
            "RSS before fit MB | peak RSS MB |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    for r in results:
        m = r["method"]
        passes = METHODS[m][1] or "-"
        pct = f"{100 * r['share_of_ceiling']:.0f}%" if r.get("share_of_ceiling") else "-"
        peak = (f"{100 * r['share_of_matmul_peak']:.0f}%"
                if r.get("share_of_matmul_peak") else "-")
        rows.append(
            f"| {m}: {r['description']} | {r['variant']} | {r['images_per_s']:.1f} | "
            f"{f(r.get('images_per_s_end_to_end'), '.1f')} | {r['step_s_median']:.3f} | "
            f"{passes} | {f(r.get('ceiling_images_per_s'), '.1f')} | {pct} | "
            f"{f(r.get('x_torchgeo'), '.2f')} | "
            f"{f(r['step_flops'] / 1e9 if r.get('step_flops') else None, '.1f')} | "
            f"{f(r.get('achieved_gflops'), '.1f')} | {peak} | "
            f"{r.get('rss_before_fit_mb') or 0:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(rows)


def ceilings_from(results: list[dict], batch_size: int) -> dict:
    """Ideal images/s per row from the bare backbone's measured fwd+bwd and fwd-only times at
    the row's variant: the encoder passes a method needs per image, nothing else (no heads,
    views, loss, optimiser)."""
    bare = {r["row"]: r for r in results if r["method"].startswith("bare")}
    out = {}
    for r in results:
        passes = METHODS[r["method"]][1]
        ref = bare.get(row_name("bare-s2" if r["method"] in STRIDE2 else "bare", r["variant"]))
        if ref is None or passes is None:
            continue
        fb, f = passes
        out[r["row"]] = batch_size / (fb * ref["fwd_bwd_s_mean"] + f * ref["fwd_only_s_mean"])
    return out


def _variants(text: str, p) -> list[str]:
    vs = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vs if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {', '.join(bad)}; expected {', '.join(VARIANTS)}")
    return vs


def _old_rows(old: dict) -> list[dict]:
    """Rows of a results file; files from before variants existed hold fp32 rows."""
    rows = []
    for r in old["results"]:
        r = dict(r)
        r.setdefault("variant", "fp32")
        r.setdefault("precision", "32-true")
        r.setdefault("channels_last", False)
        r.setdefault("row", row_name(r["method"], r["variant"]))
        rows.append(r)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="crop side in px")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--variants", default="fp32,bf16,bf16-cl",
                   help=f"variants of the bare and eossl rows, from {', '.join(VARIANTS)} "
                        "(-cl: channels-last)")
    p.add_argument("--torchgeo-variants", default="fp32,bf16",
                   help="variants of the torchgeo rows")
    p.add_argument("--profile", type=int, default=2,
                   help="replays of eossl's step, timed part by part (0: off)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--append", action="store_true",
                   help="keep the other rows' results already in --out (same settings), "
                        "so a long comparison can run in several sittings")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; expected {', '.join(METHODS)}")
    variants, tg_variants = _variants(args.variants, p), _variants(args.torchgeo_variants, p)
    jobs = [(m, v) for m in methods for v in (tg_variants if is_torchgeo(m) else variants)]
    import tempfile

    from eossl.data import samples, sources

    # the machine's matmul peaks, measured in this run (before the rows, on the same threads)
    peaks = {"fp32_gflops": matmul_peak_gflops("float32"),
             "bf16_gflops": matmul_peak_gflops("bfloat16"), "matmul_n": 2048}
    print(f"# matmul peak: {peaks['fp32_gflops']:.0f} GFLOP/s float32, "
          f"{peaks['bf16_gflops']:.0f} GFLOP/s bfloat16", file=sys.stderr, flush=True)
    stats_file = Path(tempfile.mkstemp(suffix=".json", prefix="eossl-stats-")[1])
    stats_file.write_text(json.dumps(sources.brandenburg(samples.cache_dir()).stats().to_dict()))
    results = []
    for m, v in jobs:
        cmd = [sys.executable, __file__, "--worker", m, "--variant", v,
               "--stats", str(stats_file), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
               "--size", str(args.size), "--profile", str(args.profile)]
        print(f"# running {row_name(m, v)} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"{row_name(m, v)}: worker failed (exit {proc.returncode})")
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"#   {row_name(m, v)}: {results[-1]['images_per_s']:.1f} images/s",
              file=sys.stderr, flush=True)

    stats_file.unlink()
    order = list(METHODS)
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        same = all(old["settings"].get(k) == getattr(args, k) for k in ("batch_size", "size"))
        if not same:
            raise SystemExit(f"{args.out}: --append needs the same --batch-size and --size as "
                             f"the results there ({old['settings']})")
        fresh = {r["row"] for r in results}
        results = [r for r in _old_rows(old) if r["row"] not in fresh] + results
    results.sort(key=lambda r: (order.index(r["method"]), list(VARIANTS).index(r["variant"])))
    ceilings = ceilings_from(results, args.batch_size)
    derived(results, ceilings, peaks)
    info = machine_info()
    md = table(results)
    print(f"\nMachine: {info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']}, "
          f"{info['torch_threads']} threads; matmul peak {peaks['fp32_gflops']:.0f} GFLOP/s "
          f"fp32, {peaks['bf16_gflops']:.0f} GFLOP/s bf16; batch {args.batch_size}, "
          f"{args.size} px, 13 bands, {args.steps} timed steps after {args.warmup} warm-up\n")
    print(md)
    for r in results:
        if "breakdown_s" in r:
            total = sum(v for k, v in r["breakdown_s"].items() if not k.startswith("(ref)"))
            print(f"\n{r['row']} step breakdown (mean of "
                  f"{r.get('profile_repeats', args.profile)} replays, "
                  f"{total:.2f} s):\n\n| part | s | share |\n|---|---:|---:|")
            for k, v in r["breakdown_s"].items():
                share = "" if k.startswith("(ref)") else f"{100 * v / total:.0f}%"
                print(f"| {k} | {v:.3f} | {share} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps({
        "benchmark": "throughput", "machine": info, "matmul_peak": peaks,
        "settings": {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                     "size": args.size, "bands": 13, "num_workers": 0,
                     "variants": variants, "torchgeo_variants": tg_variants,
                     "data": "brandenburg RandomCropDataset (in-memory), seed 0",
                     "note": "each result's timed_steps says how many steps it timed; "
                             "step_flops are counted on one extra, untimed step"},
        "ceilings_images_per_s": ceilings, "results": results, "markdown": md}, indent=2))
    tmp.replace(args.out)  # atomic: a killed run leaves the old file intact
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
