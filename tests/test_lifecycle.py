"""The run folder's lifecycle: made only once everything checks out, removed when a new run
fails before its first checkpoint, never deleted from or truncated by --resume, and Ctrl-C
that tells how to continue. Each test names the hostile-user finding it covers (items of
docs/hostile-input.md's "Runs that never lose work" section) and fails on the code before it.
"""

import os
import shutil
import signal

import pandas as pd
import pytest
import torch
import yaml
from test_hostile import cli_output as cli
from test_hostile import one_line as hostile_one_line

from eossl.cli import main

SMALL = ["--batch-size", "4", "--crop-size", "16", "--set", "data.crops_per_epoch=32",
         "--no-progress"]


def one_line(err, *needles):  # lifecycle messages (Ctrl-C) are not all errors
    return hostile_one_line(err, *needles, prefix="eossl: ")


def _step(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory, sample_cache):
    """A finished 12-step SimCLR run (the CSV logger writes a row every 10 steps)."""
    run = tmp_path_factory.mktemp("life") / "simclr"
    code = main(["--cache", str(sample_cache), "pretrain", "--method", "simclr",
                 "--max-steps", "12", "--out", str(run), *SMALL])
    assert code == 0
    return run


# Each test resumes a copy of the module's run in another folder; Lightning notes that the
# checkpoint folder moved (what the copy is).
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_keeps_metrics_and_cleans_part_files(capsys, simclr_run, tmp_path, sample_cache):
    """Items 2 and 9: --resume never deletes or truncates logs/metrics.csv (Lightning's CSV
    logger did, even when the resume had nothing to do), and a checkpoint temporary left by a
    SIGKILL during a write is removed when the run starts again."""
    run = tmp_path / "copy"
    shutil.copytree(simclr_run, run)
    metrics = run / "logs" / "metrics.csv"
    before = metrics.read_bytes()
    assert len(pd.read_csv(metrics)) >= 1
    stale = run / "checkpoints" / ".last.ckpt.k1ll3d.ckpt.part"
    stale.write_bytes(b"\0" * 1000)  # what a SIGKILL mid-write leaves
    code, out, err = cli(capsys, "--cache", sample_cache, "pretrain", "--out", run, "--resume",
                         "--no-progress")
    assert code == 0, err
    assert "nothing to do" in out and "simclr" in out
    assert metrics.read_bytes() == before and not stale.exists()
    code, out, err = cli(capsys, "--cache", sample_cache, "pretrain", "--out", run, "--resume",
                         "--max-steps", "22", "--no-progress")
    assert code == 0, err
    rows = pd.read_csv(metrics)
    assert list(rows["step"].iloc[:1]) == list(pd.read_csv(simclr_run / "logs" /
                                                           "metrics.csv")["step"].iloc[:1])
    assert rows["step"].max() >= 19 and len(rows) >= 2  # the old rows, then the new session's
    assert _step(run) == 22


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # a copy, as above
def test_resume_restores_its_own_method_and_refuses_changes(capsys, simclr_run, tmp_path,
                                                          sample_cache):
    """Item 3: --resume continues the run with its own method and options, takes a new budget,
    refuses any other change in one line, and says truthfully what it did (it printed
    "pretrained moco" for a SimCLR run, and ignored --max-time)."""
    run = tmp_path / "copy"
    shutil.copytree(simclr_run, run)
    for args, needle in ((["--method", "byol"], "method='simclr', asked for method='byol'"),
                         (["--bands", "B02,B03"], "data.bands unset, asked for "
                                                  "data.bands=B02,B03"),
                         (["--lr", "0.5"], "model.lr unset, asked for model.lr=0.5")):
        code, _, err = cli(capsys, "pretrain", "--out", run, "--resume", "--max-time", "60s",
                           *args)
        assert code == 2 and one_line(err, needle, "--max-time and --max-steps can change")
    assert _step(run) == 12
    code, out, err = cli(capsys, "--cache", sample_cache, "pretrain", "--out", run, "--resume",
                         "--max-steps", "14", "--no-progress")
    assert code == 0, err
    assert "resumed simclr at step 12: 2 more steps" in out and _step(run) == 14
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == "simclr" and saved["trainer"]["max_steps"] == 14  # what ran


