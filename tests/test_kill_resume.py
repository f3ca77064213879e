"""Never lose work: a pretraining run killed with SIGKILL after a checkpoint resumes with
--resume and ends exactly where an uninterrupted run ends (same steps, loss and weights), in
deterministic mode. Part of the default suite (and so of CI): it is the proof of resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import torch
import yaml

STEPS = 10  # the Trainer logs every 10 steps: the last logged loss is the final step's


def _config(tmp_path):
    cfg = {"method": "moco", "seed": 7,
           # 6 batches per epoch: the run crosses epochs and is killed mid-epoch
           "data": {"crop_size": 32, "batch_size": 8, "crops_per_epoch": 48},
           "trainer": {"checkpoint_every_n_steps": 4, "val_every_n_steps": 1000,
                       "accelerator": "cpu", "deterministic": True}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(cache, cfg, out, *extra):
    return [sys.executable, "-m", "eossl.cli", "--cache", str(cache), "pretrain", "--config",
            str(cfg), "--max-steps", str(STEPS), "--out", str(out), "--no-progress", *extra]


def _final(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    m = pd.read_csv(run / "logs" / "metrics.csv")
    loss = m[["step", "train/loss"]].dropna().iloc[-1]
    return ckpt, float(loss["train/loss"]), int(loss["step"])


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(sample_cache, tmp_path):
    cfg = _config(tmp_path)
    # One thread per process, in every run (the same arithmetic throughout): the uninterrupted
    # run goes on beside the killed one and its resumption, on the other core, so the test
    # pays for two process lifetimes in a row instead of three.
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    with open(tmp_path / "full.log", "w") as log:
        full_proc = subprocess.Popen(_cmd(sample_cache, cfg, full), env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        try:
            proc = subprocess.Popen(_cmd(sample_cache, cfg, run), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 300
            while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            assert last.exists() and not (run / "summary.json").exists(), \
                "run was not killed mid-way"
            killed_at = torch.load(last, weights_only=True)["global_step"]
            assert 4 <= killed_at < STEPS and killed_at % 6, killed_at  # mid-epoch
            # no half-written checkpoint left behind by the kill is ever trusted
            assert not list((run / "checkpoints").glob("*.part"))

            res = subprocess.run(_cmd(sample_cache, cfg, run, "--resume"), env=env,
                                 timeout=300, capture_output=True, text=True)
            assert res.returncode == 0, res.stderr[-2000:]
            full_proc.wait(timeout=300)
        finally:
            full_proc.kill()  # no-op when it has ended
    assert full_proc.returncode == 0, (tmp_path / "full.log").read_text()[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from_step"] == killed_at

    a, loss_a, step_a = _final(full)
    b, loss_b, step_b = _final(run)
    assert a["global_step"] == b["global_step"] == STEPS
    assert step_a == step_b == STEPS - 1  # 0-based: the loss of the final step
    assert loss_a == loss_b and loss_a == loss_a  # bit-identical, and not NaN
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
