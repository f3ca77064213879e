"""Pretraining's loggers (--logger csv|tensorboard|mlflow|wandb) and its budget progress bar,
on the real sample scene: every tracker receives the loss, a resumed run logs to the same
MLflow run and keeps appending to metrics.csv, and the bar counts toward the run's budget."""

from __future__ import annotations

import csv
import json

import pytest

from eossl.cli import main
from eossl.config import load_config
from eossl.errors import ConfigError
from eossl.progress import BudgetBar, budget_fraction, describe_budget
from eossl.train import pretrain


def tiny_cfg(steps: int, loggers: list[str]) -> dict:
    cfg = load_config("moco-cpu", {
        "data.crop_size": 16, "data.batch_size": 4, "data.crops_per_epoch": 64,
        "model.queue_size": 64, "trainer.max_steps": steps, "trainer.accelerator": "cpu",
        "trainer.loggers": loggers})
    return cfg


def loss_steps(metrics_csv) -> list[int]:
    with open(metrics_csv, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_tensorboard_mlflow_csv_and_resume(sample_cache, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    pretrain(tiny_cfg(10, ["csv", "tensorboard", "mlflow"]), out, cache=sample_cache,
             progress=True)
    bar = capsys.readouterr().out
    # one bar for the whole run, filled toward the step budget (not an epoch of 16 batches)
    assert "step 10/10" in bar and "pretrain: 100%" in bar and "Epoch" not in bar

    assert loss_steps(out / "logs" / "metrics.csv") == [9]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [9]
    ids = json.loads((out / "logs" / "loggers.json").read_text())
    client = MlflowClient((out / "mlruns").absolute().as_uri())
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == "run"
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "train/loss")] == [9]
    assert run.data.params["backbone"] == "resnet18"  # the method's hyper-parameters

    # resumed: the same MLflow run and metrics.csv continue, nothing is started anew
    cfg = tiny_cfg(20, ["csv", "tensorboard", "mlflow"])
    pretrain(cfg, out, resume=True, cache=sample_cache, progress=False)
    assert json.loads((out / "logs" / "loggers.json").read_text()) == ids
    assert loss_steps(out / "logs" / "metrics.csv") == [9, 19]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "train/loss")] == [9, 19]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_wandb_logs_offline(sample_cache, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is eossl's default
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    pretrain(tiny_cfg(10, ["wandb"]), out, cache=sample_cache, progress=False)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert json.loads((out / "logs" / "loggers.json").read_text())["wandb"] in runs[0].name


def test_missing_tracker_is_refused_before_any_work(sample_cache, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"--logger wandb: the wandb package is not "
                                          r"installed; pip install 'eossl\[loggers\]'"):
        pretrain(tiny_cfg(2, ["csv", "wandb"]), out, cache=sample_cache, progress=False)
    assert not out.exists()


def test_logger_option_and_config_field(capsys):
    assert main(["pretrain", "--config", "moco-cpu", "--logger", "csv", "--logger",
                 "tensorboard,mlflow", "--print-config"]) == 0
    assert "loggers:\n  - csv\n  - tensorboard\n  - mlflow\n" in capsys.readouterr().out
    assert load_config("moco-cpu")["trainer"]["loggers"] == ["csv"]  # the default
    assert main(["pretrain", "--logger", "tensorbord", "--print-config"]) == 2
    assert "trainer.loggers='tensorbord' (from --logger)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="names a logger twice"):
        load_config(None, {"trainer.loggers": "csv,csv"})


# ---------------------------------------------------------------------------- budget bar
def test_budget_fraction_is_whichever_limit_ends_first():
    assert budget_fraction(30, 5.0, 100, 25.0) == pytest.approx(0.3)
    assert budget_fraction(10, 20.0, 100, 25.0) == pytest.approx(0.8)
    assert budget_fraction(10, 999.0, None, 25.0) == 1.0
    assert budget_fraction(5, 0.0, None, None) == 0.0
    assert describe_budget(31, 12.4, 100, 25.0) == "step 31/100, 12/25 s"
    assert describe_budget(31, 12.4, None, 25.0) == "step 31, 12/25 s"


def test_budget_bar_eta_counts_from_a_resumed_start(capsys):
    import io

    buf = io.StringIO()
    b = BudgetBar("pretrain", max_steps=100, enabled=True, file=buf)
    b.update(50, 0.0)                  # resumed half-way
    b.tqdm.start_t -= 10.0             # 10 s later ...
    b.update(60, 10.0, extra="loss={0.4}")  # ... 10 % more: 40 % left takes 40 s
    b.close()
    last = buf.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "60%" in last and "step 60/100" in last and "<00:40" in last
    assert "loss={0.4}" in last  # braces in metric text are shown, not formatted
