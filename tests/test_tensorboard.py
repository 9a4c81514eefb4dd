"""What TensorBoard shows of a run, checked through TensorBoard itself (tests/tensorboard_api.py):
the HPARAMS trial of each run, the time series, histograms and first-layer filters."""

import io
import json
import os
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from conftest import ROOT, train_cfg
from fodl.train import train
from tensorboard_api import TensorBoard, hparam_values, metric_values


def _finished(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_a_run_is_one_hparams_trial_with_its_final_metrics(tmp_path, tiny_mnist):
    metrics = train(train_cfg(tmp_path, tiny_mnist, "trainer.max_epochs=2", "optimizer.lr=0.05"))
    # read as soon as train() returns: whatever was logged at the end must already be on disk
    tb = TensorBoard(tmp_path / "run")
    (group,) = tb.session_groups()
    (session,) = group["sessions"]
    assert session["status"] == "STATUS_SUCCESS"
    hp = hparam_values(group)
    assert hp["model"] == "mnist_mlp" and hp["optimizer"] == "sgd" and hp["scheduler"] == "none"
    assert hp["optimizer.lr"] == 0.05 and hp["data.batch_size"] == 100 and hp["seed"] == 42
    assert hp["trainer.max_epochs"] == 2 and hp["model.net.hidden"] == "[256, 256]"
    # what a person compares, not paths and class names
    assert not [k for k in hp if "_target_" in k or k.endswith("_dir") or "partial" in k]
    values = metric_values(group)
    for name in ("test/acc", "test/loss", "val/acc", "val/loss", "train/loss"):
        assert values[name] == pytest.approx(metrics[name], rel=1e-6), name
    assert _finished(tmp_path / "run")["test/acc"] == pytest.approx(values["test/acc"], rel=1e-6)
    # the HPARAMS columns: the compared hyperparameters and the run's metrics
    exp = tb.hparams_experiment()
    assert {"model", "optimizer", "optimizer.lr", "data.batch_size"} <= {h["name"] for h in exp["hparamInfos"]}
    assert {"test/acc", "val/acc", "train/loss"} <= {m["name"]["tag"] for m in exp["metricInfos"]}


def test_the_end_of_a_run_is_on_disk_when_train_returns(tmp_path, tiny_mnist):
    """The process may end right after train() (a job of a sweep, a script): nothing written at
    the end may wait for a flush at exit. os._exit runs no finalizer and no atexit hook, so only
    what train() itself put on disk survives."""
    script = (
        "import os, sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from conftest import train_cfg\n"
        "from fodl.train import train\n"
        f"train(train_cfg(Path({str(tmp_path)!r}), Path({str(tiny_mnist)!r}), 'trainer.max_epochs=1'))\n"
        "os._exit(0)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-3000:]
    (group,) = TensorBoard(tmp_path / "run").session_groups()
    assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert metric_values(group)["test/acc"] == pytest.approx(_finished(tmp_path / "run")["test/acc"])


def test_time_series_and_histograms_of_a_run(tmp_path, tiny_mnist):
    train(train_cfg(tmp_path, tiny_mnist, "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                    "data.batch_size=50", "data.steps_per_execution=2"))
    tb = TensorBoard(tmp_path / "run")
    assert tb.runs() == ["tensorboard"]
    scalars = tb.tags("scalars")["tensorboard"]
    assert {"train/loss", "train/loss_step", "val/loss", "val/acc", "test/loss", "test/acc"} <= set(scalars)
    assert len(tb.scalars("tensorboard", "val/acc")) == 2            # one point per epoch
    steps = tb.scalars("tensorboard", "train/loss_step")
    assert len(steps) >= 10 and steps[-1][0] > steps[0][0]           # per step, on the step axis
    hist = tb.tags("histograms")["tensorboard"]
    assert {"params/net.layers.0.weight", "params/net.layers.4.bias"} <= set(hist)
    h = tb.get("/data/plugin/histograms/histograms", run="tensorboard", tag="params/net.layers.0.weight")
    assert len(h) == 2                                                # each epoch
    d = tb.get("/data/plugin/distributions/distributions", run="tensorboard",
               tag="params/net.layers.0.weight")
    assert len(d) == 2                                                # the same, as distributions


def test_first_layer_filters_are_images(tmp_path, tiny_mnist):
    train(train_cfg(tmp_path, tiny_mnist, "model=mnist_cnn", "trainer.max_epochs=2", "test=false",
                    "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"))
    tb = TensorBoard(tmp_path / "run")
    assert "filters/first_conv" in tb.tags("images")["tensorboard"]
    images = tb.get("/data/plugin/images/images", run="tensorboard", tag="filters/first_conv", sample=0)
    assert len(images) == 2                                           # each epoch
    png = tb.client.get("/data/plugin/images/individualImage?" + images[-1]["query"])
    assert png.status_code == 200
    # the 32 5x5 filters of the first conv, 8 to a row, 1-pixel grid lines: 4x8 tiles
    assert Image.open(io.BytesIO(png.get_data())).size == (8 * 6 + 1, 4 * 6 + 1)


def test_a_failed_run_is_a_failed_trial(tmp_path, tiny_mnist, monkeypatch):
    from fodl.models.classifier import ClassifierModule

    calls = {"n": 0}
    real = ClassifierModule.training_loss

    def fails_in_epoch_2(self, batch):
        calls["n"] += 1
        if calls["n"] > 12:  # 1000 images / 100 per batch: 10 steps an epoch
            raise RuntimeError("boom")
        return real(self, batch)

    monkeypatch.setattr(ClassifierModule, "training_loss", fails_in_epoch_2)
    with pytest.raises(RuntimeError, match="boom"):
        train(train_cfg(tmp_path, tiny_mnist, "trainer.max_epochs=3"))
    (group,) = TensorBoard(tmp_path / "run").session_groups()
    assert group["sessions"][0]["status"] == "STATUS_FAILURE"
    assert hparam_values(group)["model"] == "mnist_mlp"
    assert "val/acc" in metric_values(group)                          # the epoch it finished


def test_csv_and_tensorboard_loggers_together(tmp_path, tiny_mnist):
    train(train_cfg(tmp_path, tiny_mnist, "logger=many", "trainer.max_epochs=1"))
    run = tmp_path / "run"
    hp = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hp["model"] == "mnist_mlp" and hp["optimizer.lr"] == 0.01
    assert "test/acc" in (run / "csv" / "metrics.csv").read_text()
    (group,) = TensorBoard(run).session_groups()
    assert "test/acc" in metric_values(group)


def test_runs_of_different_models_side_by_side(tmp_path, tiny_mnist):
    """Two runs under one logdir, as ``tensorboard --logdir outputs/`` sees a multirun: one trial
    each, and every run's own knobs are columns (no run's column list hides the other's)."""
    sweep = tmp_path / "sweep"
    for i, model in enumerate(("logreg", "mnist_cnn")):
        train(train_cfg(sweep, tiny_mnist, f"model={model}", "trainer.max_epochs=1",
                        "+trainer.limit_train_batches=2", run=f"{i}_model={model}"))
    groups = TensorBoard(sweep).session_groups()
    assert len(groups) == 2
    by_model = {hparam_values(g)["model"]: g for g in groups}
    assert set(by_model) == {"logreg", "mnist_cnn"}
    assert hparam_values(by_model["logreg"])["model.net.hidden"] == "[]"
    assert hparam_values(by_model["mnist_cnn"])["model.net.dropout"] == 0.5
    for model, g in by_model.items():
        run = next(sweep.glob(f"*_model={model}"))
        assert metric_values(g)["test/acc"] == pytest.approx(_finished(run)["test/acc"], rel=1e-6)


def test_a_resumed_run_is_its_own_trial(tmp_path, tiny_mnist):
    """A resume writes a new run directory that continues the curves (the old event files are
    copied in); its trial has its own hyperparameters and end, not those of the run it
    continues, whose directory still holds its own trial."""
    train(train_cfg(tmp_path, tiny_mnist, "trainer.max_epochs=1", "test=false", run="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    metrics = train(train_cfg(tmp_path, tiny_mnist, "trainer.max_epochs=2", f"ckpt_path={last}",
                              run="resumed"))
    (group,) = TensorBoard(tmp_path / "resumed").session_groups()
    assert hparam_values(group)["trainer.max_epochs"] == 2
    assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert metric_values(group)["test/acc"] == pytest.approx(metrics["test/acc"], rel=1e-6)
    both = {g["name"]: g for g in TensorBoard(tmp_path).session_groups()}
    assert set(both) == {"first/tensorboard", "resumed/tensorboard"}
    assert hparam_values(both["first/tensorboard"])["trainer.max_epochs"] == 1
