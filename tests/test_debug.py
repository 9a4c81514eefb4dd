"""debug=fdr|limit|overfit|profiler: short debugging runs, as lightning-hydra-template has them."""

import json
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.config import CONF_DIR
from fodl.train import train
from tensorboard_api import TensorBoard


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode", ["fdr", "limit", "overfit", "profiler"])
def test_debug_runs_go_to_their_own_folder(mode):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"debug={mode}"], return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert run_dir.startswith("${paths.log_dir}/debug/${task_name}/runs/")
    assert cfg.trainer.devices == 1


def test_fdr_runs_one_batch_of_each_and_writes_nothing_else(tmp_path, tiny_mnist):
    metrics = train(train_cfg(tmp_path, tiny_mnist, "debug=fdr"))
    run = tmp_path / "run"
    assert _files(run) == ["metrics.json"]  # no logger, no checkpoint
    assert {"train/loss", "val/acc", "test/acc"} <= set(metrics)


def test_limit_is_a_small_real_run(tmp_path, tiny_mnist):
    train(train_cfg(tmp_path, tiny_mnist, "debug=limit"))
    run = tmp_path / "run"
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 2 * 5      # 2 epochs of 5 batches
    assert last["fodl_config"]["trainer"]["detect_anomaly"] is True
    tb = TensorBoard(run)
    assert len(tb.scalars("tensorboard", "val/acc")) == 2
    (group,) = tb.session_groups()
    assert group["sessions"][0]["status"] == "STATUS_SUCCESS"


def test_overfit_trains_on_the_same_batches_until_the_loss_is_near_zero(tmp_path, tiny_mnist, monkeypatch):
    from fodl.models.classifier import ClassifierModule

    seen = []
    real = ClassifierModule.training_loss

    def record(self, batch):
        seen.append(batch[1][:8].tolist())
        return real(self, batch)

    monkeypatch.setattr(ClassifierModule, "training_loss", record)
    metrics = train(train_cfg(tmp_path, tiny_mnist, "debug=overfit", "trainer.max_epochs=40",
                              "optimizer.lr=0.05"))
    assert len(seen) == 40 * 3 and all(seen[i] == seen[i % 3] for i in range(len(seen)))
    run = tmp_path / "run"
    tb = TensorBoard(run)
    losses = [v for _, v in tb.scalars("tensorboard", "train/loss")]
    assert len(losses) == 40 and losses[-1] < 0.05 * losses[0] and metrics["train/loss"] < 0.1
    assert len(tb.scalars("tensorboard", "val/acc")) == 1               # only at the end
    assert not list(run.rglob("*.ckpt")) and "test/acc" not in metrics


def test_profiler_traces_open_in_tensorboard(tmp_path, tiny_mnist):
    train(train_cfg(tmp_path, tiny_mnist, "debug=profiler"))
    run = tmp_path / "run"
    traces = sorted((run / "profiler").glob("*.pt.trace.json"))
    assert len(traces) == 2 and "training_step" in traces[0].name and "validation_step" in traces[1].name
    assert json.loads(traces[0].read_text())["traceEvents"]
    assert "Profiler Report" in (run / "profiler" / "fit-profile.txt").read_text()
    assert not list(run.rglob("*.ckpt"))
    # TensorBoard's PyTorch Profiler tab (torch-tb-profiler, in the dev and profile extras)
    pytest.importorskip("torch_tb_profiler")
    tb = TensorBoard(tmp_path, installed_plugins=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # the plugin parses the traces in background processes
        runs = tb.get("/data/plugin/pytorch_profiler/runs")
        if runs["runs"] and not runs["loading"]:
            break
        time.sleep(0.5)
    assert runs["runs"] == ["run/profiler"], runs
    workers = tb.get("/data/plugin/pytorch_profiler/workers", run="run/profiler", view="Overview")
    worker = next(w for w in workers if w.endswith("training_step"))
    (span,) = tb.get("/data/plugin/pytorch_profiler/spans", run="run/profiler", worker=worker)
    overview = tb.get("/data/plugin/pytorch_profiler/overview", run="run/profiler", worker=worker, span=span)
    assert overview["steps"]["rows"]  # the profiled training steps, with their time breakdown
