"""Progress a person can follow: the Rich bar in a terminal, one line per epoch elsewhere.

A live progress bar needs a terminal. Under SLURM, ``nohup``, CI or ``make train > log``,
Rich draws nothing until the run ends, so a log file says nothing for hours. There the bar is
replaced by :class:`EpochLines`: one line per epoch in ``train.log`` and on stdout (through the
``fodl.progress`` logger, which Hydra sends to both), e.g.::

    epoch 3/60: train/loss 0.2345, val/acc 0.9712, 4.1 s

``callbacks.progress_bar.style``: ``auto`` (the bar when stdout is a terminal, else lines),
``rich``, ``lines`` or ``none``; ``callbacks.progress_bar.redraws_per_second``: how often the
Rich bar is redrawn.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

log = logging.getLogger(__name__)

STYLES = ("auto", "rich", "lines", "none")


def progress_bar(redraws_per_second: float = 4,
                 style: Literal["auto", "rich", "lines", "none"] = "auto",
                 monitor: str | None = None, refresh_rate: int | None = None) -> ProgressBar:
    """The progress callback for ``style`` (see the module docstring): the one switch for what
    is shown (``none``: nothing). ``redraws_per_second``: how often the Rich bar is redrawn
    (each redraw costs the training loop time); lines ignore it.

    ``refresh_rate`` is the old, deprecated spelling: it meant redraws per second, with 0 for no
    bar, while Lightning's progress bars take a ``refresh_rate`` that counts batches (TQDM) or
    redraws per second (Rich). It is still accepted, with a warning naming the new keys."""
    from fodl.callbacks import RichProgressBar
    from fodl.errors import FodlError

    if style not in STYLES:
        raise FodlError(f"callbacks.progress_bar.style={style!r}: choose one of {', '.join(STYLES)}.")
    if style == "auto":
        style = "rich" if _interactive() else "lines"
    if refresh_rate is not None:
        warnings.warn(
            f"callbacks.progress_bar.refresh_rate={refresh_rate} is deprecated: use "
            "callbacks.progress_bar.redraws_per_second=N (Rich bar redraws per second) or "
            "callbacks.progress_bar.style=none (no bar); refresh_rate will be removed.",
            FutureWarning, stacklevel=2)
        if refresh_rate > 0:
            redraws_per_second = refresh_rate
        elif style == "rich":  # the old refresh_rate=0: no Rich bar (lines stayed lines)
            style = "none"
    if style == "lines":
        return EpochLines(monitor=monitor)
    bar = RichProgressBar(redraws_per_second=redraws_per_second)
    if style == "none":
        bar.disable()  # a disabled bar keeps Lightning from adding its own TQDM bar
    return bar


def _interactive() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class EpochLines(ProgressBar):
    """One log line per training epoch: epoch, ``train/loss``, the monitored metric, seconds.

    The line of an epoch is written once its numbers are final: ``train/loss`` is logged by the
    module's ``on_train_epoch_end``, which Lightning calls after the callbacks' hook, so the line
    appears when the next epoch starts (or training ends). The seconds are those of the epoch's
    training and validation. Only rank 0 writes.
    """

    def __init__(self, monitor: str | None = None) -> None:
        super().__init__()
        self.monitor = monitor
        self._enabled = True
        self._start: float | None = None
        self._due: tuple[int, float] | None = None  # (epoch, seconds) whose line is not written yet

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._due = (trainer.current_epoch, time.monotonic() - self._start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        due, self._due = self._due, None
        if due is None or not self._enabled:
            return
        epoch, seconds = due
        log.info("%s", self.line(epoch, trainer.max_epochs, trainer.callback_metrics, seconds))

    def line(self, epoch: int, max_epochs: int | None, metrics: dict[str, Any], seconds: float) -> str:
        head = f"epoch {epoch + 1}/{max_epochs}" if max_epochs and max_epochs > 0 else f"epoch {epoch + 1}"
        names = ["train/loss"] + ([self.monitor] if self.monitor and self.monitor != "train/loss" else [])
        parts = [f"{n} {_fmt(metrics[n])}" for n in names if n in metrics]
        return f"{head}: {', '.join(parts + [f'{seconds:.1f} s'])}"


def _fmt(v: Any) -> str:
    x = float(v)
    return f"{x:.4f}" if math.isfinite(x) and 1e-3 <= abs(x) < 1e4 else f"{x:.4g}"
