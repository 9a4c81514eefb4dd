"""One LightningModule for the autoencoders of chapter 6: plain, denoising and sparse."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fodl.callbacks import tensorboard
from fodl.errors import FodlError
from fodl.models.base import FodlModule

SPARSITY = (None, "l1", "kl")
LOSSES = ("l2", "bce")
# Seed of the corruption of evaluation images (batch i uses EVAL_NOISE_SEED + i): every
# epoch, and every model evaluated on the same split and batch size, sees the same pixels
# dropped, so denoising and plain models are compared on identical inputs.
EVAL_NOISE_SEED = 20080705


def corrupt(x: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``x`` with exactly ``round(fraction * pixels)`` pixels of each image set to 0,
    chosen uniformly at random per image (the book's denoising input: half the pixels
    blacked out, figure 6-12)."""
    flat = x.flatten(1)
    k = round(fraction * flat.shape[1])
    if k == 0:
        return x
    scores = torch.rand(flat.shape, generator=generator, device=x.device)
    dropped = scores.topk(k, dim=1, sorted=False).indices
    return flat.scatter(1, dropped, 0.0).view_as(x)


def eval_corrupt(x: torch.Tensor, fraction: float, batch_idx: int) -> torch.Tensor:
    """:func:`corrupt` with the fixed evaluation noise of batch ``batch_idx``."""
    g = torch.Generator(device=x.device).manual_seed(EVAL_NOISE_SEED + batch_idx)
    return corrupt(x, fraction, g)


def per_image_sse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum of squared pixel errors of each image, ``(B,)`` (``x`` in any shape, ``x_hat`` flat)."""
    return (x_hat - x.flatten(1)).square().sum(1)


def sparsity_penalty(z: torch.Tensor, kind: str, target: float) -> torch.Tensor:
    """The unweighted sparsity penalty of a batch of codes in (0, 1).

    - ``l1``: mean over images of ``sum_j |z_j|``.
    - ``kl``: ``sum_j KL(rho || rho_hat_j)`` with ``rho_hat_j`` unit j's mean activation over
      the batch and ``rho = target`` (Ng's sparse autoencoder).
    """
    if kind == "l1":
        return z.abs().sum(1).mean()
    rho_hat = z.mean(0).clamp(1e-6, 1 - 1e-6)
    rho = target
    return (rho * torch.log(rho / rho_hat)
            + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


class AutoencoderModule(FodlModule):
    """Reconstruction of the input through a low-dimensional code, around an injected ``net``
    with ``encode(x)``, ``decode(z)`` and ``forward(x) = decode(encode(x))`` (e.g.
    :class:`fodl.nets.Autoencoder`).

    The loss is the book's: the mean over images of the L2 norm ``||x_hat - x||_2`` of each
    image's reconstruction error; or, with ``loss="bce"``, the pixels' cross-entropy (Hinton &
    Salakhutdinov 2006 fine-tuned their MNIST autoencoder on it: at a saturated output sigmoid
    its gradient stays ``x_hat - x``, where the L2 loss's vanishes). The reported metrics are
    the same either way.

    Args:
        net: the autoencoder.
        optimizer, scheduler, scheduler_interval, gradient_clip_val, cuda_graph: the shared
            training loop's settings (:class:`~fodl.models.base.FodlModule`).
        noise_fraction: denoising autoencoder (Vincent et al. 2008): each training image
            enters the net with exactly this fraction of its pixels set to 0 (book: 0.5),
            and the loss compares the reconstruction with the clean image. 0: off.
        eval_noise_fraction: also evaluate on validation/test images corrupted this way (the
            same pixels every epoch and for every model), as ``*/l2_corrupted`` and
            ``*/sse_corrupted``. None: ``noise_fraction``; 0: off.
        sparsity: ``None``, ``"l1"`` or ``"kl"``: add ``sparsity_weight`` times a penalty on
            the code activations to the training loss (see :func:`sparsity_penalty`).
        sparsity_weight: the penalty's weight.
        sparsity_target: the target mean activation ``rho`` of each code unit (``kl``).
        log_images: with a TensorBoard logger, each validation epoch writes this many
            validation images above their (corrupted inputs and) reconstructions, and a
            histogram of the first validation batch's codes. 0: off.
        loss: ``"l2"`` (the book) or ``"bce"`` (per image, the sum over pixels of the binary
            cross-entropy of ``x_hat`` against the pixel intensities in [0, 1]).
        projector_size: with a TensorBoard logger, the codes of this many test images go to
            TensorBoard's embedding projector (digit labels as metadata, the images as
            sprites). 0: off.

    Logs ``train/loss`` (the training loss, penalty included), ``val|test/l2`` (the book's
    metric), ``val|test/sse`` (mean per-image sum of squared errors, Hinton & Salakhutdinov
    2006), ``val|test/code_mean`` (mean code activation), with sparsity ``train|val|test/
    sparsity_penalty`` (unweighted), with evaluation noise ``val|test/l2_corrupted`` and
    ``val|test/sse_corrupted``. ``predict_step`` returns codes.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        gradient_clip_val: float | None = None,
        cuda_graph: bool = False,
        noise_fraction: float = 0.0,
        eval_noise_fraction: float | None = None,
        sparsity: str | None = None,
        sparsity_weight: float = 0.0,
        sparsity_target: float = 0.05,
        log_images: int = 16,
        projector_size: int = 2000,
        loss: str = "l2",
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val, cuda_graph)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        if eval_noise_fraction is None:
            eval_noise_fraction = noise_fraction
        if sparsity in ("none", "null", ""):
            sparsity = None
        if sparsity and sparsity_weight <= 0:
            raise FodlError(f"model.sparsity={sparsity} needs a positive model.sparsity_weight "
                            f"(got {sparsity_weight}), e.g. model.sparsity_weight=0.1.")
        if sparsity and cuda_graph:
            raise FodlError("model.cuda_graph=true graphs net(x) -> reconstruction, but the "
                            f"sparsity penalty (model.sparsity={sparsity}) needs the codes too. "
                            "Set model.cuda_graph=false for sparse autoencoders.")
        for name in ("encode", "decode"):
            if not callable(getattr(net, name, None)):
                raise FodlError(f"AutoencoderModule needs a net with encode(x) and decode(z); "
                                f"{type(net).__name__} has no {name}(). Use fodl.nets.Autoencoder.")
        self.net = net
        self.loss_name = loss
        self.noise_fraction = noise_fraction
        self.eval_noise_fraction = eval_noise_fraction
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.sparsity_target = sparsity_target
        self.log_images = log_images
        self.projector_size = projector_size
        self._epoch_penalties: list[torch.Tensor] = []
        self._projector: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- training ------------------------------------------------------------------------
    def training_loss(self, batch) -> torch.Tensor:
        x = batch[0]
        inputs = corrupt(x, self.noise_fraction) if self.noise_fraction else x
        if self.sparsity:
            z = self.net.encode(inputs)
            x_hat = self.net.decode(z)
        else:
            x_hat = self.run_net(inputs)
        if self.loss_name == "bce":
            loss = F.binary_cross_entropy(x_hat, x.flatten(1), reduction="sum") / len(x)
        else:
            loss = torch.linalg.vector_norm(x_hat - x.flatten(1), dim=1).mean()
        if not self.sparsity:
            return loss
        penalty = sparsity_penalty(z, self.sparsity, self.sparsity_target)
        self._epoch_penalties.append(penalty.detach())
        return loss + self.sparsity_weight * penalty

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self._epoch_penalties:
            self.log("train/sparsity_penalty", torch.stack(self._epoch_penalties).mean(),
                     on_epoch=True, sync_dist=True)
        self._epoch_penalties.clear()

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, batch, batch_idx: int, stage: str):
        x, y = batch
        n = len(x)
        z = self.net.encode(x)
        x_hat = self.net.decode(z)
        sse = per_image_sse(x_hat, x)

        def log(name, value, **kw):
            self.log(f"{stage}/{name}", value, on_epoch=True, sync_dist=True, batch_size=n, **kw)

        log("l2", sse.sqrt().mean(), prog_bar=stage == "val")
        log("sse", sse.mean())
        log("code_mean", z.mean())
        if self.sparsity:
            log("sparsity_penalty", sparsity_penalty(z, self.sparsity, self.sparsity_target))
        corrupted = None
        if self.eval_noise_fraction:
            corrupted = eval_corrupt(x, self.eval_noise_fraction, batch_idx)
            sse_c = per_image_sse(self.net(corrupted), x)
            log("l2_corrupted", sse_c.sqrt().mean())
            log("sse_corrupted", sse_c.mean())
        return x, y, z, x_hat, corrupted

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _, z, x_hat, corrupted = self._eval_step(batch, batch_idx, "val")
        if batch_idx == 0 and self.log_images and self.trainer.is_global_zero:
            writer = tensorboard(self.trainer)
            if writer is not None:
                self._write_reconstructions(writer, x, x_hat, corrupted)
                writer.add_histogram("val/codes", z.detach().float().cpu(), self.global_step)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y, z, _, _ = self._eval_step(batch, batch_idx, "test")
        have = sum(len(c) for c, _, _ in self._projector)
        if (have < self.projector_size and self.trainer.is_global_zero
                and tensorboard(self.trainer) is not None):
            k = self.projector_size - have
            self._projector.append((z[:k].float().cpu(), y[:k].cpu(), x[:k].float().cpu()))

    def on_test_epoch_end(self) -> None:
        if not self._projector:
            return
        codes, labels, images = (torch.cat(t) for t in zip(*self._projector))
        self._projector.clear()
        tensorboard(self.trainer).add_embedding(
            codes, metadata=labels.tolist(), label_img=_square_images(images),
            global_step=self.global_step, tag="test_codes")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.net.encode(batch[0])

    def _write_reconstructions(self, writer, x, x_hat, corrupted) -> None:
        """Rows of ``log_images`` validation images: inputs, (corrupted inputs,) outputs."""
        from torchvision.utils import make_grid

        k = min(self.log_images, len(x))
        rows = [x[:k], *([] if corrupted is None else [corrupted[:k]]), x_hat[:k]]
        images = _square_images(torch.cat([r.reshape(k, -1) for r in rows]).float().cpu())
        if images is not None:
            grid = make_grid(images, nrow=k, padding=2, pad_value=1.0)
            writer.add_image("val/reconstructions", grid, self.global_step)


def _square_images(x: torch.Tensor) -> torch.Tensor | None:
    """``(N, 1, s, s)`` views of ``N`` images of ``s * s`` pixels (in any shape), or None when
    they are not square one-channel images."""
    flat = x.reshape(len(x), -1)
    side = round(flat.shape[1] ** 0.5)
    return flat.view(-1, 1, side, side) if side * side == flat.shape[1] else None
