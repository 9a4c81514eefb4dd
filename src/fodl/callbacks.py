"""Callbacks fodl adds to the book's experiments."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def tensorboard(trainer: L.Trainer):
    """The TensorBoard ``SummaryWriter`` of the trainer's loggers, or ``None``."""
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None


class ParameterSummaries(L.Callback):
    """What the book logs about parameters, every ``every_n_epochs`` epochs:
    a histogram of every parameter, and the first conv layer's filters as an image grid
    (book figure 5-18). One callback for both: each registered callback costs a dispatch on
    every hook of every step."""

    def __init__(self, every_n_epochs: int = 1, filters: bool = True) -> None:
        self.every_n_epochs = every_n_epochs
        self.filters = filters

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        step = trainer.global_step
        for name, p in pl_module.named_parameters():
            writer.add_histogram(f"params/{name}", p.detach().float().cpu(), step)
        if self.filters and (grid := first_layer_filters(pl_module)) is not None:
            writer.add_image("filters/first_conv", grid, step)


def first_layer_filters(module: torch.nn.Module, padding: int = 1):
    """The first Conv2d's weights as one image grid (each filter min-max scaled), or None."""
    from torchvision.utils import make_grid

    conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None or conv.in_channels not in (1, 3):
        return None
    w = conv.weight.detach().float().cpu()
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    return make_grid(w, nrow=8, padding=padding, pad_value=1.0)


class ConfigInCheckpoint(L.Callback):
    """Stores the run's resolved Hydra config in every checkpoint (``fodl_config``), so
    ``scripts/eval.py`` can rebuild the exact net and data from the checkpoint alone."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["fodl_config"] = self.config


class StopAtTrainLoss(L.Callback):
    """Records the first step at which the running mean of the minibatch training cost falls
    to ``threshold`` and stops training (chapter 4's momentum speed-up experiment)."""

    def __init__(self, threshold: float, window: int = 100) -> None:
        self.threshold = threshold
        self.window = window
        self.reached_at: int | None = None
        self._recent: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._recent.append(float(outputs["loss"]))
        if len(self._recent) > self.window:
            self._recent.pop(0)
        if len(self._recent) == self.window and sum(self._recent) / self.window <= self.threshold:
            self.reached_at = trainer.global_step
            trainer.should_stop = True


class ResumableModelCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps the best checkpoint across a resume, with its
    ``state_key`` computed once. Its state in a checkpoint is Lightning's ``ModelCheckpoint``
    state, under the key Lightning's class would use (so checkpoints of either resume into
    either).

    Resume: a resumed run writes a new run directory, and Lightning then drops the restored
    ``best_model_score`` / ``best_k_models`` (their files are in the old directory), so the
    first epoch after a resume became "best" and ``test=true`` tested the best of the resumed
    epochs only. Here the best-k files of the old run are *copied* into the new directory and
    the scores restored, so ranking continues over the whole run, the new directory holds
    everything, and the old run's files are never touched (Lightning deletes a checkpoint that
    drops out of the top k: only copies can go). A best file that no longer exists is reported
    and ranking restarts.

    Speed: Lightning formats every callback's ``state_key`` on every hook dispatch (several
    per optimizer step); ``ModelCheckpoint`` builds it from a ``repr`` of its settings, which
    showed up in profiles of the book's small models. The key depends only on constructor
    arguments, so caching it changes nothing else.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath", self.dirpath)
        if self.monitor is None or not self.dirpath or old_dir == self.dirpath:
            return super().load_state_dict(state_dict)
        import shutil
        from pathlib import Path

        best_k = state_dict.get("best_k_models") or {}
        missing = [p for p in best_k if not Path(p).is_file()]
        if missing:
            log.warning("resume: the best checkpoint(s) %s of the resumed run are gone; the best "
                        "%s is ranked over the resumed epochs only", ", ".join(missing), self.monitor)
            self.best_model_path = ""
            return
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        moved = {p: str(Path(self.dirpath) / Path(p).name) for p in best_k}
        for src, dst in moved.items():
            if not Path(dst).exists():  # copy, then rename: never a half-written checkpoint
                tmp = f"{dst}.part{os.getpid()}"
                shutil.copy2(src, tmp)
                os.replace(tmp, dst)
        new = dict(state_dict, dirpath=self.dirpath, last_model_path="",
                   best_k_models={moved[p]: v for p, v in best_k.items()},
                   best_model_path=moved.get(state_dict.get("best_model_path"), ""),
                   kth_best_model_path=moved.get(state_dict.get("kth_best_model_path"), ""))
        super().load_state_dict(new)

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_fodl_state_key")
        if key is None:
            own = super().state_key  # "<class qualname>{settings}"
            key = "ModelCheckpoint" + own[len(type(self).__qualname__):]
            self.__dict__["_fodl_state_key"] = key
        return key


