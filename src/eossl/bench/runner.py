"""Run a benchmark: pretrain every (method, seed) under one budget, then every evaluation that
applies, recording failures instead of stopping, and skipping whatever is already finished."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from functools import partial
from pathlib import Path

from ..config import DEFAULTS, RECIPES_DIR, load_config
from ..errors import ConfigError, EosslError
from .plan import BenchmarkFolder, Plan, RunInfo

CONFIG_DIRS = (Path.cwd() / "configs", RECIPES_DIR)


def recipe_for(method: str) -> Path | None:
    """The CPU-sized recipe of a method (configs/METHOD-cpu.yaml) when there is one."""
    for d in CONFIG_DIRS:
        p = d / f"{method}-cpu.yaml"
        if p.is_file():
            return p
    return None


def run_config(plan: Plan, method: str, seed: int) -> dict:
    """The pretraining config of one run: the method's CPU recipe, then the plan's shared
    settings (backbone, budget, seed) on top, so every method gets the same backbone and
    budget. Methods that need other data than the plan's (time series, sensor pairs) name it
    in a ``default_data`` class attribute, or their recipe names it: ``plan.data`` replaces the
    recipe's data only where the recipe trains on the default scene (crop-based methods), since
    SeCo cannot learn seasons from one date nor RS-BYOL radar/optical pairs from S2 alone."""
    from ..methods import get_method

    cls = get_method(method)
    recipe = recipe_for(method)
    recipe_data = load_config(recipe)["data"]["name"]
    data = getattr(cls, "default_data", None) or (
        plan.data if recipe_data == DEFAULTS["data"]["name"] else recipe_data)
    # the user's data options (labels, sensor, split, ...) go with the plan's own data only
    opts = {f"data.{k}": v for k, v in (getattr(plan, "data_options", None) or {}).items()
            } if data == plan.data else {}
    b = plan.budget_obj
    # where it runs: only what the user named (the recipe's or Lightning's choice otherwise)
    where = {f"trainer.{k}": getattr(plan, k) for k in plan.RUNTIME
             if getattr(plan, k, None) is not None}
    # the plan's budget replaces the recipe's whole budget (config.py's merge rule)
    return load_config(recipe, {"method": method, "seed": seed, "model.backbone": plan.backbone,
                                "data.name": data, **opts, **where,
                                "trainer.max_time": f"{b.seconds:g}s" if b.seconds else None,
                                "trainer.max_steps": b.steps})


def evaluation_device(plan: Plan) -> str:
    """The one device the evaluations run on (their fits are single-device): the plan's
    ``--accelerator`` and, when ``--devices`` names one device index, that one; a device
    count (pretraining on several) gives the first device."""
    import re

    from ..commands._options import torch_device

    devices = str(plan.devices or "1").replace(" ", "")
    if not re.fullmatch(r"\[?(\d+)(,\]?|\])", devices):  # a count, auto, -1: the first one
        devices = "1"
    return str(torch_device(plan.accelerator, devices))


@contextlib.contextmanager
def evaluation_threads():
    """One BLAS thread while an evaluation runs, and Lightning's per-fit banners muted.

    Evaluations alternate torch (OpenMP threads that spin after each op) with scikit-learn
    (OpenBLAS threads): with both pools on the same cores a logistic regression on 254 x 512
    features took 16.6 s instead of 0.25 s on the 2-core benchmark machine. torch keeps its
    own threads; only the BLAS pool is limited. The fine-tuning evaluations start a Lightning
    Trainer per fit, whose GPU/TPU/tip lines would bury the benchmark's progress lines."""
    from threadpoolctl import threadpool_limits

    from ..train import LIGHTNING_LOGGERS

    quiet = [logging.getLogger(n) for n in LIGHTNING_LOGGERS]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)


def _short(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if not isinstance(e, EosslError) else msg


def pretrain_all(plan: Plan, folder: BenchmarkFolder, cache=None, progress: bool = True,
                 echo=print) -> list[RunInfo]:
    from ..train import pretrain

    runs: list[RunInfo] = []
    total, i = len(plan.methods) * len(plan.seeds), 0
    for method in plan.methods:
        for seed in plan.seeds:
            i += 1
            key, run_dir = f"{method}/seed{seed}", folder.run_dir(method, seed)
            ckpt = run_dir / "checkpoints" / "last.ckpt"
            done = finished_run(folder, folder.status()["runs"], method, seed)
            if done is not None:
                echo(f"[{i}/{total}] {key}: finished earlier, kept")
                runs.append(done)
                continue
            resume = ckpt.exists() and (run_dir / "config.yaml").exists()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)  # our own half-started run folder, nothing to keep
            echo(f"[{i}/{total}] pretraining {key} ({plan.budget_obj})"
                 + (" - resuming" if resume else ""))
            try:
                cfg = run_config(plan, method, seed)
                res = pretrain(cfg, run_dir, resume=resume, cache=cache, progress=progress)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one method failing must not stop the others
                folder.set_status("runs", key, {"state": "failed", "error": _short(e),
                                                "traceback": traceback.format_exc(limit=6)})
                echo(f"      FAILED: {_short(e)}")
                continue
            summary = json.loads((run_dir / "summary.json").read_text())
            info = {"state": "done", "steps": res.steps, "seconds": round(res.seconds, 1),
                    "images_per_s": res.images_per_s, "data": cfg["data"]["name"],
                    "collapse": summary.get("collapse")}
            folder.set_status("runs", key, info)
            runs.append(RunInfo(method, seed, run_dir, res.checkpoint, info))
    return runs


