"""Resume = uninterrupted (scheduler, test stage, CIFAR augmentation, dropout), the best
checkpoint kept across a resume, and the resume policy for optimizer / schedule changes."""

import pytest
import torch

from conftest import FAST, compose_train, train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.errors import FodlError
from fodl.train import train
from test_cifar import make_cifar_python


def _best_state(ckpt):
    return next(v for k, v in read_checkpoint(ckpt)["callbacks"].items()
                if "'monitor': None" not in k)


def _assert_same_weights(a, b):
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6, msg=k)


def test_cifar_resume_with_schedule_augmentation_and_test_equals_uninterrupted(tmp_path):
    """cifar_cnn: random crops/flips/brightness/contrast, dropout, a cosine schedule over 3
    epochs, interrupted after 2; the resumed run must reproduce the uninterrupted one exactly,
    test stage included."""
    data = make_cifar_python(tmp_path / "data", per_class=4)
    common = ["model=cifar_cnn", f"paths.data_dir={data}", *FAST, "data.val_size=40",
              "data.batch_size=20", "scheduler=cosine", "scheduler.T_max=3",
              "callbacks.parameter_summaries.every_n_epochs=100"]

    def cfg(run, *more):
        return compose_train([*common, *more], tmp_path / run)

    full = train(cfg("full", "trainer.max_epochs=3"))
    train(cfg("first", "trainer.max_epochs=2", "test=false"))
    first_last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(cfg("resumed", "trainer.max_epochs=3", f"ckpt_path={first_last}"))
    _assert_same_weights(tmp_path / "full" / "checkpoints" / "last.ckpt",
                         tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    for k in ("train/loss", "val/loss", "test/loss", "test/acc"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-5, abs=1e-6), k
    lr = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["optimizer_states"][0]
    assert lr["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ended at eta_min


def test_best_checkpoint_survives_a_resume(tmp_path, tiny_mnist):
    """Monitor a metric whose best is the *first* epoch (max val/loss): after a resume the best
    must still be that epoch (copied into the new run dir), not a resumed one, and the old
    run's files stay untouched."""
    common = ("model=mnist_mlp", "test=false", "monitor=val/loss", "monitor_mode=max",
              "optimizer=momentum")
    train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=2", run="first"))
    first = tmp_path / "first" / "checkpoints"
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    first_best = _best_state(first / "last.ckpt")
    assert "epoch000" in first_best["best_model_path"]
    train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=4",
                    f"ckpt_path={first / 'last.ckpt'}", run="resumed"))
    resumed = tmp_path / "resumed" / "checkpoints"
    state = _best_state(resumed / "last.ckpt")
    assert float(state["best_model_score"]) == pytest.approx(float(first_best["best_model_score"]))
    assert state["best_model_path"] == str(resumed / "epoch000-best{:.4f}.ckpt".format(
        float(first_best["best_model_score"])))
    assert [p.name for p in resumed.glob("epoch*.ckpt")] == [first_best["best_model_path"].split("/")[-1]]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def test_resume_refuses_a_changed_optimizer_or_schedule(tmp_path, tiny_mnist):
    common = ("model=mnist_mlp", "test=false", "scheduler=cosine")
    train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=1", run="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with pytest.raises(FodlError, match=r"scheduler/T_max: 1 in the checkpoint, 2 now"):
        train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=2", f"ckpt_path={last}", run="a"))
    with pytest.raises(FodlError, match=r"optimizer/lr: 0.01 in the checkpoint, 0.5 now"):
        train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=1", "optimizer.lr=0.5",
                        f"ckpt_path={last}", run="b"))
    # a one-cycle horizon filled in from the run's length (total_steps: null): the restored
    # scheduler would step past its end (torch: "Tried to step 2 times ...")
    onecycle = ("model=mnist_mlp", "test=false", "scheduler=onecycle")
    train(train_cfg(tmp_path, tiny_mnist, *onecycle, "trainer.max_epochs=1", run="cycle"))
    with pytest.raises(FodlError, match=r"trainer.max_epochs: 1 in the checkpoint, 2 now"):
        train(train_cfg(tmp_path, tiny_mnist, *onecycle, "trainer.max_epochs=2",
                        f"ckpt_path={tmp_path / 'cycle' / 'checkpoints' / 'last.ckpt'}", run="d"))
    # a schedule not tied to the run's length can be extended
    train(train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "test=false", "scheduler=step",
                    "trainer.max_epochs=1", run="step"))
    out = train(train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "test=false", "scheduler=step",
                          "trainer.max_epochs=2",
                          f"ckpt_path={tmp_path / 'step' / 'checkpoints' / 'last.ckpt'}", run="c"))
    assert read_checkpoint(tmp_path / "c" / "checkpoints" / "last.ckpt")["epoch"] == 1 and out


def test_validation_on_the_test_split_reports_the_last_epoch(tmp_path):
    """The book's CIFAR setup validates on the test set (val_size=0): the test number must come
    from the last epoch's weights, never from the checkpoint chosen on the test set."""
    data = make_cifar_python(tmp_path / "data", per_class=2)
    cfg = compose_train(["model=cifar_cnn_bn", f"paths.data_dir={data}", *FAST, "data.val_size=0",
                         "data.batch_size=20", "trainer.max_epochs=2", "monitor=val/loss",
                         "monitor_mode=max"], tmp_path / "r")  # best = worst epoch, on purpose
    metrics = train(cfg)
    last = read_checkpoint(tmp_path / "r" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1
    # the last epoch's val/loss *is* its test/loss (same split), the best epoch's is not
    assert metrics["test/loss"] == pytest.approx(metrics["val/loss"], rel=1e-6)
    assert float(_best_state(tmp_path / "r" / "checkpoints" / "last.ckpt")["best_model_score"]) \
        != pytest.approx(metrics["test/loss"], rel=1e-6)
