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
from fodl.train import build


class EpochTimer(L.Callback):
    """Wall time of each training epoch, excluding its validation pass."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0
        self._open = False

    def _sync(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer, pl_module):
        self._sync(trainer)
        self._t0, self._open = time.perf_counter(), True

    def _close(self, trainer):
        if self._open:
            self._sync(trainer)
            self.times.append(time.perf_counter() - self._t0)
            self._open = False

    def on_validation_start(self, trainer, pl_module):
        if trainer.training or trainer.state.fn == "fit":
            self._close(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._close(trainer)


def plain_loop_epochs(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                      y: torch.Tensor, batch_size: int, epochs: int, seed: int = 0) -> list[float]:
    """The reference: shuffle, slice, forward, cross-entropy, backward, step. Nothing else."""
    net.train()
    times = []
    for epoch in range(epochs):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch)).to(x.device)
        for i in range(len(x) // batch_size + (len(x) % batch_size > 0)):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(net(x.index_select(0, idx)), y.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def compare(model: str, data_dir: str, epochs: int = 3, accelerator: str = "cpu",
            extra: list[str] | None = None) -> dict[str, float]:
    """Per-epoch seconds (best epoch after the first) of the plain loop and of fodl."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run([f"model={model}", f"paths.data_dir={data_dir}", f"paths.root_dir={tmp}",
                           f"trainer.max_epochs={epochs}", f"trainer.accelerator={accelerator}",
                           "test=false", *(extra or [])], Path(tmp) / "run")
        datamodule, module, trainer = build(cfg)
        timer = EpochTimer()
        trainer.callbacks.append(timer)

        # the plain loop: same data tensors, same architecture, same optimizer config
        datamodule.setup("fit")
        device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
        x, y = (t.to(device) for t in datamodule.splits["train"])
        net = copy.deepcopy(module.net).to(device)
        opt = instantiate(cfg.optimizer)(params=net.parameters())
        plain = plain_loop_epochs(net, opt, x, y, cfg.data.batch_size, epochs)

        trainer.fit(module, datamodule=datamodule)
    p, f = min(plain[1:] or plain), min(timer.times[1:] or timer.times)
    return {"plain_s": p, "fodl_s": f, "ratio": f / p, "steps": len(x) // cfg.data.batch_size}


def time_to_accuracy(overrides: list[str], data_dir: str, target: float) -> dict[str, float]:
    """Wall time of ``trainer.fit`` until validation accuracy first reaches ``target``
    (Lightning's ``EarlyStopping(stopping_threshold=target)``), then the test accuracy."""
    from lightning.pytorch.callbacks import EarlyStopping

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run([*overrides, f"paths.data_dir={data_dir}", f"paths.root_dir={tmp}",
                           "test=false"], Path(tmp) / "run")
        datamodule, module, trainer = build(cfg)
        trainer.callbacks.append(EarlyStopping("val/acc", mode="max", stopping_threshold=target,
                                               patience=10**9))
        datamodule.setup("fit")  # reading the files is not training time
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        fit_s = time.perf_counter() - t0
        val_acc = float(trainer.callback_metrics["val/acc"])
        test_acc = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    return {"fit_s": fit_s, "epochs": trainer.current_epoch, "val_acc": val_acc,
            "test_acc": float(test_acc)}