def _recorded(folder: BenchmarkFolder, key: str, fn, label: str, echo):
    """Run one evaluation step under evaluation_threads(): ``(True, result, seconds)``, or
    ``(False, None, None)`` after recording the failure under ``key`` in status.json, so one
    failing evaluation never stops the others."""
    t0 = time.perf_counter()
    try:
        with evaluation_threads():
            result = fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        folder.set_status("evals", key, {"state": "failed", "error": _short(e),
                                         "traceback": traceback.format_exc(limit=6)})
        echo(f"      {label} FAILED: {_short(e)}")
        return False, None, None
    return True, result, round(time.perf_counter() - t0, 1)


def benchmark_evaluations(plan: Plan) -> list[str]:
    """The evaluations a plan runs: its list, or every registered one meant for benchmarks."""
    from ..evaluate.base import available_evaluations, get_evaluation

    return plan.evaluations or [n for n in available_evaluations()
                                if get_evaluation(n).in_benchmark]


def _evaluation(name: str, plan: Plan):
    """The evaluation with the plan's label fractions (where it has fractions) and --quick."""
    from ..evaluate.base import get_evaluation

    cls = get_evaluation(name)
    kw = {"fractions": tuple(plan.fractions)} if "fractions" in cls.settings else {}
    return cls(quick=plan.quick, **kw)


def evaluation_data(plan: Plan, ev):
    """The data request an evaluation of the plan runs on: the plan's own data when they
    carry labels (or are the sample scene), else the sample scene; an evaluation with data of
    its own kind (multi-label: BigEarthNet) keeps its default."""
    from ..data.resolve import DataRequest

    if ev.default_data != "brandenburg":
        return DataRequest(data=ev.default_data)
    opts = dict(plan.data_options or {})
    if opts.get("labels") or plan.data in ("brandenburg", "brandenburg-patches"):
        return DataRequest(data=plan.data, **opts)
    return DataRequest(data="brandenburg")


def evaluate_all(plan: Plan, folder: BenchmarkFolder, runs: list[RunInfo], cache=None,
                 echo=print, progress: bool = True, stop=None) -> None:
    """Every evaluation of the plan on every run it applies to and on every encoder pretrained
    elsewhere (``plan.encoders``), beside the encoder-free baseline and the random twins of
    those encoders (one per distinct architecture and inputs, per seed), each step saved as it
    finishes; a failure is recorded and the next step runs. The protocol and the folds each
    evaluation ran with go into status.json for the report."""
    from ..checkpoint import load_encoder
    from ..evaluate.base import Context, row_info, twin_rows

    contexts: dict = {}
    encoders = {}
    for run in runs:
        try:
            encoders[(run.method, run.seed)] = load_encoder(run.checkpoint)
        except Exception as e:  # an unreadable checkpoint fails its evaluations, not all
            folder.set_status("runs", f"{run.method}/seed{run.seed}",
                              {**run.summary, "state": "failed", "error": _short(e)})
    rows = list(runs) + external_rows(plan, folder, encoders)
    first: dict = {}
    for (method, _), enc in encoders.items():
        first.setdefault(method, enc)
    groups = twin_rows(first)
    twin_of = {m: t for t, members in groups.items() for m in members}
    device = evaluation_device(plan)
    for name in benchmark_evaluations(plan):
        ev = _evaluation(name, plan)
        req = evaluation_data(plan, ev)
        ctx = contexts.setdefault(req.data, Context(req, cache=cache, root=folder.root,
                                                    device=device,
                                                    options={"first_seed": plan.seeds[0]}))
        why = ev.available(ctx)
        if why:
            folder.set_status("evals", name, {"state": "not available", "reason": why})
            continue
        todo, twins = [], {}
        for run in rows:
            enc = encoders.get((run.method, run.seed))
            if enc is None:
                continue
            reason = ev.applies(enc)
            if reason:
                folder.set_status("evals", f"{name}/{run.method}/seed{run.seed}",
                                  {"state": "not applicable", "reason": reason})
                continue
            info = {**row_info(run.method, enc, twin_of[run.method] if ev.twins else None),
                    "pretraining": ev.pretraining_note(ctx, enc)}
            if run.method in plan.encoders:
                info["origin"] = external_origin(enc, plan.encoders[run.method])
            todo.append((run.method, run.seed, enc, {run.method: info}))
            if ev.twins:
                twins.setdefault((twin_of[run.method], run.seed), enc)
        if not todo:
            continue
        step = partial(_step, folder, name, ctx=ctx, progress=progress, echo=echo, stop=stop)
        for seed in plan.seeds:
            step("_baseline", seed, partial(ev.baseline, ctx, seed))
        for method, seed, enc, info in todo:
            step(method, seed, partial(_evaluate_rows, ev, ctx, {method: enc}, info, seed))
        for (twin, seed), enc in twins.items():
            def job(twin=twin, enc=enc, seed=seed, ev=ev, ctx=ctx):
                t = enc.random_twin(seed)
                rows = {twin: {**row_info(twin, t), "twin_of": groups[twin]}}
                return _evaluate_rows(ev, ctx, {twin: t}, rows, seed)

            step(f"_twin {twin}", seed, job)
        folder.set_status("protocols", name, {"params": ev.params(), "text": ev.protocol(),
                                               "splits": ev.splits(ctx)})


