"""One LightningModule for every classifier in the book (logistic regression, MLP, CNNs)."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class ClassifierModule(L.LightningModule):
    """Softmax cross-entropy classifier around an injected ``net``.

    Args:
        net: a plain ``nn.Module`` mapping a batch of inputs to logits.
        optimizer: a partial (Hydra ``_partial_: true``) taking the parameters.
        scheduler: optional partial taking the optimizer; stepped per epoch unless
            ``scheduler_interval="step"``.
        num_classes: for the accuracy metrics.

    The per-step ``train/loss_step`` scalar is logged at the trainer's ``log_every_n_steps``
    cadence only; the epoch mean ``train/loss`` is accumulated on-device (no host sync per step).

    Logs ``train/loss`` (step and epoch mean), ``val/loss``, ``val/acc``, ``test/loss``,
    ``test/acc``. The training step keeps Python work to the minimum the book's tiny
    nets need (framework overhead dominates at batch 100; see ``scripts/benchmark.py``).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- training ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        detached = loss.detach()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_count += 1
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", detached, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            mean = self._loss_sum / self._loss_count
            self.log("train/loss", mean, on_epoch=True, sync_dist=True, prog_bar=True)
        self._loss_sum, self._loss_count = None, 0

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, batch, stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.net(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True,
                 batch_size=len(y), prog_bar=stage == "val")
        metric.update(logits, y)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).argmax(-1)

    # -- optimisation --------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if not self.scheduler_factory:  # None, or an empty `scheduler: none` node
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }
