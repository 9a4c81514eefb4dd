"""The one optimisation loop every fodl model family shares.

A family (classifier, autoencoder, skip-gram, tagger, ...) subclasses :class:`FodlModule` and
says only what is particular to it:

- ``training_loss(batch) -> Tensor``: the scalar loss of one minibatch, as its DataModule
  yields it (the base takes the optimizer step, clips, steps the scheduler, logs);
- ``validation_step`` / ``test_step`` (and ``predict_step``): what it evaluates and logs;
- optionally ``graph_input(batch)``: the tensor its ``net`` takes, when the family supports
  ``cuda_graph`` (a net with one tensor input and one tensor output).

Everything about *how* the steps run lives here once: Lightning's manual optimisation (one
``zero_grad / manual_backward / step`` per minibatch, exactly what automatic optimisation
computes, without its closure and five hook dispatches per step), groups of minibatches per
Lightning step (``data.steps_per_execution``), scheduler stepping per epoch or per step,
gradient clipping, the on-device epoch-mean ``train/loss`` (no host sync per step), the
logging cadence of ``train/loss_step``, and CUDA-graph capture on one GPU.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from fodl.compat import PlainHookAttributes, advance_logged_steps, can_step_directly, step_directly
from fodl.data.loader import minibatches_of
from fodl.errors import FodlError
from fodl.text.state import TEXT_KEY, load_text_state, store_text_state


class FodlModule(PlainHookAttributes, L.LightningModule):
    """Base of every fodl LightningModule: the shared training loop (see the module docstring).

    Args:
        optimizer: a partial (Hydra ``_partial_: true``) taking the parameters.
        scheduler: optional partial taking the optimizer; stepped per epoch unless
            ``scheduler_interval="step"`` (then after every optimizer step).
        scheduler_interval: ``"epoch"`` or ``"step"``.
        gradient_clip_val: clip the gradient norm to this value (None/0: no clipping). The
            trainer's ``gradient_clip_val`` (``gradient_clip_algorithm``) and
            ``accumulate_grad_batches``, which Lightning does not apply to manual
            optimisation, are taken over by this loop (:meth:`use_trainer_settings`).
        cuda_graph: on one GPU, capture ``self.net``'s forward and backward pass as CUDA
            graphs (``torch.cuda.make_graphed_callables``) at the first training batch and
            replay them for every batch of that shape: two graph launches instead of dozens of
            small kernels, whose launch cost bounds the book's tiny nets on a GPU. Loss,
            optimizer step, hooks and logging stay eager; evaluation and odd-sized batches run
            the eager net. Families call the net through :meth:`run_net` for this to apply.

    A batch that is a group of minibatches (``data.steps_per_execution > 1``:
    :class:`~fodl.data.loader.MinibatchLoader`) gets one optimizer step per minibatch in it, in
    order: the same steps as ungrouped, with Lightning's per-batch cost paid once per group.
    TensorBoard's step axis, the progress bar, ``limit_train_batches``, ``val_check_interval``
    and the scheduler count minibatches either way (the loader and :meth:`_count_group` see to
    it); the loader groups only where nothing else can tell.
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        gradient_clip_val: float | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = "norm"
        self.accumulate_grad_batches = 1  # optimizer step every k minibatches (trainer's setting)
        self._accumulated = 0  # minibatches whose gradients wait for the next step
        self.cuda_graph = cuda_graph
        self._epoch_losses: list[torch.Tensor] = []  # appended, not re-assigned: no Module.__setattr__ per step
        self._losses_checked = 0  # how many of _epoch_losses are known to be finite
        self._graph_shape: torch.Size | None = None  # input shape the net was graphed for
        self._direct = False  # see _can_step_directly

    # -- what a family defines -----------------------------------------------------------
    def training_loss(self, batch: Any) -> torch.Tensor:
        """The scalar loss of one training minibatch (train mode, gradients on)."""
        raise NotImplementedError(f"{type(self).__name__} must define training_loss(batch)")

    def graph_input(self, batch: Any) -> torch.Tensor:
        """The tensor ``self.net`` is called with for ``batch`` (for ``cuda_graph``)."""
        return batch[0]

    def run_net(self, x: torch.Tensor) -> torch.Tensor:
        """``self.net(x)``: the graphed net when ``x`` has the captured shape, else eager."""
        if self._graph_shape is None or x.shape == self._graph_shape:
            return self.net(x)
        return type(self.net).forward(self.net, x)  # e.g. the epoch's last, smaller batch

    # -- training ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        minibatches = minibatches_of(batch)
        grouped = minibatches is batch  # the item is a group (perhaps of one: an epoch's last)
        opt = self.optimizers()
        clip = self.gradient_clip_val
        step_scheduler = self.lr_schedulers() if (
            self.scheduler_factory and self.scheduler_interval == "step") else None
        if self.cuda_graph and self._graph_shape is None:
            self.capture_graph(self.graph_input(minibatches[0]))
        direct = self._direct
        accumulate = self.accumulate_grad_batches
        for minibatch in minibatches:
            loss = self.training_loss(minibatch)
            if accumulate > 1:  # gradients of `accumulate` minibatches, then one step
                self._accumulate(opt, loss, clip, step_scheduler, direct,
                                 last=minibatch is minibatches[-1]
                                 and batch_idx + 1 >= self.trainer.num_training_batches)
                continue
            opt.zero_grad(set_to_none=True)  # also right for graphed grads (never accumulated into)
            self.manual_backward(loss)
            self._optimizer_step(opt, clip, step_scheduler, direct)
            self._epoch_losses.append(loss.detach())
        if grouped:
            self._count_group(len(batch))
        # Lightning writes step metrics every trainer.log_every_n_steps batches; logging only on
        # those keeps self.log's cost off the other steps.
        if grouped or self.global_step % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _optimizer_step(self, opt, clip, step_scheduler, direct: bool) -> None:
        """Clip (when set), step the optimizer and, per step, the scheduler: what follows the
        backward pass of every step, plain or accumulated."""
        if clip:
            self.clip_gradients(opt, gradient_clip_val=clip,
                                gradient_clip_algorithm=self.gradient_clip_algorithm)
        if direct:  # what LightningOptimizer.step does when no hook has anything to do
            step_directly(opt)
        else:
            opt.step()
        if step_scheduler is not None:
            step_scheduler.step()

    def _accumulate(self, opt, loss, clip, step_scheduler, direct: bool, last: bool) -> None:
        """``trainer.accumulate_grad_batches=k``: the gradient of the mean loss of ``k``
        minibatches (each backward of loss / k adds to it), then one optimizer step; the
        epoch's last minibatch steps with what it has (as Lightning's automatic optimisation)."""
        self.manual_backward(loss / self.accumulate_grad_batches)
        self._epoch_losses.append(loss.detach())
        self._accumulated += 1
        if self._accumulated < self.accumulate_grad_batches and not last:
            return
        self._optimizer_step(opt, clip, step_scheduler, direct)
        opt.zero_grad(set_to_none=True)
        self._accumulated = 0

    def use_trainer_settings(self, gradient_clip_val: float | None = None,
                             gradient_clip_algorithm: str | None = None,
                             accumulate_grad_batches: int = 1) -> None:
        """Take the trainer's ``gradient_clip_val`` / ``gradient_clip_algorithm`` /
        ``accumulate_grad_batches`` (``+trainer.gradient_clip_val=0.5``, the Lightning idiom),
        which Lightning refuses for manual optimisation, as this loop's own settings
        (``fodl.train.build`` hands them over and builds the trainer without them)."""
        if gradient_clip_val:
            if self.gradient_clip_val and self.gradient_clip_val != gradient_clip_val:
                raise FodlError(
                    f"trainer.gradient_clip_val={gradient_clip_val} and model.gradient_clip_val="
                    f"{self.gradient_clip_val} disagree: both clip the same gradients (fodl's "
                    "loop does the clipping for either). Set one of them, or both to the same "
                    "value.")
            self.gradient_clip_val = gradient_clip_val
        if gradient_clip_algorithm is not None:
            if gradient_clip_algorithm not in ("norm", "value"):
                raise FodlError(f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r}: "
                                "choose norm (clip the total gradient norm) or value (clip each "
                                "gradient element).")
            self.gradient_clip_algorithm = gradient_clip_algorithm
        accumulate_grad_batches = int(accumulate_grad_batches or 1)
        if accumulate_grad_batches > 1 and self.cuda_graph:
            raise FodlError("trainer.accumulate_grad_batches > 1 adds up the gradients of several "
                            "minibatches, which a captured CUDA graph (model.cuda_graph=true) "
                            "cannot: set one of them back (model.cuda_graph=false, or "
                            "trainer.accumulate_grad_batches=1).")
        self.accumulate_grad_batches = accumulate_grad_batches

    def _count_group(self, n: int) -> None:
        """Advance Lightning's logging step by the group's extra minibatches, so TensorBoard's
        step axis (and ``log_every_n_steps``) counts optimizer steps, not groups. The counter
        is part of the fit loop's checkpointed state, so resume keeps it."""
        advance_logged_steps(self.trainer, n - 1)

    # -- a diverged run stops before it is checkpointed ------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 == self._trainer.num_training_batches:  # before epoch-end callbacks
            self._check_finite_losses()

    def on_validation_start(self) -> None:
        if self.trainer.training:  # (mid-epoch) validation during fit: its checkpoints come next
            self._check_finite_losses()

    def _check_finite_losses(self) -> None:
        """Stop with a :class:`FodlError` naming the step when a training loss of this epoch is
        not finite, before anything of the epoch is checkpointed, so ``last.ckpt`` stays the last
        good one. The losses stay on the device during the epoch; this is one host sync (and under
        DDP one collective, so every process stops) per check, at most a few per epoch."""
        losses = self._epoch_losses
        if len(losses) <= self._losses_checked:
            return
        finite = torch.isfinite(torch.stack(losses))
        bad = not bool(finite.all())
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        self._losses_checked = len(losses)
        if not bad:
            return
        t = self.trainer
        if finite.all():
            where = "on another process"
        else:
            i = int((~finite).nonzero()[0])
            value = float(losses[i])
            step = t.global_step - len(losses) + i + 1
            where = (f"({value}) at optimizer step {step} (epoch {t.current_epoch}, minibatch "
                     f"{i + 1} of the epoch)")
        kept = [p for cb in t.checkpoint_callbacks for p in (getattr(cb, "last_model_path", ""),
                                                            getattr(cb, "best_model_path", ""))
                if p and os.path.isfile(p)]
        kept = sorted(set(kept), key=lambda p: not p.endswith("last.ckpt"))
        lr = ", ".join(f"{g['lr']:g}" for g in t.optimizers[0].param_groups) if t.optimizers else "?"
        raise FodlError(
            f"The training loss is not finite {where}: training diverged, so the run stops here, "
            "before checkpointing the diverged weights. "
            + (f"The last good checkpoint is kept: {kept[0]}. " if kept else
               "No checkpoint of this run was written before it. ")
            + f"Lower the learning rate (optimizer.lr; now {lr}), clip gradients "
            "(model.gradient_clip_val=1.0), or check the data for NaN/inf values.")

    def on_train_epoch_end(self) -> None:
        self._check_finite_losses()
        if self.scheduler_factory and self.scheduler_interval == "epoch":
            self.lr_schedulers().step()
        if self._epoch_losses:
            mean = torch.stack(self._epoch_losses).mean()
            self.log("train/loss", mean, on_epoch=True, sync_dist=True, prog_bar=True)
        self._epoch_losses.clear()
        self._losses_checked = 0

    def on_train_start(self) -> None:
        self._direct = self._can_step_directly()

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self._direct and not args and not kwargs:
            loss.backward()  # what Lightning's path runs here, minus the hook dispatch
            return
        super().manual_backward(loss, *args, **kwargs)

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self._direct and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            # what Lightning's 32-bit precision plugin runs
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _can_step_directly(self) -> bool:
        """Whether each minibatch's backward and optimizer step may skip Lightning's dispatch of
        step hooks (:func:`fodl.compat.can_step_directly`): ~10% of the book's MLP step."""
        return can_step_directly(self)

    # -- CUDA graphs --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if not self.cuda_graph:
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
        if not isinstance(getattr(self, "net", None), nn.Module):
            raise FodlError(f"model.cuda_graph=true graphs the module's `net`, and "
                            f"{type(self).__name__} has none. Set model.cuda_graph=false.")

    def capture_graph(self, x: torch.Tensor) -> None:
        """Graph ``self.net`` (forward + backward, training mode) for inputs shaped like ``x``.

        ``make_graphed_callables`` runs three warm-up passes on ``x``; they leave parameters
        and gradients alone but update running statistics (batch norm), so the buffers are put
        back: the graphed run trains exactly as the eager one would.
        """
        saved = [b.detach().clone() for b in self.net.buffers()]
        # a private copy becomes the graph's static input: the batch's own tensor would be
        # overwritten by the next call with another input (DQN passes next states, then states)
        torch.cuda.make_graphed_callables(self.net, (x.detach().clone(),))
        with torch.no_grad():
            for b, s in zip(self.net.buffers(), saved):
                b.copy_(s)
        self._graph_shape = x.shape

    # -- checkpoints (a text family's vocabularies + tokenisation settings travel in them) ----
    def text_state(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(vocabularies by name, plain tokenisation settings)`` that a text family keeps in
        its checkpoints (``fodl_text``), so that a CLI needs only the checkpoint. The default
        serves a family with one vocabulary in ``self.vocab`` (kept as ``words``) and its
        settings in ``self.text_settings`` if it has any; ``None`` (no vocabulary, or before
        ``setup``) keeps nothing. Families with several vocabularies override both methods."""
        vocab = getattr(self, "vocab", None)
        return None if vocab is None else ({"words": vocab}, getattr(self, "text_settings", {}))

    def set_text_state(self, vocabularies: dict[str, Any], settings: dict[str, Any]) -> None:
        """Take back what :meth:`text_state` stored (called on checkpoint load)."""
        if not hasattr(self, "vocab") or "words" not in vocabularies:
            raise FodlError(f"{type(self).__name__} cannot take the vocabularies "
                            f"{sorted(vocabularies)} of this checkpoint ({TEXT_KEY!r}): the file "
                            "was written by another model family.")
        self.vocab = vocabularies["words"]
        if hasattr(self, "text_settings"):
            self.text_settings = settings

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the global RNG states (dropout, random masks, negative samples draw from
        them), so a resumed run continues the same random stream as an uninterrupted one.
        Lightning keeps weights, optimizer, scheduler and loop state but not these. A text
        family's vocabularies go in too (:meth:`text_state`)."""
        text = self.text_state()
        if text is not None:
            store_text_state(checkpoint, *text)
        checkpoint["fodl_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["fodl_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if TEXT_KEY in checkpoint:
            self.set_text_state(*load_text_state(checkpoint))
        rng = checkpoint.get("fodl_rng")
        if not rng or self._trainer is None or not self.trainer.training:
            return  # weights for testing / inference: leave the RNG alone
        torch.set_rng_state(rng["torch"])
        cuda = rng.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    # -- optimisation --------------------------------------------------------------------
    def scheduler_horizon(self) -> int:
        """How many times the scheduler will be stepped in this run: optimizer steps (grouped
        minibatches counted one by one, accumulated ones as the one step they make) with
        ``scheduler_interval="step"``, else epochs. A scheduler config with
        ``total_steps: null`` gets this."""
        t = self.trainer
        if self.scheduler_interval != "step":
            return max(1, int(t.max_epochs))
        lightning_steps = int(t.estimated_stepping_batches)  # also loads the train loader
        per_epoch = getattr(t.train_dataloader, "num_batches", None)  # fodl's loaders
        if per_epoch is not None and (t.max_steps is None or t.max_steps < 0) and t.max_epochs > 0:
            # a short last group counts what it holds; an epoch's last accumulation steps too
            return max(1, -(-per_epoch() // self.accumulate_grad_batches) * t.max_epochs)
        minibatches = lightning_steps * getattr(t.train_dataloader, "steps_per_execution", 1)
        return max(1, -(-minibatches // self.accumulate_grad_batches))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one, every trainable parameter. A family that
        treats some parameters differently returns more; a group's keys override the
        optimizer's settings for it (``weight_decay``, ...), and ``lr_scale`` multiplies the
        optimizer's learning rate for it (the scheduler's ``max_lr`` too)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise FodlError(f"{type(self).__name__} was built without an optimizer: give "
                            "model.optimizer (the model configs use optimizer=<name>).")
        groups = self.parameter_groups()
        scales = [float(g.get("lr_scale", 1.0)) for g in groups]
        optimizer = self.optimizer_factory(params=groups if len(groups) > 1 else groups[0]["params"])
        if any(s != 1.0 for s in scales):
            for group, scale in zip(optimizer.param_groups, scales):
                group["lr"] *= scale
        if not self.scheduler_factory:  # None, or an empty `scheduler: none` node
            return optimizer
        filled = {}
        keywords = getattr(self.scheduler_factory, "keywords", {})
        if keywords.get("total_steps", 0) is None:
            filled["total_steps"] = self.scheduler_horizon()  # one-cycle, linear decay
        if any(s != 1.0 for s in scales) and isinstance(keywords.get("max_lr"), (int, float)):
            filled["max_lr"] = [keywords["max_lr"] * s for s in scales]  # one-cycle sets each group's
        scheduler = self.scheduler_factory(optimizer=optimizer, **filled)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