def external_rows(plan: Plan, folder: BenchmarkFolder, encoders: dict) -> list[RunInfo]:
    """The encoders pretrained elsewhere as rows of every seed (the seed draws the fits and
    the random twin; the weights are the same): each read once into ``encoders``, and what
    it is recorded in status.json (``external``) for the report. An unreadable one is
    recorded as failed; the others go on."""
    from ..checkpoint import load_encoder

    rows = []
    for name, path in plan.encoders.items():
        try:
            enc = load_encoder(path)
        except Exception as e:
            folder.set_status("external", name, {"state": "failed", "path": path,
                                                 "error": _short(e)})
            continue
        pd = enc.metadata.get("pretrain_data") or {}
        folder.set_status("external", name, {
            "state": "done", "path": path, "encoder": enc.describe(),
            "origin": external_origin(enc, path),
            "pretrained_on": pd.get("data") or "not recorded"})
        for seed in plan.seeds:
            encoders[(name, seed)] = enc
            rows.append(RunInfo(name, seed, Path(path), Path(path), {"external": True}))
    return rows


def external_origin(encoder, path: str) -> str:
    """What a --checkpoint row is, for the report: weights from elsewhere, or an eossl
    checkpoint or export, and that this benchmark did not pretrain it."""
    from ..evaluate.base import origin

    what = origin(encoder) or (f"an eossl {encoder.metadata.get('method', '')} encoder from "
                               f"{Path(path).name}").replace("  ", " ")
    return f"{what}; given by --checkpoint, not pretrained by this benchmark"


def _evaluate_rows(ev, ctx, encoders: dict, rows: dict, seed: int) -> list[dict]:
    return ev.run(ctx, encoders, seed) + ev.model_records(rows, seed)


def _step(folder: BenchmarkFolder, name: str, model: str, seed: int, fn, *, ctx=None,
          progress: bool = False, echo=print, stop=None) -> None:
    """One saved step of an evaluation (kept when it already finished), with a bar of its
    folds (and fine-tuning steps) while it runs; none when ``stop()`` says so."""
    if folder.load_eval(name, model, seed) is not None or (stop is not None and stop()):
        return
    key = f"{name}/{model}/seed{seed}"
    label = f"{name}: {model.lstrip('_')} seed {seed}"
    with folder.claim(name, model, seed) as mine:
        # another evaluation worker runs it, or finished it since the check above
        if not mine or folder.load_eval(name, model, seed) is not None:
            return
        echo(f"      {label}")
        with contextlib.ExitStack() as stack:
            if ctx is not None:
                stack.enter_context(ctx.work(label, runs=1, enabled=progress, leave=False))
            ok, recs, seconds = _recorded(folder, key, fn, label, echo)
        if ok:
            folder.save_eval(name, model, seed, recs)
            folder.set_status("evals", key, {"state": "done", "seconds": seconds})


