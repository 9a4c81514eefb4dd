"""Things that used to be silently ignored or untested: misspelled config entries, errors that
never reached the run's log, DDP log lines, sanity validation, honest benchmark timing,
scheduler stepping under manual optimisation, gradient clipping, predict and eval split=val."""

import logging
import time

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from conftest import compose_train, run_script, train_cfg
from fodl.benchmark import EpochTimer, compare
from fodl.checkpoint import read_checkpoint
from fodl.data.loader import TensorLoader
from fodl.errors import FodlError
from fodl.models.base import FodlModule
from fodl.train import _RankZeroLogs, evaluate, train


def test_an_entry_without_target_is_an_error_not_dropped(tmp_path, tiny_mnist):
    with pytest.raises(FodlError, match=r"callbacks\.early\b.*has no _target_.*_targt_"):
        train(train_cfg(tmp_path, tiny_mnist, "+callbacks.early._targt_=lightning.pytorch.callbacks.EarlyStopping",
                        "trainer.max_epochs=1"))
    with pytest.raises(FodlError, match=r"logger\.tensorboard.*has no _target_"):
        train(train_cfg(tmp_path, tiny_mnist, "~logger.tensorboard._target_", "trainer.max_epochs=1"))
    # switching an entry off with null is fine
    out = train(train_cfg(tmp_path, tiny_mnist, "callbacks.parameter_summaries=null",
                          "trainer.max_epochs=1", "test=false", run="ok"))
    assert "val/acc" in out


def test_an_unexpected_error_is_written_to_the_run_log(tmp_path, tiny_mnist):
    """run_entry writes any non-FodlError exception with its traceback to the run's log (under
    Hydra: train.log, a file handler on the root logger, as attached here), then re-raises."""
    from fodl.train import run_entry

    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)

    def broken(cfg):
        raise ZeroDivisionError("deep inside a run")

    try:
        with pytest.raises(ZeroDivisionError):
            run_entry(broken, train_cfg(tmp_path, tiny_mnist, "trainer.max_epochs=1"))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    logged = (tmp_path / "train.log").read_text()
    assert "unexpected error" in logged and "Traceback" in logged and "deep inside a run" in logged


def test_processes_other_than_rank_zero_log_only_warnings_marked_with_their_rank():
    f = _RankZeroLogs(rank=1)

    def rec(level, msg):
        return logging.LogRecord("fodl", level, __file__, 1, msg, None, None)

    assert not f.filter(rec(logging.INFO, "metrics: ..."))
    warn = rec(logging.WARNING, "careful")
    assert f.filter(warn) and warn.getMessage() == "[rank 1] careful"
    assert f.filter(warn) and warn.getMessage() == "[rank 1] careful"  # marked once


class _Tiny(FodlModule):
    def __init__(self, broken_validation=False, sleep_val=0.0, **kw):
        super().__init__(optimizer=kw.pop("optimizer", lambda params: torch.optim.SGD(params, lr=0.1)), **kw)
        self.net = nn.Linear(3, 1)
        self.broken_validation = broken_validation
        self.sleep_val = sleep_val
        self.grad_norms = []

    def training_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.run_net(x), y)

    def validation_step(self, batch, batch_idx):
        if self.broken_validation:
            raise RuntimeError("bug in validation_step")
        time.sleep(self.sleep_val)
        self.log("val/mse", F.mse_loss(self.net(batch[0]), batch[1]))

    def on_before_optimizer_step(self, optimizer):
        self.grad_norms.append(torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item())


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return x, x.sum(1, keepdim=True) * 100


def _trainer_from_config(tmp_path, *overrides, **kw):
    cfg = compose_train(list(overrides), tmp_path / "r")
    return instantiate(cfg.trainer, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, **kw)


def test_a_broken_validation_step_fails_before_any_training(tmp_path):
    trainer = _trainer_from_config(tmp_path, "trainer.accelerator=cpu", "trainer.max_epochs=1")
    module = _Tiny(broken_validation=True)
    with pytest.raises(RuntimeError, match="bug in validation_step"):
        trainer.fit(module, TensorLoader(_data(), 16), TensorLoader(_data(), 16))
    assert trainer.global_step == 0


def test_gradient_clipping_bounds_the_step(tmp_path):
    module = _Tiny(gradient_clip_val=0.5)
    trainer = _trainer_from_config(tmp_path, "trainer.accelerator=cpu", "trainer.max_epochs=1")
    trainer.fit(module, TensorLoader(_data(), 16))
    unclipped = _Tiny()
    _trainer_from_config(tmp_path, "trainer.accelerator=cpu", "trainer.max_epochs=1").fit(
        unclipped, TensorLoader(_data(), 16))
    assert max(unclipped.grad_norms) > 10 and max(module.grad_norms) <= 0.5 + 1e-5


