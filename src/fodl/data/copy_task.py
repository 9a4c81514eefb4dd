"""The copy task (Graves et al. 2014/2016): read a sequence of random bit vectors, then write
it out again (``repeats`` times, the repeat-copy variant), generated on the fly and seeded.

One example of ``L`` vectors of ``width`` bits and ``k`` repeats has ``L + 1 + k L`` steps and
``width + 2`` input channels: the ``L`` bit vectors (channels ``0..width-1``), then a delimiter
step (channel ``width`` = 1, channel ``width + 1`` = ``k / max_repeats``), then ``k L`` blank
steps during which the net must output the vectors ``k`` times. Targets (``width`` channels)
and the output mask are non-zero only on those last ``k L`` steps.

A batch is ``(inputs (B, T, width + 2), targets (B, T, width), mask (B, T) bool, length (B,))``;
all sequences of a batch have the same length and repeats (no padding: every step is real).
Training draws each batch's length and repeats uniformly from the configured ranges, from a
random stream that is a function of (seed, epoch, rank) only, so a resumed run sees the same
batches as an uninterrupted one. Validation and test sets are fixed: ``eval_batches`` batches
for each length (and repeat count) of their ranges.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import lightning as L
import torch

from fodl.data.loader import derive_seed
from fodl.errors import FodlError

CONTROL_CHANNELS = 2  # the delimiter flag and the repeat count


def copy_io(width: int) -> tuple[int, int]:
    """``(input_size, output_size)`` of the copy task with ``width``-bit vectors."""
    return width + CONTROL_CHANNELS, width


class CopyBatch(NamedTuple):
    inputs: torch.Tensor  # (B, T, width + 2) float
    targets: torch.Tensor  # (B, T, width) float 0/1
    mask: torch.Tensor  # (B, T) bool: the output steps
    length: torch.Tensor  # (B,) long: L, the number of vectors to copy


def make_copy_batch(batch_size: int, length: int, width: int, repeats: int = 1, max_repeats: int = 1,
                    generator: torch.Generator | None = None) -> CopyBatch:
    """One batch of copy-task sequences (module docstring)."""
    steps = length + 1 + repeats * length
    bits = torch.randint(0, 2, (batch_size, length, width), generator=generator).float()
    x = torch.zeros(batch_size, steps, width + CONTROL_CHANNELS)
    x[:, :length, :width] = bits
    x[:, length, width] = 1.0
    x[:, length, width + 1] = repeats / max_repeats
    y = torch.zeros(batch_size, steps, width)
    y[:, length + 1 :] = bits.repeat(1, repeats, 1)
    mask = torch.zeros(batch_size, steps, dtype=torch.bool)
    mask[:, length + 1 :] = True
    return CopyBatch(x, y, mask, torch.full((batch_size,), length, dtype=torch.long))


class _TrainBatches:
    """``batches`` random batches per pass, drawn from the stream of (seed, epoch, rank)."""

    def __init__(self, dm: CopyTaskDataModule, epoch_fn: Callable[[], int], rank: int) -> None:
        self.dm, self.epoch_fn, self.rank = dm, epoch_fn, rank

    def __len__(self) -> int:
        return self.dm.batches_per_epoch

    def __iter__(self) -> Iterator[CopyBatch]:
        dm = self.dm
        g = torch.Generator().manual_seed(derive_seed(dm.seed, int(self.epoch_fn()), self.rank))
        for _ in range(dm.batches_per_epoch):
            length = int(torch.randint(dm.min_length, dm.max_length + 1, (1,), generator=g))
            repeats = int(torch.randint(dm.min_repeats, dm.max_repeats + 1, (1,), generator=g))
            yield make_copy_batch(dm.batch_size, length, dm.width, repeats, dm.max_repeats, g)


class _FixedBatches:
    """A fixed list of batches as one loader (a plain list would be many loaders to Lightning)."""

    def __init__(self, batches: list[CopyBatch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[CopyBatch]:
        return iter(self.batches)


class CopyTaskDataModule(L.LightningDataModule):
    """The copy task as a DataModule (module docstring).

    Args:
        width: bits per vector (the net has ``width + 2`` inputs and ``width`` outputs).
        min_length, max_length: training lengths (vectors to copy), drawn uniformly per batch.
        min_repeats, max_repeats: how many times to write the sequence out (1: plain copy).
        batch_size: sequences per training batch.
        batches_per_epoch: training batches per epoch (the data is endless).
        eval_batch_size, eval_batches: sequences per evaluation batch, and batches per
            length (and repeat count) in the validation and test sets.
        val_lengths: validation lengths ``[lo, hi]``; null: the training range.
        test_lengths: test lengths ``[lo, hi]``, e.g. ``[1, 20]`` for generalisation to twice
            the training length; null: the training range.
        seed: the random stream of every split.
    """

    def __init__(self, width: int = 8, min_length: int = 1, max_length: int = 10,
                 min_repeats: int = 1, max_repeats: int = 1, batch_size: int = 32,
                 batches_per_epoch: int = 100, eval_batch_size: int = 64, eval_batches: int = 1,
                 val_lengths: list[int] | None = None, test_lengths: list[int] | None = None,
                 seed: int | None = 0) -> None:
        super().__init__()
        problems = []
        for name, v in (("width", width), ("min_length", min_length), ("min_repeats", min_repeats),
                        ("batch_size", batch_size), ("batches_per_epoch", batches_per_epoch),
                        ("eval_batch_size", eval_batch_size), ("eval_batches", eval_batches)):
            if v < 1:
                problems.append(f"data.{name}={v} must be >= 1")
        if max_length < min_length:
            problems.append(f"data.max_length={max_length} is below data.min_length={min_length}")
        if max_repeats < min_repeats:
            problems.append(f"data.max_repeats={max_repeats} is below data.min_repeats={min_repeats}")
        for name, r in (("val_lengths", val_lengths), ("test_lengths", test_lengths)):
            if r is not None and (len(r) != 2 or not 1 <= r[0] <= r[1]):
                problems.append(f"data.{name}={list(r)} must be [lo, hi] with 1 <= lo <= hi")
        if problems:
            raise FodlError("Copy task: " + "; ".join(problems) + ".")
        self.width = width
        self.min_length, self.max_length = min_length, max_length
        self.min_repeats, self.max_repeats = min_repeats, max_repeats
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.eval_batch_size, self.eval_batches = eval_batch_size, eval_batches
        self.val_lengths = tuple(val_lengths or (min_length, max_length))
        self.test_lengths = tuple(test_lengths or (min_length, max_length))
        self.seed = 0 if seed is None else int(seed)
        self.input_size, self.output_size = copy_io(width)
        self.splits: dict[str, list[CopyBatch]] = {}

    def eval_set(self, lengths: tuple[int, int], stream: int) -> list[CopyBatch]:
        """``eval_batches`` batches for every length in ``lengths`` and every repeat count,
        from the fixed stream ``stream`` (1: validation, 2: test)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, 2**40 + stream))
        return [make_copy_batch(self.eval_batch_size, n, self.width, k, self.max_repeats, g)
                for n in range(lengths[0], lengths[1] + 1)
                for k in range(self.min_repeats, self.max_repeats + 1)
                for _ in range(self.eval_batches)]

    def setup(self, stage: str | None = None) -> None:
        if "val" not in self.splits:
            self.splits["val"] = self.eval_set(self.val_lengths, 1)
            self.splits["test"] = self.eval_set(self.test_lengths, 2)

    def _shard(self, batches: list[CopyBatch]) -> _FixedBatches:
        t = self.trainer
        if t is not None and t.world_size > 1:
            batches = batches[t.global_rank :: t.world_size]
        return _FixedBatches(batches)

    def train_dataloader(self) -> _TrainBatches:
        t = self.trainer
        epoch_fn = (lambda: t.current_epoch) if t is not None else (lambda: 0)
        return _TrainBatches(self, epoch_fn, t.global_rank if t is not None else 0)

    def val_dataloader(self) -> _FixedBatches:
        return self._shard(self.splits["val"])

    def test_dataloader(self) -> _FixedBatches:
        return self._shard(self.splits["test"])

    def predict_dataloader(self) -> _FixedBatches:
        return self.test_dataloader()