def run_benchmark(plan: Plan, out: str | Path, *, cache=None, progress: bool = True,
                  command: str = "", echo=print, eval_workers: int = 1) -> Path:
    """Pretrain every run, evaluate (with ``eval_workers`` processes sharing the steps), write
    the report."""
    from .report import write_benchmark_report

    if eval_workers < 1:
        raise ConfigError(f"--eval-workers {eval_workers}: expected at least 1")
    folder = BenchmarkFolder(out)
    resumed = folder.open(plan)
    if resumed:
        echo(f"resuming the benchmark in {folder.root}")
    from .report import environment

    folder.set_status("environment", "now", environment())
    echo = _session_clock(folder, command, echo)
    runs = pretrain_all(plan, folder, cache=cache, progress=progress, echo=echo)
    if eval_workers == 1:
        echo("evaluating")
        evaluate_all(plan, folder, runs, cache=cache, echo=echo, progress=progress)
    else:
        echo(f"evaluating with {eval_workers} worker processes")
        helpers = [_start_worker(folder, i, eval_workers, cache)
                   for i in range(2, eval_workers + 1)]
        try:
            with _thread_share(eval_workers):
                evaluate_all(plan, folder, runs, cache=cache, echo=echo, progress=progress)
        finally:
            codes = [h.wait() for h in helpers]
        if any(codes):  # a worker that died left its last step undone: run what is left
            echo(f"a worker ended with exit status {max(codes)}; finishing what it left")
            evaluate_all(plan, folder, runs, cache=cache, echo=echo, progress=progress)
    echo("writing the report")
    return write_benchmark_report(folder)


# Evaluation workers. The evaluations' fits are small (16-64 px patches, batches of 16-64), and
# torch's intra-op threads gain little on them: on the 2-core test machine one fine-tuning
# evaluation took 59 s with 2 threads and 80 s with one, while two single-threaded processes
# finished two of them in 81 s (1.46x the work per second). So a benchmark may run its
# evaluation steps in several processes, each with its share of the threads, taking steps by
# a claim file (BenchmarkFolder.claim) so no step runs twice. Processes rather than threads:
# each needs its own torch thread count and its own BLAS limits.
@contextlib.contextmanager
def _thread_share(workers: int):
    import torch

    before = torch.get_num_threads()  # torch's pool for this machine, shared out
    torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_worker(folder: BenchmarkFolder, index: int, workers: int, cache):
    import subprocess

    cmd = [sys.executable, "-m", "eossl.cli"]
    if cache:
        cmd += ["--cache", str(cache)]
    cmd += ["benchmark", "--out", str(folder.root), "--eval-worker", f"{index}/{workers}",
            "--no-progress"]
    return subprocess.Popen(cmd)


def finished_run(folder: BenchmarkFolder, status: dict, method: str, seed: int
                 ) -> RunInfo | None:
    """The run if its pretraining finished (recorded done, checkpoint on disk), else None."""
    st = status.get(f"{method}/seed{seed}", {})
    ckpt = folder.run_dir(method, seed) / "checkpoints" / "last.ckpt"
    if st.get("state") == "done" and ckpt.exists():
        return RunInfo(method, seed, folder.run_dir(method, seed), ckpt, st)
    return None


def finished_runs(plan: Plan, folder: BenchmarkFolder) -> list[RunInfo]:
    """The runs of the plan whose pretraining finished (what the evaluations take)."""
    status = folder.status()["runs"]
    return [r for m in plan.methods for s in plan.seeds
            if (r := finished_run(folder, status, m, s)) is not None]


def evaluation_worker(out: str | Path, index: int, workers: int, cache=None) -> None:
    """One extra evaluation process of ``run_benchmark(eval_workers=workers)``: the steps of
    the finished runs that no other worker has taken, then it ends (the first process writes
    the report)."""
    folder = BenchmarkFolder(out)
    plan = folder.load_plan()

    def echo(msg: str) -> None:
        print(f"[worker {index}/{workers}] {msg.strip()}", flush=True)

    parent = os.getppid()

    def orphaned() -> bool:  # the benchmark that started it was stopped: take no more steps
        return os.getppid() != parent

    with _thread_share(workers):
        evaluate_all(plan, folder, finished_runs(plan, folder), cache=cache, echo=echo,
                     progress=False, stop=orphaned)


def _session_clock(folder: BenchmarkFolder, command: str, echo):
    """``echo`` that also keeps this session's wall clock in status.json's ``sessions``.

    Updated at every progress line rather than once at the end, so a session that is killed
    (and later resumed) still counts the time it ran up to its last line in the report's total.
    """
    import json

    from ..report import atomic_write_text

    started = time.time()

    def tick(msg: str | None = None) -> None:
        st = folder.status()
        sessions = st.setdefault("sessions", [])
        if not sessions or sessions[-1].get("started") != started:
            sessions.append({"command": command, "started": started, "seconds": 0.0})
        sessions[-1]["seconds"] = round(time.time() - started, 1)
        atomic_write_text(folder.root / "status.json", json.dumps(st, indent=1))
        if msg is not None:
            echo(msg)

    tick()  # the session is on record from its first second
    return tick
