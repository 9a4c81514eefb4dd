"""Training through the real Hydra config + train() in-process (fast), on tiny real-format data."""

import json

import pytest
import torch

from conftest import SHARED_DATA, compose_train, shared_file, train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.errors import FodlError
from fodl.train import evaluate, train


@pytest.mark.parametrize("model", ["logreg", "mnist_mlp", "mnist_cnn"])
def test_fast_dev_run_every_model(tmp_path, tiny_mnist, model):
    cfg = train_cfg(tmp_path, tiny_mnist, f"model={model}", "+trainer.fast_dev_run=true", "test=false")
    metrics = train(cfg)
    assert "val/acc" in metrics and torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_model_selects_book_hyperparameters(tmp_path, tiny_mnist):
    cfg = train_cfg(tmp_path, tiny_mnist, "model=logreg")
    assert cfg.model.net.init == "zeros" and cfg.model.net.hidden == []
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.01
    assert cfg.data.batch_size == 100 and cfg.trainer.max_epochs == 60
    cfg = train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "optimizer=adam")
    assert cfg.optimizer._target_ == "torch.optim.Adam"  # command line beats the model's choice
    assert cfg.model.net.hidden == [256, 256] and cfg.model.net.init == "he_normal"


def test_logreg_learns_a_learnable_set(tmp_path, tiny_mnist):
    cfg = train_cfg(tmp_path, tiny_mnist, "model=logreg", "trainer.max_epochs=5", "data.val_size=200")
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.90, metrics
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    assert {"train/loss", "train/loss_step", "val/loss", "val/acc", "test/acc"} <= set(acc.Tags()["scalars"])
    assert "params/net.layers.0.weight" in acc.Tags()["histograms"]
    assert len(acc.Scalars("val/acc")) == 5


@pytest.mark.realdata
def test_mlp_reaches_90_percent_on_real_mnist(tmp_path):
    shared_file("mnist", "train-images-idx3-ubyte.gz")
    cfg = train_cfg(tmp_path, SHARED_DATA, "model=mnist_mlp", "trainer.max_epochs=2",
               "callbacks.parameter_summaries.every_n_epochs=100")
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.90, metrics


def test_same_seed_same_metrics(tmp_path, tiny_mnist):
    args = ("model=mnist_mlp", "trainer.max_epochs=2", "data.val_size=200", "test=false")
    a = train(train_cfg(tmp_path, tiny_mnist, *args, run="a"))
    b = train(train_cfg(tmp_path, tiny_mnist, *args, run="b"))
    assert a == b


def test_resume_continues_and_equals_uninterrupted(tmp_path, tiny_mnist):
    common = ("model=mnist_mlp", "data.val_size=200", "test=false", "optimizer=momentum")
    full = train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=3", run="full"))
    train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=2", run="first"))
    first_ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(first_ckpt)["epoch"] == 1
    before = first_ckpt.read_bytes()
    resumed = train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=3",
                         f"ckpt_path={first_ckpt}", run="resumed"))
    assert read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert first_ckpt.read_bytes() == before  # the resumed run writes its own directory
    assert resumed["val/acc"] == pytest.approx(full["val/acc"], abs=1e-6)
    assert resumed["train/loss"] == pytest.approx(full["train/loss"], rel=1e-5)
    sd_full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    sd_res = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for k in sd_full:
        torch.testing.assert_close(sd_full[k], sd_res[k], rtol=1e-5, atol=1e-6)


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_mnist):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(FodlError, match="cannot be read"):
        train(train_cfg(tmp_path, tiny_mnist, "model=logreg", f"ckpt_path={garbage}"))
    with pytest.raises(FodlError, match="does not exist"):
        train(train_cfg(tmp_path, tiny_mnist, "model=logreg", f"ckpt_path={tmp_path}/nope.ckpt"))
    train(train_cfg(tmp_path, tiny_mnist, "model=logreg", "trainer.max_epochs=1", "test=false", run="lr"))
    lr_ckpt = tmp_path / "lr" / "checkpoints" / "last.ckpt"
    with pytest.raises(FodlError, match="model=logreg"):
        train(train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", f"ckpt_path={lr_ckpt}"))


def test_eval_reproduces_test_accuracy_from_checkpoint_alone(tmp_path, tiny_mnist):
    cfg = train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "trainer.max_epochs=2", "data.val_size=200")
    trained = train(cfg)
    (best,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    ecfg = compose_train([f"ckpt_path={best}", f"paths.data_dir={tiny_mnist}"], tmp_path / "ev",
                         config_name="eval")
    metrics = evaluate(ecfg)
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)


def test_steps_per_execution_trains_identically(tmp_path, tiny_mnist):
    """Grouping minibatches (a speed knob) must not change what is learned."""
    args = ("model=mnist_mlp", "trainer.max_epochs=2", "test=false", "optimizer=momentum",
            "data.batch_size=32")
    one = train(train_cfg(tmp_path, tiny_mnist, *args, run="one"))
    grouped = train(train_cfg(tmp_path, tiny_mnist, *args, "data.steps_per_execution=4", run="grouped"))
    assert grouped["val/acc"] == pytest.approx(one["val/acc"], abs=1e-6)
    assert grouped["train/loss"] == pytest.approx(one["train/loss"], rel=1e-5)
    a = read_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "grouped" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * 32  # 1000 examples / 32 -> 32 steps/epoch
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k])
