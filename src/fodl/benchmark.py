"""Epoch time of fodl's training path against a plain PyTorch loop, same process, same data."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from fodl.config import compose_run
from fodl.data.loader import TensorLoader
from fodl.errors import FodlError
from fodl.train import build


class EpochTimer(L.Callback):
    """Wall time of each training epoch as a user waits for it, less the validation loop.

    An epoch runs from its ``on_train_epoch_start`` to the next epoch's start (or the end of
    fit), so it includes everything fodl does around the steps: the module's and every
    callback's ``on_train_epoch_end`` (parameter histograms, filter images), checkpoint
    writes, logger flushes. The validation loop itself (``on_validation_start`` to
    ``on_validation_end``, i.e. the forward passes over the validation split, *excluding*
    the checkpoint writes that follow it) is subtracted, since the plain loop does not
    validate. Attach it last, so it opens after the other callbacks' epoch-start hooks.

    With ``before_epoch`` set, that function (a plain-loop epoch) runs and is timed right
    before each fodl epoch, so the two are measured under the same machine conditions
    (a shared VM's speed drifts by tens of percent within minutes).
    """

    def __init__(self, before_epoch=None, clock=time.perf_counter) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.before_times: list[float] = []
        self.before_epoch = before_epoch
        self._t0: float | None = None
        self._val_t0 = 0.0
        self._val_s = 0.0

    def _sync(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def _close(self, trainer):
        if self._t0 is not None:
            self._sync(trainer)
            self.times.append(self.clock() - self._t0 - self._val_s)
            self._t0 = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._close(trainer)  # the previous epoch ends where this one starts
        if self.before_epoch is not None:
            self.before_times.append(self.before_epoch(trainer.current_epoch))
        self._sync(trainer)
        self._val_s = 0.0
        self._t0 = self.clock()

    def on_validation_start(self, trainer, pl_module):
        if self._t0 is not None:
            self._sync(trainer)
            self._val_t0 = self.clock()

    def on_validation_end(self, trainer, pl_module):
        if self._t0 is not None:
            self._sync(trainer)
            self._val_s += self.clock() - self._val_t0

    def on_fit_end(self, trainer, pl_module):
        self._close(trainer)


def plain_loop_epochs(net: torch.nn.Module, optimizer: torch.optim.Optimizer, batches,
                      epochs: int, loss_fn=None, clock=time.perf_counter) -> list[float]:
    """The reference: for each minibatch of ``batches(epoch)`` (an iterable of batches),
    forward, loss, backward, step. Nothing else. ``loss_fn(batch)`` is the family's loss of
    one minibatch (default: cross-entropy of ``net(x)`` against ``y``)."""
    if loss_fn is None:
        def loss_fn(batch):
            x, y = batch
            return F.cross_entropy(net(x), y)
    net.train()
    times = []
    for epoch in range(epochs):
        cuda = next(net.parameters()).is_cuda
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        for batch in batches(epoch):
            loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(clock() - t0)
    return times


def _plain_batches(datamodule, device: torch.device, max_batches: int | None = None):
    """``epoch -> iterable of minibatches``: the datamodule's own training batches, one at a
    time (a fodl loader's ``minibatches()``), on ``device``, one process; the
    first ``max_batches`` of each epoch (``trainer.limit_train_batches`` as an int), as fodl's."""
    if hasattr(datamodule, "benchmark_loader"):  # its own batching (e.g. length buckets)
        loader, on_after = datamodule.benchmark_loader(device), None
    elif hasattr(datamodule, "splits"):  # in-memory tensors: slice them where they will live
        tensors = tuple(t.to(device) for t in datamodule.splits["train"])
        loader = TensorLoader(tensors, datamodule.batch_size, shuffle=True, seed=datamodule.seed,
                              drop_last=datamodule.drop_last)
        on_after = getattr(datamodule, "on_after_batch_transfer", None)
    else:
        loader, on_after = datamodule.train_dataloader(), None
    if max_batches is not None:
        loader.max_batches = max_batches

    def batches(epoch: int):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader.minibatches() if hasattr(loader, "minibatches") else loader:
            yield on_after(batch, 0) if on_after is not None else batch
    return batches


def _plain_autocast(precision: str, device: torch.device):
    """The plain loop's forward context for the fodl run's ``trainer.precision``: what
    Lightning's precision plugin does for the forward pass (bf16-mixed: autocast to bfloat16,
    weights and optimizer in fp32; no gradient scaling is involved)."""
    import contextlib

    if precision in ("32-true", "32"):
        return contextlib.nullcontext()
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise FodlError(f"scripts/benchmark.py: the plain loop runs trainer.precision=32-true or "
                    f"bf16-mixed, not {precision!r} (16-mixed needs gradient scaling on a GPU, "
                    "which the plain loop does not do). Pick one of those two.")


def compare(model: str, data_dir: str, epochs: int = 3, accelerator: str = "cpu",
            extra: list[str] | None = None, clock: str = "wall") -> dict[str, float]:
    """Seconds per training epoch of a plain loop and of fodl, interleaved epoch by epoch
    (plain, fodl, plain, fodl, ...); the first pair is warm-up. The plain loop trains a copy
    of the same net with the same optimizer config and the family's own loss
    (``training_loss``) on the same minibatches. Returns the medians and the median of the
    per-pair ratios.

    ``clock="thread"`` (CPU only) times the CPU seconds of the training thread with torch on one
    thread instead of wall seconds: what the steps cost, which another job on a shared machine
    moves far less than the wall time (it does not count time spent waiting for a core). Work
    of other threads (TensorBoard's event-file writer) is not counted."""
    if clock not in ("wall", "thread"):
        raise FodlError(f"clock={clock!r}: choose wall or thread.")
    if clock == "thread" and accelerator not in ("cpu",):
        raise FodlError("The thread clock times CPU work; a GPU runs asynchronously: use the wall "
                        "clock with --accelerator gpu.")
    threads = torch.get_num_threads()
    if clock == "thread":
        torch.set_num_threads(1)  # all of torch's work on the timed thread
    try:
        return _compare(model, data_dir, epochs, accelerator, extra,
                        time.thread_time if clock == "thread" else time.perf_counter)
    finally:
        torch.set_num_threads(threads)


def _compare(model, data_dir, epochs, accelerator, extra, clock) -> dict[str, float]:
    import statistics

    torch.set_float32_matmul_precision("high")  # as scripts/train.py runs (TF32 on GPUs)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run([f"model={model}", f"paths.data_dir={data_dir}", f"paths.root_dir={tmp}",
                           f"trainer.max_epochs={epochs}", f"trainer.accelerator={accelerator}",
                           "test=false", *(extra or [])], Path(tmp) / "run")
        datamodule, module, trainer = build(cfg)

        datamodule.setup("fit")
        device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
        plain = copy.deepcopy(module).to(device)  # same architecture and initial weights
        opt = instantiate(cfg.optimizer)(params=[p for p in plain.parameters() if p.requires_grad])
        limit = trainer.limit_train_batches
        batches = _plain_batches(datamodule, device, limit if isinstance(limit, int) else None)
        steps = sum(1 for _ in batches(0))
        count = getattr(datamodule, "batch_tokens", None)  # text models: tokens of a batch
        tokens = sum(count(b) for b in batches(0)) if count is not None else None

        plain_losses: list[float] = []
        autocast = _plain_autocast(str(trainer.precision), device)

        def plain_loss(batch):
            with autocast:
                loss = plain.training_loss(batch)
            plain_losses.append(loss.detach())
            return loss

        def plain_epoch(epoch: int) -> float:
            return plain_loop_epochs(plain, opt, lambda _: batches(epoch), 1, loss_fn=plain_loss,
                                     clock=clock)[0]

        timer = EpochTimer(before_epoch=plain_epoch, clock=clock)
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=datamodule)
    plain_t, fodl_t = timer.before_times[1:] or timer.before_times, timer.times[1:] or timer.times
    return {"plain_s": statistics.median(plain_t), "fodl_s": statistics.median(fodl_t),
            "ratio": statistics.median(f / p for p, f in zip(plain_t, fodl_t)), "steps": steps,
            "fodl_steps_per_epoch": trainer.global_step // max(trainer.current_epoch, 1),
            "tokens": tokens,  # text models: tokens per (limited) epoch
            "plain_all": timer.before_times, "fodl_all": timer.times,
            "plain_loss_first": float(plain_losses[0]), "plain_loss_last": float(plain_losses[-1])}


def time_to_accuracy(overrides: list[str], data_dir: str, target: float) -> dict[str, float]:
    """Wall time of ``trainer.fit`` until the run's ``monitor`` metric (validation accuracy
    for classifiers) first reaches ``target`` (Lightning's
    ``EarlyStopping(stopping_threshold=target)``), then the test accuracy."""
    from lightning.pytorch.callbacks import EarlyStopping

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run([*overrides, f"paths.data_dir={data_dir}", f"paths.root_dir={tmp}",
                           "test=false"], Path(tmp) / "run")
        datamodule, module, trainer = build(cfg)
        trainer.callbacks.append(EarlyStopping(cfg.monitor, mode=cfg.monitor_mode,
                                               stopping_threshold=target, patience=10**9))
        datamodule.setup("fit")  # reading the files is not training time
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        fit_s = time.perf_counter() - t0
        val_acc = float(trainer.callback_metrics["val/acc"])
        test_acc = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    return {"fit_s": fit_s, "epochs": trainer.current_epoch, "val_acc": val_acc,
            "test_acc": float(test_acc)}
