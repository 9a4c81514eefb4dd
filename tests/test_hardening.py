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
                                    "callbacks.progress_bar.style=lines"], tmp_path)
    assert r.returncode == 1 and "target NOT reached" in r.stdout


def test_compare_trains_both_loops_on_the_same_minibatches(tiny_mnist):
    r = compare("mnist_mlp", str(tiny_mnist), epochs=3,
                extra=["data.val_size=200", "callbacks.progress_bar.style=lines"])
    assert r["steps"] == 10 and r["fodl_steps_per_epoch"] == 10  # 1000 images / 100
    assert r["plain_loss_first"] > r["plain_loss_last"]  # the plain loop really trained
    assert len(r["plain_all"]) == len(r["fodl_all"]) == 3


def test_compare_on_the_thread_clock_times_one_thread_and_gives_it_back(tiny_mnist):
    import torch

    from fodl.errors import FodlError

    threads = torch.get_num_threads()
    r = compare("mnist_mlp", str(tiny_mnist), epochs=2, clock="thread",
                extra=["data.val_size=200", "callbacks.progress_bar.style=lines"])
    assert torch.get_num_threads() == threads
    assert all(t > 0 for t in r["plain_all"] + r["fodl_all"]) and r["fodl_steps_per_epoch"] == 10
    with pytest.raises(FodlError, match="wall"):
        compare("mnist_mlp", str(tiny_mnist), accelerator="gpu", clock="thread")


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
                extra=["data.val_size=200", "callbacks.progress_bar.style=lines",
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


# -- issue 24: bad values give one paragraph and exit status 2, never a traceback -------------

PROBES = [  # the 17 bad values and 3 silently accepted ones, by model: (overrides, keys)
    (["model=autoencoder", "model.loss=foo", "model.sparsity=foo", "model.noise_fraction=1.5",
      "model.net.hidden_dropout=1.5", "model.net.code_size=0"],
     ["model.loss", "model.sparsity", "model.noise_fraction", "model.net.hidden_dropout",
      "model.net.code_size"]),
    (["model=dqn", "model.tau=-3", "model.gamma=1.5", "model.epsilon_start=2.0"],
     ["model.tau", "model.gamma", "model.epsilon_start"]),
    (["model=mnist_cnn", "model.label_smoothing=2.0", "data.shift=-1", "trainer.devices=abc"],
     ["model.label_smoothing", "data.shift", "trainer.devices"]),
    (["trainer.accelerator=gpu"], ["trainer.accelerator"]),
    (["model=pos_tagger", "data.left=-1", "model.net.dropout=1.5", "model.net.embedding_dim=0",
      "model.net.word_dropout=1.5"],
     ["data.left", "model.net.dropout", "model.net.embedding_dim", "model.net.word_dropout"]),
    (["model=seq2seq_attention", "model.net.teacher_forcing=2.0", "model.net.attention=foo",
      "model.label_smoothing=1.5"],
     ["model.net.teacher_forcing", "model.net.attention", "model.label_smoothing"]),
    (["model=seq2seq_attention", "data.src=xx"], ["data.src"]),  # the DataModule's own check
]


@pytest.mark.parametrize("overrides,keys", PROBES, ids=[" ".join(o) for o, _ in PROBES])
def test_bad_values_of_every_family_stop_before_anything_runs(tmp_path, caplog, capfd, overrides, keys):
    """As scripts/train.py runs them (run_entry): exit status 2, one paragraph naming every bad
    key, no traceback, nothing trained or written (a model's bad values are reported together,
    so each model's are tried in one run)."""
    import torch.cuda

    from fodl.train import run_entry

    if keys == ["trainer.accelerator"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = compose_train([f"paths.data_dir={tmp_path / 'no-data'}", *overrides], tmp_path / "run")
    caplog.set_level(logging.ERROR, logger="fodl")
    with pytest.raises(SystemExit) as e:
        run_entry(train, cfg)
    assert e.value.code == 2
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "\n" not in msg, msg
    for key in keys:
        value = next(o.split("=", 1)[1] for o in overrides if o.startswith(key + "="))
        assert f"{key}={value}" in msg or f"{key}='{value}'" in msg, (key, msg)
    if len(keys) > 1:
        assert f"({len(keys)} values, nothing was run)" in msg
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "no-data").exists()


def test_a_fodl_error_inside_instantiate_is_unwrapped():
    """Hydra wraps what a constructor raises in InstantiationException: the entry points show
    the FodlError's own paragraph (errors.user_error), and a real bug stays a bug."""
    from hydra.errors import InstantiationException

    from fodl.errors import reports_errors, user_error

    def wrapped(inner):
        try:
            try:
                raise inner
            except Exception as e:
                raise InstantiationException("Error in call to target 'x'") from e
        except InstantiationException as outer:
            return outer

    assert str(user_error(wrapped(FodlError("data.src='xx': Multi30k has en, de, fr")))).startswith("data.src")
    assert user_error(wrapped(ValueError("a bug"))) is None

    @reports_errors
    def main(exc):
        raise exc

    assert main(wrapped(FodlError("bad"))) == 2
    with pytest.raises(InstantiationException):
        main(wrapped(ValueError("a bug")))


def test_a_failing_sweep_job_ends_the_sweep_without_a_traceback(capsys):
    """A sweep job's FodlError reaches Hydra as a CompactHydraException: Hydra prints only the
    message when the sweep ends (exit status 1: a job failed), and the job status still reads
    'FodlError: ...'."""
    from hydra._internal.utils import run_and_report

    from fodl.train import SweepFodlError

    def sweep():
        raise SweepFodlError("The training loss is not finite at step 3.")

    with pytest.raises(SystemExit) as e:
        run_and_report(sweep)
    err = capsys.readouterr().err
    assert e.value.code == 1 and "The training loss is not finite" in err and "Traceback" not in err
    assert f"{SweepFodlError.__name__}: x".endswith("FodlError: x")


def test_an_unwritable_output_directory_is_named_before_hydra_creates_it(tmp_path, capsys):
    from omegaconf import OmegaConf

    from fodl.train import WritableOutputs

    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the output directory should be")
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(blocker / "logreg" / "runs" / "t")},
                                      "sweep": {"dir": str(tmp_path / "ok")}}})
    with pytest.raises(SystemExit) as e:
        WritableOutputs().on_run_start(cfg)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "hydra.run.dir" in err and str(blocker) in err
    assert "nothing already written was changed" in err and blocker.read_text().startswith("a file")
    WritableOutputs().on_multirun_start(cfg)  # a writable one passes, and nothing is left in it
    assert not (tmp_path / "ok").exists() or not list((tmp_path / "ok").iterdir())


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    """torch reports a full disk as "[enforce fail at inline_container.cc:672] unexpected pos"
    (no ENOSPC): the message says the disk is full, names the file and that the previous
    checkpoint is intact; no temporary file is left."""
    import shutil
    from collections import namedtuple

    from fodl import checkpoint_io

    target = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.atomic_save({"epoch": 1}, target)

    def full(obj, f):
        f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6976 vs 6870")

    monkeypatch.setattr(checkpoint_io.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("U", "total used free")(10, 10, 0))
    with pytest.raises(FodlError) as e:
        checkpoint_io.atomic_save({"epoch": 2}, target)
    msg = str(e.value)
    assert "no space left" in msg and str(target) in msg and "Nothing already written was lost" in msg
    assert "still holds the previous complete checkpoint" in msg and "ckpt_path=auto" in msg
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_a_misspelled_monitor_stops_at_the_first_validation(tmp_path, tiny_mnist, caplog):
    from fodl.train import run_entry

    caplog.set_level(logging.ERROR, logger="fodl")
    with pytest.raises(SystemExit) as e:
        run_entry(train, train_cfg(tmp_path, tiny_mnist, "model=logreg", "monitor=val/nonexistent",
                                   "trainer.max_epochs=3"))
    assert e.value.code == 2
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "monitor=val/nonexistent" in msg and "val/acc" in msg
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # stopped before the first checkpoint


def test_a_failed_download_leaves_no_empty_data_directory(tmp_path):
    from fodl.data.download import download

    data_dir = tmp_path / "typo"
    with pytest.raises(FodlError, match="Could not download"):
        download(["http://127.0.0.1:9/train-images-idx3-ubyte.gz"], data_dir / "mnist" / "x.gz", timeout=5)
    assert not data_dir.exists() and tmp_path.exists()