def test_a_start_killed_before_its_first_checkpoint_does_not_block(capsys, tmp_path,
                                                                 sample_cache):
    """Item 5: what a SIGKILL before the first checkpoint leaves (config.yaml, logs, a
    temporary checkpoint) no longer blocks the same command ("already exists; pass --resume"
    before, and --resume said "nothing to resume")."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "logs").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "method": "moco", "trainer": {"max_steps": 2, "max_time": None},
        "data": {"batch_size": 4, "crop_size": 16, "crops_per_epoch": 32}}))
    (run / "checkpoints" / ".last.ckpt.x.ckpt.part").write_bytes(b"\0" * 100)
    leftover = dict((p.relative_to(run), p.read_bytes()) for p in run.rglob("*") if p.is_file())
    args = ["--cache", sample_cache, "pretrain", "--max-steps", "2", "--out", run, *SMALL]
    backup = tmp_path / "backup"
    shutil.copytree(run, backup)
    code, _, err = cli(capsys, *args)  # a plain rerun
    assert code == 0, err
    assert _step(run) == 2 and not list(run.rglob("*.part"))
    shutil.rmtree(run)
    shutil.copytree(backup, run)
    assert dict((p.relative_to(run), p.read_bytes()) for p in run.rglob("*")
                if p.is_file()) == leftover
    code, out, err = cli(capsys, "--cache", sample_cache, "pretrain", "--out", run, "--resume",
                         "--no-progress")  # or --resume: the run's own config, from step 0
    assert code == 0, err
    assert _step(run) == 2 and "resumed moco at step 0" in out


def _interrupt_at(monkeypatch, batches):
    """Send this process SIGINT (a real Ctrl-C) after each batch index in ``batches``."""
    from eossl.train import TrainingState

    def hook(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in batches:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TrainingState, "on_train_batch_end", hook, raising=False)


def test_ctrl_c_says_how_to_continue_and_exits_130(capsys, tmp_path, sample_cache,
                                                   monkeypatch):
    """Item 8: Ctrl-C exited 1 with nothing printed (Lightning's own exit). Now the first one
    finishes the step and saves, the message names the folder and --resume, status 130; and
    --resume then continues from the step where it stopped."""
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, {2})
    code, _, err = cli(capsys, "--cache", sample_cache, "pretrain", "--max-steps", "50",
                       "--out", run, *SMALL)
    assert code == 130
    assert one_line(err.splitlines()[-1], "interrupted at step 2", f"--resume --out {run}")
    assert _step(run) == 2
    monkeypatch.undo()
    code, out, err = cli(capsys, "--cache", sample_cache, "pretrain", "--out", run, "--resume",
                         "--max-steps", "4", "--no-progress")
    assert code == 0, err
    assert "resumed moco at step 2" in out and _step(run) == 4


def test_second_ctrl_c_before_first_checkpoint_leaves_nothing(capsys, tmp_path, sample_cache,
                                                            monkeypatch):
    """Item 8 (and 5): two Ctrl-C stop at once; with no checkpoint yet, the new run's folder is
    removed and the message says to rerun, not to --resume."""
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, {1, 2})

    def stop_now(self, signum, frame):  # a second Ctrl-C arrives before the step ends
        self.requested = True
        raise KeyboardInterrupt

    from eossl.train import StopOnInterrupt

    monkeypatch.setattr(StopOnInterrupt, "_on_sigint", stop_now)
    # the handler in place before the run (Python's default, or whatever an earlier test in
    # this process left: some libraries set SIG_IGN in the parent) must be the one after it
    before = signal.getsignal(signal.SIGINT)
    code, _, err = cli(capsys, "--cache", sample_cache, "pretrain", "--max-steps", "50",
                       "--out", run, *SMALL)
    assert code == 130 and one_line(err, "interrupted", "no checkpoint", "rerun the command")
    assert not run.exists()
    assert signal.getsignal(signal.SIGINT) is before  # restored
