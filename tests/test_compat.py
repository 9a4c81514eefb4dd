"""What fodl.compat relies on in the installed Lightning / TensorBoard / torch still holds.

fodl.compat is the one module that uses libraries' private internals; each test here checks
one of them and fails naming what changed, so an upgrade that removes it fails the suite here
(not a training run somewhere else)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from fodl import compat
from fodl.data.loader import TensorLoader
from fodl.models.base import FodlModule

VERSIONS = f"(lightning {L.__version__}, torch {torch.__version__})"


def _changed(what: str) -> str:
    return f"{what} {VERSIONS}: update fodl/compat.py (and only it) to the new internals"


class _Linear(FodlModule):
    def __init__(self):
        super().__init__(optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
        self.net = nn.Linear(3, 1)

    def training_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)


def _fit(tmp_path, steps_per_execution=1, **kw):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=g), torch.randn(40, 1, generator=g)
    module = _Linear()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, **kw)
    trainer.fit(module, TensorLoader((x, y), 10, steps_per_execution=steps_per_execution))
    return module, trainer


def test_lightning_optimizer_step_callbacks():
    opt = LightningOptimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    for name in ("_on_before_step", "_on_after_step", "optimizer"):
        assert hasattr(opt, name), _changed(f"LightningOptimizer has no `{name}`, which "
                                            "compat.step_directly calls around the optimizer's step")


def test_direct_steps_count_global_steps_and_logged_steps(tmp_path):
    module, trainer = _fit(tmp_path, steps_per_execution=2)
    assert module._direct, _changed("compat.can_step_directly no longer allows the direct step "
                                    "for a plain single-device CPU run")
    assert trainer.global_step == 4, _changed("LightningOptimizer._on_before_step/_on_after_step "
                                              "no longer count global_step")
    loop = trainer.fit_loop.epoch_loop
    assert getattr(loop, "_batches_that_stepped", None) == 4, _changed(
        "the training epoch loop's `_batches_that_stepped` (Lightning's logging step, which "
        "compat.advance_logged_steps advances for grouped minibatches)")
    ckpt = {"loops": {"fit_loop": trainer.fit_loop.state_dict()}}  # as a checkpoint holds it
    assert compat.logged_steps_in(ckpt) == 4, _changed(
        "the fit loop's checkpointed state no longer holds `_batches_that_stepped`")


def test_the_hooks_of_the_direct_path_and_the_plain_attributes(tmp_path):
    for hook in compat.STEP_HOOKS:
        assert callable(getattr(L.LightningModule, hook, None)), _changed(f"LightningModule.{hook}")
        assert callable(getattr(L.Callback, hook, None)), _changed(f"Callback.{hook}")
    module, _ = _fit(tmp_path)
    assert "_current_fx_name" in vars(module), _changed(
        "Lightning no longer writes `_current_fx_name` on the module around hooks "
        "(compat.PLAIN_ATTRIBUTES)")


def test_model_checkpoint_step_and_time_settings(tmp_path):
    from datetime import timedelta

    from lightning.pytorch.callbacks import ModelCheckpoint

    for kw, mid in (({}, False), ({"every_n_epochs": 2}, False), ({"every_n_train_steps": 5}, True),
                    ({"train_time_interval": timedelta(minutes=1)}, True)):
        try:
            assert compat.saves_mid_epoch(ModelCheckpoint(dirpath=tmp_path, **kw)) is mid, kw
        except AttributeError as e:
            pytest.fail(_changed(f"ModelCheckpoint no longer keeps {e.name}"))


def test_tensorboard_logger_writer_internals(tmp_path):
    """A logger that has not written yet opens its writer with the purge step resume sets:
    events at and after it (of the interrupted run) are dropped from the curves."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    for step in range(10):
        first.experiment.add_scalar("x", float(step), step)
    first.experiment.close()
    lg = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    assert compat.tensorboard_started(lg) is False, _changed(
        "TensorBoardLogger._experiment (None until the writer is created)")
    compat.set_purge_step(lg, 5)
    writer = lg.experiment
    assert compat.tensorboard_started(lg), _changed("TensorBoardLogger._experiment")
    writer.add_scalar("x", 50.0, 5)
    assert callable(getattr(compat.summary_file_writer(writer), "add_summary", None)), _changed(
        "SummaryWriter._get_file_writer()")
    writer.close()
    steps = [e.step for e in EventAccumulator(lg.log_dir).Reload().Scalars("x")]
    assert steps == [0, 1, 2, 3, 4, 5], _changed(
        "TensorBoardLogger._kwargs no longer reach the SummaryWriter (purge_step)")


def test_torch_internals():
    assert isinstance(compat.dynamo_supported(), bool), _changed("torch._dynamo.is_dynamo_supported")
    assert issubclass(compat.CompileFailed, Exception), _changed(
        "torch._dynamo.exc.BackendCompilerFailed")
    assert isinstance(compat.cpu_has_bf16(), bool), _changed(
        "torch.ops.mkldnn._is_mkldnn_bf16_supported")


def test_nothing_outside_compat_uses_private_internals():
    """`ruff check --select SLF001 src` finds private-member access only in fodl/compat.py."""
    import subprocess
    import sys

    from conftest import ROOT

    pytest.importorskip("ruff")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "SLF001", "--output-format", "concise",
                        "--no-cache", "src"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    outside = [ln for ln in r.stdout.splitlines()
               if "SLF001" in ln and not ln.replace("\\", "/").startswith("src/fodl/compat.py")]
    assert not outside, "private internals used outside fodl/compat.py:\n" + "\n".join(outside)
