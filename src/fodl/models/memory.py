"""The memory family of chapter 8: one LightningModule for the copy task and bAbI, for the DNC
and its LSTM baseline (any net mapping a sequence to one output per step).

The task follows the data: ``width`` (``data.width``: the copy task's bits per vector) or
``vocab_size`` (``data.max_size``: bAbI's word-table rows) is set, and the module builds its
net (a Hydra partial) with the task's input and output sizes. The loss is taken only on the
steps where an output is due (the copy task's write-out phase, bAbI's answer steps).

- Copy task: sigmoid cross-entropy per bit; ``*/error`` is the fraction of output bits wrong
  (threshold 0.5), ``*/bits_per_seq`` the bits wrong per sequence, both also per sequence
  length (``val/error_len<L>`` every validation epoch, ``test/error_len<L>``, and a
  bit-error-vs-length figure in TensorBoard).
- bAbI: softmax cross-entropy over the vocabulary at each answer word; a question is correct
  when all its answer words are; ``*/error_qa<N>`` is task N's question error,
  ``*/error`` the mean over tasks (the paper's "mean error") and ``*/failed_tasks`` the number
  of tasks above 5% error (the paper's "failed tasks").

With a TensorBoard logger and a net that traces its memory (the DNC), every validation epoch
draws one sequence's write weighting, read weightings and usage over time, with the gates
(the paper's figure 3).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fodl.callbacks import tensorboard
from fodl.data.copy_task import copy_io
from fodl.errors import FodlError
from fodl.models.base import FodlModule
from fodl.text.vocab import Vocabulary

FAILED = 0.05  # the paper's threshold for a failed bAbI task
MAX_TASKS = 21  # bAbI task numbers 1..20 index per-task counters directly


class MemoryModule(FodlModule):
    """Copy task / bAbI training and evaluation around a sequence net (module docstring).

    Args:
        net: a partial (``_partial_: true``) of a net taking ``input_size``, ``output_size``
            and ``tokens`` (:class:`fodl.nets.DNC`, :class:`fodl.nets.SequenceLSTM`), called
            with the task's sizes.
        width: copy task: bits per vector (``${data.width}``).
        vocab_size: bAbI: rows of the word tables (``${data.max_size}``).
        optimizer, scheduler, scheduler_interval, gradient_clip_val, cuda_graph: the shared
            training loop's settings (:class:`~fodl.models.base.FodlModule`).
        log_memory: with TensorBoard, the memory figure every validation epoch.
    """

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        gradient_clip_val: float | None = None,
        cuda_graph: bool = False,
        width: int | None = None,
        vocab_size: int | None = None,
        log_memory: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val, cuda_graph)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        if (width is None) == (vocab_size is None):
            raise FodlError(
                "The sequence models (model=dnc, model=dnc_lstm_baseline) need a sequence task: "
                "data=copy (model.width follows data.width) or data=babi (model.vocab_size follows "
                f"data.max_size); got width={width}, vocab_size={vocab_size}.")
        if cuda_graph:
            raise FodlError("model.cuda_graph=true is not supported by the sequence models (their "
                            "batches change length); set model.cuda_graph=false.")
        self.tokens = vocab_size is not None
        if self.tokens:
            in_size, out_size = vocab_size, vocab_size
        else:
            in_size, out_size = copy_io(width)
        self.net = net(input_size=in_size, output_size=out_size, tokens=self.tokens)
        self.width, self.vocab_size = width, vocab_size
        self.log_memory = log_memory
        self.vocab: Vocabulary | None = None
        self._stats: dict[str, torch.Tensor] = {}
        self._sample: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- data this family needs ---------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        if self.tokens:
            self.vocab = getattr(dm, "vocab", None)
            if self.vocab is None:
                raise FodlError(f"model.vocab_size is set (a bAbI net) but the data module "
                                f"{type(dm).__name__} has no vocabulary: use data=babi.")
            if len(self.vocab) > self.vocab_size:
                raise FodlError(f"The vocabulary has {len(self.vocab)} words but the net "
                                f"{self.vocab_size} rows (model.vocab_size): set data.max_size >= "
                                f"{len(self.vocab)}.")
        elif getattr(dm, "width", None) != self.width:
            raise FodlError(f"model.width={self.width} but the data module {type(dm).__name__} "
                            f"has width={getattr(dm, 'width', None)}: use data=copy, and let "
                            "model.width follow data.width.")

    # -- losses -------------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        if self.tokens:
            ce = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")
            mask = batch.answer
            return (ce * mask).sum() / mask.sum().clamp_min(1)
        mask = batch.mask.unsqueeze(-1).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none")
        return (bce * mask).sum() / (mask.sum() * logits.shape[-1]).clamp_min(1)

    def training_loss(self, batch) -> torch.Tensor:
        return self._loss(self.net(batch.inputs), batch)

    # -- evaluation ---------------------------------------------------------------------------
    def _eval_step(self, batch, stage: str) -> None:
        logits = self.net(batch.inputs)
        self.log(f"{stage}/loss", self._loss(logits, batch), on_epoch=True, sync_dist=True,
                 batch_size=len(batch.inputs), prog_bar=stage == "val")
        if self.tokens:
            self._count_babi(logits, batch, stage)
        else:
            self._count_copy(logits, batch, stage)
        if stage == "val":
            self._sample = batch

    def _add(self, key: str, size: int, index: torch.Tensor, values: torch.Tensor) -> None:
        t = self._stats.get(key)
        if t is None or len(t) < size:
            grown = torch.zeros(size, dtype=torch.float64, device=values.device)
            if t is not None:
                grown[: len(t)] = t
            t = self._stats[key] = grown
        t.index_add_(0, index, values.to(torch.float64))

    def _count_copy(self, logits, batch, stage: str) -> None:
        wrong = ((logits > 0) != (batch.targets > 0.5)) & batch.mask.unsqueeze(-1)
        size = int(batch.length.max()) + 1
        self._add(f"{stage}/wrong", size, batch.length, wrong.sum((1, 2)))
        self._add(f"{stage}/bits", size, batch.length, batch.mask.sum(1) * logits.shape[-1])
        self._add(f"{stage}/seqs", size, batch.length, torch.ones_like(batch.length))

    def _count_babi(self, logits, batch, stage: str) -> None:
        wrong = (logits.argmax(-1) != batch.targets) & batch.answer
        q = batch.question.clamp_min(0)
        n_q = int(q.max()) + 1
        words = torch.zeros(len(q), n_q, device=q.device).scatter_add_(1, q, batch.answer.float())
        errors = torch.zeros_like(words).scatter_add_(1, q, wrong.float())
        asked = words > 0
        self._add(f"{stage}/questions", MAX_TASKS, batch.task, asked.sum(1))
        self._add(f"{stage}/correct", MAX_TASKS, batch.task, (asked & (errors == 0)).sum(1))

    def _reduced(self, stage: str) -> dict[str, torch.Tensor]:
        stats = {k.split("/", 1)[1]: v for k, v in self._stats.items() if k.startswith(stage + "/")}
        for k in [k for k in self._stats if k.startswith(stage + "/")]:
            del self._stats[k]
        if self.trainer.world_size > 1:  # every process counted its shard
            size = torch.tensor([len(v) for v in stats.values()] or [0], device=self.device)
            size = int(self.trainer.strategy.reduce(size.max().float(), reduce_op="max"))
            for k, v in stats.items():
                v = torch.cat([v, v.new_zeros(size - len(v))]) if len(v) < size else v
                stats[k] = self.trainer.strategy.reduce(v, reduce_op="sum")
        return stats

    def _epoch_end(self, stage: str) -> None:
        stats = self._reduced(stage)
        if not stats:
            return
        writer = tensorboard(self.trainer) if self.trainer.is_global_zero else None
        if self.tokens:
            asked, correct = stats["questions"], stats["correct"]
            present = (asked > 0).nonzero().flatten().tolist()
            errors = {t: float(1 - correct[t] / asked[t]) for t in present}
            for t, e in errors.items():
                self.log(f"{stage}/error_qa{t}", e, sync_dist=False)
            mean = sum(errors.values()) / max(len(errors), 1)
            self.log(f"{stage}/error", mean, prog_bar=stage == "val")
            self.log(f"{stage}/failed_tasks", float(sum(e > FAILED for e in errors.values())))
            return
        wrong, bits, seqs = stats["wrong"], stats["bits"], stats["seqs"]
        self.log(f"{stage}/error", float(wrong.sum() / bits.sum().clamp_min(1)), prog_bar=stage == "val")
        self.log(f"{stage}/bits_per_seq", float(wrong.sum() / seqs.sum().clamp_min(1)))
        lengths = (seqs > 0).nonzero().flatten().tolist()
        by_length = {n: float(wrong[n] / bits[n]) for n in lengths}
        for n, e in by_length.items():  # per length, every validation epoch too (a curve per length)
            self.log(f"{stage}/error_len{n}", e)
        if writer is not None:
            writer.add_figure(f"{stage}/bit_error_by_length", error_by_length_figure(by_length),
                              self.global_step)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")
        sample, self._sample = self._sample, None
        if (self.log_memory and sample is not None and self.trainer.is_global_zero
                and not self.trainer.sanity_checking):
            writer = tensorboard(self.trainer)
            if writer is not None:
                self._draw_memory(writer, sample)

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits = self.net(batch.inputs)
        return logits.argmax(-1) if self.tokens else (logits > 0).float()

    # -- TensorBoard -----------------------------------------------------------------------
    def _draw_memory(self, writer, batch) -> None:
        with torch.no_grad():
            out = self.net(batch.inputs[:1], trace=True)
        trace = out[1] if isinstance(out, tuple) else {}
        if not trace:
            return
        if self.tokens:  # word ids (T,) or sentence steps (T, L): the story's last step
            used = (batch.inputs[0] != 0).reshape(batch.inputs.shape[1], -1).any(-1)
            steps = int(used.nonzero().max()) + 1
        else:
            steps = int(batch.mask[0].nonzero().max()) + 1
        writer.add_figure("memory/one_sequence", memory_figure(trace, steps), self.global_step)


def memory_figure(trace: dict[str, torch.Tensor], steps: int | None = None):
    """The paper's figure 3 kind of picture for the first sequence of ``trace`` (a DNC's
    ``forward(x, trace=True)``): write weighting, each read weighting and usage as
    slots-by-time images, and the allocation, write and free gates over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ww = trace["write_weights"][0, :steps].cpu().T
    rw = trace["read_weights"][0, :steps].cpu()  # (T, R, N)
    usage = trace["usage"][0, :steps].cpu().T
    heads = rw.shape[1]
    fig, axes = plt.subplots(3 + heads, 1, figsize=(8, 2.0 * (3 + heads)), sharex=True)
    panels = [("write weighting", ww)] + [(f"read weighting {i + 1}", rw[:, i].T) for i in range(heads)] + [
        ("usage", usage)]
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_ylabel("slot")
        ax.set_title(title, fontsize=9)
    ax = axes[-1]
    for key, label in (("allocation_gate", "allocation gate"), ("write_gate", "write gate")):
        ax.plot(trace[key][0, :steps].cpu().numpy(), label=label)
    free = trace["free_gates"][0, :steps].cpu()
    for i in range(free.shape[1]):
        ax.plot(free[:, i].numpy(), label=f"free gate {i + 1}", linestyle="--")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("time step")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def error_by_length_figure(by_length: dict[int, float]):
    """Bit error (%) against sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(list(by_length), [100 * e for e in by_length.values()], marker="o")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("bit error (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
