"""One LightningModule for every classifier in the book (logistic regression, MLP, CNNs)."""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from fodl.compat import CompileFailed, dynamo_supported
from fodl.errors import FodlError
from fodl.models.base import FodlModule


class ClassifierModule(FodlModule):
    """Softmax cross-entropy classifier around an injected ``net``.

    Args:
        net: a plain ``nn.Module`` mapping a batch of inputs to logits.
        num_classes: for the accuracy metrics.
        label_smoothing: of the training cross-entropy (0: none; validation and test losses
            are plain cross-entropy either way).
        channels_last: keep the net's convolution weights and the image batches in the
            channels-last (NHWC) memory layout. Same numbers up to float rounding; on this
            project's CPU the book's CIFAR net trains markedly faster per epoch (docs/performance.md,
            docs/ch05_cnn.md). Needs a net with 2-d convolutions.
        compile: ``torch.compile`` the net in place (``nn.Module.compile``: checkpoints keep
            the eager net's keys, so either kind loads into the other). The first training
            step and the first evaluation step compile (seconds to a minute); the numbers
            match eager within float rounding. Measured on the CPU for the book's CIFAR net:
            no faster (docs/performance.md), so no CPU recipe sets it. Not with ``cuda_graph``.
        optimizer, scheduler, scheduler_interval, gradient_clip_val, cuda_graph: the shared
            training loop's settings (:class:`~fodl.models.base.FodlModule`).

    Batches are ``(x, y)``. Logs ``train/loss`` (step and epoch mean), ``val/loss``,
    ``val/acc``, ``test/loss``, ``test/acc``.
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
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val, cuda_graph)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        if channels_last and not any(isinstance(m, nn.Conv2d) for m in net.modules()):
            raise FodlError(f"model.channels_last=true lays out image batches and convolution "
                            f"weights as NHWC, but model.net ({type(net).__name__}) has no 2-d "
                            "convolution: set model.channels_last=false.")
        if channels_last and cuda_graph:
            raise FodlError("model.channels_last=true and model.cuda_graph=true are not supported "
                            "together; set one of them to false.")
        if compile and cuda_graph:
            raise FodlError("model.compile=true and model.cuda_graph=true both take over the "
                            "net's call; set one of them to false.")
        if compile and not dynamo_supported():
            raise FodlError(f"model.compile=true: torch.compile does not support this platform "
                            f"(Python {sys.version.split()[0]}, torch {torch.__version__}). Set "
                            "model.compile=false (the eager net computes the same numbers).")
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.compile_net = compile
        if compile:
            self.net.compile()
        self.label_smoothing = label_smoothing
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the net's memory layout (``channels_last``: NHWC)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layout(x)
        return self._call_net(self.net, x) if self.compile_net else self.net(x)

    def _call_net(self, net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``net(x)`` where a failure to build the compiled net (``compile``; e.g. no C++
        compiler for the CPU backend) is reported as what to do about it."""
        try:
            return net(x)
        except CompileFailed as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FodlError(f"model.compile=true: torch.compile could not build the net on "
                            f"{x.device.type} ({reason}). Set model.compile=false (the eager net "
                            "computes the same numbers), or give torch the toolchain its "
                            "backend needs (CPU: a C++ compiler, e.g. g++, or CXX=<path>; "
                            "GPU: Triton).") from e

    def training_loss(self, batch) -> torch.Tensor:
        x, y = batch
        x = self.layout(x)
        logits = self._call_net(self.run_net, x) if self.compile_net else self.run_net(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def _eval_step(self, batch, stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True,
                 batch_size=len(y), prog_bar=stage == "val")
        metric.update(logits, y)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(-1)
