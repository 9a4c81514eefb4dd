"""One LightningModule for every classifier in the book (logistic regression, MLP, CNNs)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from fodl.errors import FodlError
from fodl.models.base import FodlModule


class ClassifierModule(FodlModule):
    """Softmax cross-entropy classifier around an injected ``net``.

    Args:
        net: a plain ``nn.Module`` mapping a batch of inputs to logits.
        optimizer: a partial (Hydra ``_partial_: true``) taking the parameters.
        scheduler: optional partial taking the optimizer; stepped per epoch unless
            ``scheduler_interval="step"``.
        num_classes: for the accuracy metrics.
        gradient_clip_val: clip the gradient norm to this value (None: no clipping).
        cuda_graph: on one GPU, capture the net's forward and backward pass as CUDA graphs
            (``torch.cuda.make_graphed_callables``) at the first training batch and replay them
            for every batch of that shape: two graph launches instead of dozens of small
            kernels, whose launch cost is what bounds the book's tiny nets on a GPU. Loss,
            optimizer step, hooks and logging stay eager; evaluation and odd-sized batches run
            the eager net.

    Optimisation is Lightning's *manual* optimisation: one ``zero_grad / manual_backward /
    step`` per batch. It computes exactly what automatic optimisation does, without the
    closure and the five hook dispatches per step that cost more than the book's nets
    themselves at batch 100 (``scripts/benchmark.py``). DDP gradient sync, precision
    plugins and ``global_step`` bookkeeping still go through Lightning. (Consequently the
    trainer's ``gradient_clip_val`` / ``accumulate_grad_batches`` do not apply; use
    ``model.gradient_clip_val``.)

    The per-step ``train/loss_step`` scalar is logged at the trainer's ``log_every_n_steps``
    cadence only; the epoch mean ``train/loss`` is accumulated on-device (no host sync per step).
    A batch that is a *list* of ``(x, y)`` tuples (``data.steps_per_execution > 1``) gets one
    optimizer step per tuple, in order.

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
        gradient_clip_val: float | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._epoch_losses: list[torch.Tensor] = []  # appended, not re-assigned: no Module.__setattr__ per step
        self._graph_shape: torch.Size | None = None  # input shape the net was graphed for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- training ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # a list of (x, y) is a group of minibatches (data.steps_per_execution > 1): one
        # optimizer step for each, exactly as if they had come one at a time
        grouped = isinstance(batch, list)
        opt = self.optimizers()
        clip = self.hparams.gradient_clip_val
        step_scheduler = self.lr_schedulers() if (
            self.scheduler_factory and self.hparams.scheduler_interval == "step") else None
        if self.hparams.cuda_graph and self._graph_shape is None:
            self._capture((batch[0] if grouped else batch)[0])
        for x, y in batch if grouped else (batch,):
            loss = self._optimizer_step(opt, x, y, clip, step_scheduler)
        # Lightning writes step metrics every trainer.log_every_n_steps *batches*; logging only
        # on those batches keeps self.log's cost off the other steps. (With grouped batches the
        # cost is already amortised, so log every group and let Lightning pick.)
        if grouped or self.global_step % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _optimizer_step(self, opt, x: torch.Tensor, y: torch.Tensor, clip: float | None,
                        step_scheduler) -> torch.Tensor:
        if self._graph_shape is None or x.shape == self._graph_shape:
            logits = self.net(x)
        else:  # graphed for another shape (e.g. the epoch's last, smaller batch): run eagerly
            logits = type(self.net).forward(self.net, x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)  # also right for graphed grads (never accumulated into)
        self.manual_backward(loss)
        if clip:
            self.clip_gradients(opt, gradient_clip_val=clip)
        opt.step()
        if step_scheduler is not None:
            step_scheduler.step()
        self._epoch_losses.append(loss.detach())
        return loss

    # -- CUDA graphs --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if not self.hparams.cuda_graph:
            return
        t = self.trainer
        if self.device.type != "cuda":
            raise FodlError(f"model.cuda_graph=true captures the training step as CUDA graphs and "
                            f"needs a GPU, but this run trains on {self.device.type}. Add trainer=gpu "
                            f"(trainer.accelerator=gpu), or set model.cuda_graph=false.")
        if t.world_size > 1:
            raise FodlError(f"model.cuda_graph=true runs on one GPU, but this run uses "
                            f"{t.world_size} processes (trainer.devices). Set trainer.devices=1, or "
                            f"model.cuda_graph=false for multi-device runs.")
        if str(t.precision) not in ("32-true", "32"):
            raise FodlError(f"model.cuda_graph=true needs trainer.precision=32-true (got "
                            f"{t.precision!r}: autocast cannot run inside a captured graph). Set "
                            f"trainer.precision=32-true or model.cuda_graph=false.")

    def _capture(self, x: torch.Tensor) -> None:
        """Graph ``self.net`` (forward + backward, training mode) for inputs shaped like ``x``.

        ``make_graphed_callables`` runs three warm-up passes on ``x``; they leave parameters
        and gradients alone but update running statistics (batch norm), so the buffers are put
        back: the graphed run trains exactly as the eager one would.
        """
        saved = [b.detach().clone() for b in self.net.buffers()]
        torch.cuda.make_graphed_callables(self.net, (x,))
        with torch.no_grad():
            for b, s in zip(self.net.buffers(), saved):
                b.copy_(s)
        self._graph_shape = x.shape

    def on_train_epoch_end(self) -> None:
        if self.scheduler_factory and self.hparams.scheduler_interval == "epoch":
            self.lr_schedulers().step()
        if self._epoch_losses:
            mean = torch.stack(self._epoch_losses).mean()
            self.log("train/loss", mean, on_epoch=True, sync_dist=True, prog_bar=True)
        self._epoch_losses.clear()

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