@pytest.mark.parametrize("interval,expected", [("epoch", 0.1 * 0.5 ** 3), ("step", 0.1 * 0.5 ** 12)])
def test_scheduler_steps_per_epoch_or_per_step_under_manual_optimisation(tmp_path, interval, expected):
    module = _Tiny(scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5),
                   scheduler_interval=interval)
    trainer = _trainer_from_config(tmp_path, "trainer.accelerator=cpu", "trainer.max_epochs=3")
    trainer.fit(module, TensorLoader(_data(), 16))  # 4 steps an epoch
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)


def test_epoch_timer_counts_epoch_end_work_and_not_the_validation_loop(tmp_path):
    class SlowEpochEnd(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            time.sleep(0.3)

    timer = EpochTimer()
    module = _Tiny(sleep_val=0.1)
    trainer = _trainer_from_config(tmp_path, "trainer.accelerator=cpu", "trainer.max_epochs=2",
                                   "trainer.num_sanity_val_steps=0",
                                   callbacks=[SlowEpochEnd(), timer])
    trainer.fit(module, TensorLoader(_data(), 16), TensorLoader(_data(), 16))  # 4 val batches: 0.4 s
    assert len(timer.times) == 2
    assert all(0.3 <= t < 0.38 for t in timer.times), timer.times


def test_time_to_accuracy_says_when_the_target_was_not_reached(tiny_mnist, tmp_path):
    r = run_script("benchmark.py", ["--time-to", "1.5", "--data-dir", str(tiny_mnist), "model=logreg",
                                    "data.val_size=200", "trainer.max_epochs=1",
                                    "callbacks.progress_bar.refresh_rate=0"], tmp_path)
    assert r.returncode == 1 and "target NOT reached" in r.stdout


def test_compare_trains_both_loops_on_the_same_minibatches(tiny_mnist):
    r = compare("mnist_mlp", str(tiny_mnist), epochs=3,
                extra=["data.val_size=200", "callbacks.progress_bar.refresh_rate=0"])
    assert r["steps"] == 10 and r["fodl_steps_per_epoch"] == 10  # 1000 images / 100
    assert r["plain_loss_first"] > r["plain_loss_last"]  # the plain loop really trained
    assert len(r["plain_all"]) == len(r["fodl_all"]) == 3


def test_compare_runs_the_plain_loop_in_the_runs_precision(tiny_mnist):
    """Under trainer.precision=bf16-mixed the plain loop's forward runs under bfloat16
    autocast too (same arithmetic as fodl's), and a precision it cannot mirror is refused."""
    import torch

    from fodl.benchmark import _plain_autocast
    from fodl.errors import FodlError

    with _plain_autocast("bf16-mixed", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with _plain_autocast("32-true", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(FodlError, match="16-mixed"):
        _plain_autocast("16-mixed", torch.device("cuda"))
    r = compare("mnist_mlp", str(tiny_mnist), epochs=2,
                extra=["data.val_size=200", "callbacks.progress_bar.refresh_rate=0",
                       "trainer.precision=bf16-mixed"])
    assert r["plain_loss_first"] > r["plain_loss_last"] and len(r["fodl_all"]) == 2


def test_predict_and_eval_on_the_validation_split(tmp_path, tiny_mnist):
    trained = train(train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "trainer.max_epochs=2", "test=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ecfg = compose_train([f"ckpt_path={last}", f"paths.data_dir={tiny_mnist}", "split=val"],
                         tmp_path / "ev", config_name="eval")
    assert evaluate(ecfg)["val/acc"] == pytest.approx(trained["val/acc"], abs=1e-6)
    from fodl.checkpoint import load_run
    module, dm, _ = load_run(last, str(tiny_mnist), stage="predict")
    preds = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu").predict(module, datamodule=dm)
    preds = torch.cat(preds)
    assert preds.shape == (300,) and preds.dtype == torch.long
    acc = (preds == dm.splits["test"][1]).float().mean().item()
    assert acc > 0.5 and read_checkpoint(last)["epoch"] == 1


def test_trainer_ddp_synchronises_batch_norm(tmp_path):
    trainer = _trainer_from_config(tmp_path, "trainer=ddp", "trainer.accelerator=cpu")
    assert trainer.world_size == 2 and trainer.strategy._layer_sync is not None
    from fodl.nets import CIFARConvNet
    net = trainer.strategy._layer_sync.apply(CIFARConvNet(batch_norm=True))
    kinds = {type(m).__name__ for m in net.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