class RichProgressBar(L.pytorch.callbacks.RichProgressBar):
    """Lightning's ``RichProgressBar``, redrawn at most ``redraws_per_second`` times a second.

    Lightning's version rebuilds the metrics dict and calls ``.item()`` on every logged tensor
    after *every* training batch: in a cProfile of the book's MLP on the CPU that was about
    5% of the training time (0.35 s of 6.8 s), and on a GPU each ``.item()`` is a device sync
    that stalls the queue of kernels. Here a batch only updates the bar when
    ``1 / redraws_per_second`` seconds have passed since the last update, and always on an
    epoch's last batch, so what is shown is the same, just not recomputed between redraws (Rich
    itself is told the same rate: Lightning's ``refresh_rate``, which for this bar means redraws
    per second, not batches as for Lightning's TQDM bar).

    The bar counts minibatches: a training loader that can say how many minibatches its first
    items hold (fodl's :meth:`~fodl.data.loader.MinibatchLoader.minibatches_in`) is asked.
    """

    def __init__(self, redraws_per_second: float = 4, leave: bool = False,
                 console_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(refresh_rate=redraws_per_second, leave=leave, console_kwargs=console_kwargs)
        self.redraws_per_second = redraws_per_second
        self._next_draw = 0.0

    @staticmethod
    def _minibatches_in(trainer, items: int) -> int:
        """Minibatches in the first ``items`` items of the training loader."""
        count = getattr(getattr(trainer, "train_dataloader", None), "minibatches_in", None)
        return items if count is None else count(items)

    @property
    def total_train_batches(self) -> int | float:
        if getattr(self.trainer.train_dataloader, "minibatches_in", None) is None:
            return super().total_train_batches
        return self._minibatches_in(self.trainer, self.trainer.num_training_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        last = batch_idx + 1 >= trainer.num_training_batches
        if now < self._next_draw and not last:
            return
        self._next_draw = now + 1.0 / self.redraws_per_second
        batch_idx = self._minibatches_in(trainer, batch_idx + 1) - 1  # minibatches done so far
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class EMAWeightAveraging(L.pytorch.callbacks.EMAWeightAveraging):
    """An exponential moving average of the weights, validated, checkpointed and tested in
    place of the weights themselves: Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`
    (``average = decay * average + (1 - decay) * weights`` after every optimizer step, from
    ``update_starting_at_step`` on; ``use_buffers``: batch norm's running statistics too), for
    any fodl family. Lightning's callback works with fodl's manual optimisation (it reads
    ``trainer.global_step``, which fodl's step advances); two things differ:

    - testing a checkpoint after ``fit`` in the same process (``scripts/train.py`` tests the
      best one) uses the averaged weights the checkpoint holds as its ``state_dict``. Lightning's
      callback would load the checkpoint's raw ``current_model_state`` back into the module on
      every restore, so the test would score the weights that were *not* validated. Raw and
      averaged weights are restored together only when fitting (resume).
    - explicit settings only (no ``**kwargs`` passed on to ``AveragedModel``), so a misspelt
      key is a config error, not a traceback.

    Any run: ``+callbacks.ema._target_=fodl.callbacks.EMAWeightAveraging +callbacks.ema.decay=0.998``
    (an experiment can list it under ``callbacks:``, as ``fast/lstm_sentiment_gpu`` does).
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, use_buffers: bool = True) -> None:
        super().__init__(use_buffers=use_buffers, decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step,
                         update_starting_at_epoch=update_starting_at_epoch)
        self.decay = decay

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # else (test / validate / predict): the module keeps the averaged state_dict just loaded
