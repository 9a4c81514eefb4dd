"""Every use of a library's private internals, in one place (Lightning, TensorBoard, torch): the rest of fodl uses public APIs only (``ruff check --select SLF001 src`` finds
nothing outside this module).

Each function says what it relies on. ``tests/test_compat.py`` checks each of those things
against the installed libraries and fails naming the one that changed, so an upgrade that
breaks one is caught by the test suite, not by a training run:

- Lightning's manual optimisation: :func:`step_directly` (``LightningOptimizer``'s step
  callbacks), :func:`can_step_directly` (which hooks its dispatch calls),
  :func:`advance_logged_steps` / :func:`logged_steps_in` (the fit loop's logging step counter,
  in the trainer and in a checkpoint), :data:`PLAIN_ATTRIBUTES` (what Lightning writes on a
  module around every hook), :func:`saves_mid_epoch` (``ModelCheckpoint``'s step/time settings);
- TensorBoard: :func:`tensorboard_started` / :func:`set_purge_step` (``TensorBoardLogger``'s
  lazily created writer) and :func:`summary_file_writer` (``SummaryWriter``'s event file);
- torch: :func:`dynamo_supported`, :data:`CompileFailed`, :func:`cpu_has_bf16`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

# -- Lightning: the manual-optimisation step ---------------------------------------------

# Attributes Lightning writes on a LightningModule around every hook call (about 30 times per
# training step). They hold strings / None, never parameters, buffers or modules, so
# nn.Module's bookkeeping in __setattr__ (three registries and metaclass isinstance checks,
# ~2 us a write) has nothing to do for them. (``_direct`` is fodl's own flag, read per step.)
PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_direct"})

# the hooks Lightning dispatches around every backward and optimizer step (manual optimisation)
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class PlainHookAttributes:
    """Mixin for a LightningModule: :data:`PLAIN_ATTRIBUTES` are written straight into the
    instance, past ``nn.Module.__setattr__`` (~70 us per optimizer step of the book's MLP,
    whose whole step takes ~2.5 ms on a 2-core CPU)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


def step_directly(opt) -> None:
    """What ``LightningOptimizer.step()`` does when no hook has anything to do: Lightning's
    step bookkeeping (``global_step``, the profiler's ``optimizer_step`` span) around the
    wrapped optimizer's own ``step()``."""
    opt._on_before_step()
    opt.optimizer.step()
    opt._on_after_step()


def can_step_directly(module: L.LightningModule) -> bool:
    """Whether each minibatch's backward and optimizer step may skip Lightning's dispatch.

    ``manual_backward`` and ``LightningOptimizer.step`` call the ``on_before_backward``,
    ``on_after_backward`` and ``on_before_optimizer_step`` hooks of every callback and of the
    module, for every minibatch: ~0.1 ms a step on a 2-core CPU, about 10% of the book's MNIST
    MLP step (and more than the backward pass of DQN's tiny CartPole net). On one device in
    plain 32-bit precision without a profiler, when neither the module nor any callback
    defines one of those hooks, the dispatch does nothing but ``loss.backward()``, gradient
    clipping by norm and ``optimizer.step()`` (plus Lightning's step counter, which
    :func:`step_directly` keeps), so that is what may run. Any other case (DDP, mixed
    precision, ``debug=profile``, a callback with such a hook) takes Lightning's full path."""
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.profilers import PassThroughProfiler
    from lightning.pytorch.strategies import SingleDeviceStrategy

    t = module.trainer
    if (type(t.strategy) is not SingleDeviceStrategy or type(t.precision_plugin) is not Precision
            or not isinstance(t.profiler, PassThroughProfiler)):
        return False
    if type(module).backward is not L.LightningModule.backward:
        return False
    for hook in STEP_HOOKS:
        if getattr(type(module), hook) is not getattr(L.LightningModule, hook):
            return False
        if any(getattr(type(cb), hook) is not getattr(L.Callback, hook) for cb in t.callbacks):
            return False
    return True


# -- Lightning: the logging step ------------------------------------------------------------

_LOGGED_STEPS = "_batches_that_stepped"  # the fit loop's count of batches that stepped


def advance_logged_steps(trainer: L.Trainer, n: int) -> None:
    """Advance the step that Lightning logs metrics against (and counts
    ``log_every_n_steps`` by) by ``n``: the training epoch loop's ``_batches_that_stepped``,
    part of the fit loop's checkpointed state (so resume keeps it)."""
    loop = trainer.fit_loop.epoch_loop
    setattr(loop, _LOGGED_STEPS, getattr(loop, _LOGGED_STEPS) + n)


def logged_steps_in(ckpt: dict[str, Any]) -> int | None:
    """The logging step a Lightning checkpoint was written at (``None`` when it has none)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"][_LOGGED_STEPS])
    except (KeyError, TypeError, ValueError):
        return None


def saves_mid_epoch(checkpoint) -> bool:
    """Whether a ``ModelCheckpoint`` saves within an epoch (``every_n_train_steps`` or
    ``train_time_interval``, which it checks after every training batch), rather than at
    epoch ends only: the settings it keeps as ``_every_n_train_steps`` / ``_train_time_interval``."""
    return bool(checkpoint._every_n_train_steps) or checkpoint._train_time_interval is not None


# -- TensorBoard ------------------------------------------------------------------------------

def tensorboard_started(logger) -> bool:
    """Whether a ``TensorBoardLogger`` has created its ``SummaryWriter`` (and event file)."""
    return logger._experiment is not None


def set_purge_step(logger, step: int) -> None:
    """Make a ``TensorBoardLogger`` that has not started writing open its ``SummaryWriter``
    with ``purge_step=step`` (events at and after ``step`` in the directory are dropped)."""
    logger._kwargs["purge_step"] = step


def summary_file_writer(writer):
    """The event ``FileWriter`` of a ``torch.utils.tensorboard.SummaryWriter`` (to add a
    ready-made ``Summary`` protobuf, e.g. the HPARAMS plugin's)."""
    return writer._get_file_writer()


# -- torch ----------------------------------------------------------------------------------

def dynamo_supported() -> bool:
    """Whether ``torch.compile`` (Dynamo) supports this platform (Python version, OS)."""
    return bool(torch._dynamo.is_dynamo_supported())


def _compile_failed() -> type[BaseException]:
    return torch._dynamo.exc.BackendCompilerFailed


CompileFailed = _compile_failed()  # what a compiled call raises when the backend cannot build


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX512 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
