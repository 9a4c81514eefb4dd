"""Batching of in-memory tensors by indexing: no Dataset, no collate, no worker processes.

The book's models are tiny and its batches are 100, so a per-sample ``Dataset`` + ``collate``
costs more than the model. A whole split lives in memory (on the training device when
possible) and a batch is one ``index_select`` per tensor.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import torch


def derive_seed(*keys: int) -> int:
    """A 64-bit seed for the random stream named by ``keys`` (e.g. run seed, epoch, rank):
    a hash (numpy's ``SeedSequence``), so streams of different keys never coincide as they
    do with ``seed + epoch`` (where seed 0's epoch 1 is seed 1's epoch 0)."""
    from numpy.random import SeedSequence

    return int(SeedSequence([int(k) % 2**64 for k in keys]).generate_state(1, "uint64")[0])


class StepGroup(list):
    """Consecutive minibatches delivered as one item (``steps_per_execution > 1``): the
    training loop (:class:`fodl.models.base.FodlModule`) takes one optimizer step for each, in
    order. A type of its own, so that a plain ``list`` batch (what ``default_collate`` makes of
    a dataset of tuples) is never mistaken for a group. Outside this module and the training
    loop, code sees items through :func:`minibatches_of` / :func:`one_item` only."""

    __slots__ = ()


def minibatches_of(item: Any) -> Sequence:
    """The minibatches a loader's item holds, in order: the item's group, or the item alone."""
    return item if type(item) is StepGroup else (item,)


def one_item(minibatches: Sequence) -> Any:
    """The loader item that holds ``minibatches`` (a lone minibatch is its own item)."""
    return minibatches[0] if len(minibatches) == 1 else StepGroup(minibatches)


def map_minibatches(item: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to the minibatch a loader yielded, or to each minibatch of the item."""
    if type(item) is StepGroup:
        return StepGroup(fn(b) for b in item)
    return fn(item)


# the trainer's own limit_train_batches / val_check_interval, before attach() translated them
_USER_LIMITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class MinibatchLoader:
    """Base of fodl's training loaders: a subclass yields one pass of ordinary minibatches
    (``_batches()``) and says how many (``num_batches()``); this class delivers them one by one,
    or ``steps_per_execution`` at a time as :class:`StepGroup` items, so a LightningModule can
    take several optimizer steps per Lightning step, amortising the framework's per-batch
    overhead (same minibatches, same order).

    Grouping is known here and in the training loop (:mod:`fodl.models.base`) only.
    :meth:`attach` decides, for the trainer at hand, whether grouping can be invisible (else
    it delivers single minibatches) and keeps the trainer's batch counts
    (``limit_train_batches``, an int ``val_check_interval``) counting minibatches;
    :meth:`minibatches_in` tells a progress display how many minibatches a number of items
    holds, and :meth:`minibatches` iterates minibatches whatever the grouping.
    """

    steps_per_execution: int = 1
    max_batches: int | None = None  # stop each pass after this many minibatches; None: all
    epoch: int = 0

    def num_batches(self) -> int:
        """Minibatches per pass (per process)."""
        raise NotImplementedError

    def _batches(self) -> Iterator:
        raise NotImplementedError

    def minibatches(self) -> Iterator:
        """One pass of ordinary minibatches, never grouped."""
        return self._batches()

    def __len__(self) -> int:
        """Items per pass: minibatches, or groups of ``steps_per_execution`` of them."""
        return -(-self.num_batches() // self.steps_per_execution)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator:
        if self.steps_per_execution == 1:
            yield from self._batches()
            return
        group = StepGroup()
        for batch in self._batches():
            group.append(batch)
            if len(group) == self.steps_per_execution:
                yield group
                group = StepGroup()
        if group:
            yield group

    def minibatches_in(self, items: int) -> int:
        """Minibatches in the first ``items`` items of a pass (the last group may be short)."""
        if self.steps_per_execution == 1:
            return items
        return min(items * self.steps_per_execution, self.num_batches())

    def attach(self, trainer) -> None:
        """Make this the training loader of ``trainer``: group ``steps_per_execution``
        minibatches per item only where nothing can tell (:func:`invisible_grouping`), and keep
        the trainer's settings that count batches meaning minibatches. Lightning counts *items*;
        ``limit_train_batches`` (int or fraction) is applied by this loader itself and the
        trainer's own limit lifted; an int ``val_check_interval`` becomes whole groups (the
        group size is cut to a divisor of it, so validation runs after exactly that many
        minibatches). The user's values are kept, so a re-created loader translates again."""
        if trainer is None:
            return
        if trainer not in _USER_LIMITS:
            _USER_LIMITS[trainer] = (trainer.limit_train_batches, trainer.val_check_interval)
        limit, every = _USER_LIMITS[trainer]
        trainer.limit_train_batches, trainer.val_check_interval = limit, every  # as the user set them
        k = invisible_grouping(trainer, self.steps_per_execution, every)
        self.steps_per_execution = k
        if k == 1:
            return
        if isinstance(limit, int):
            self.max_batches = limit
            trainer.limit_train_batches = 1.0
        elif isinstance(limit, float) and limit < 1.0:
            self.max_batches = max(int(self.num_batches() * limit), 1 if limit > 0 else 0)
            trainer.limit_train_batches = 1.0
        if isinstance(every, int):
            trainer.val_check_interval = every // k


def invisible_grouping(trainer, k: int, val_check_interval: Any = None) -> int:
    """The group size (``<= k``) at which grouping changes nothing anyone can see: 1 when
    something observes Lightning's training batches one by one, i.e. a step limit
    (``max_steps``, checked once per item), a profiler (its per-batch timings), or a callback
    with a per-batch hook (``on_train_batch_start`` / ``on_train_batch_end``: it would see a
    group as one batch), except progress bars (they count minibatches through
    :meth:`MinibatchLoader.minibatches_in`) and checkpointers that save per epoch only; else
    ``k`` cut to a divisor of an int ``val_check_interval``."""
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
    from lightning.pytorch.profilers import PassThroughProfiler

    from fodl.compat import saves_mid_epoch

    if k <= 1:
        return 1
    if (trainer.max_steps or -1) >= 0 or not isinstance(trainer.profiler, PassThroughProfiler):
        return 1
    for cb in trainer.callbacks:
        if isinstance(cb, ProgressBar) or (isinstance(cb, ModelCheckpoint) and not saves_mid_epoch(cb)):
            continue
        if any(getattr(type(cb), hook) is not getattr(Callback, hook)
               for hook in ("on_train_batch_start", "on_train_batch_end")):
            return 1
    if isinstance(val_check_interval, int):
        return math.gcd(k, val_check_interval)
    return k


class MinibatchDataModule(L.LightningDataModule):
    """Base of fodl's DataModules whose training loader is a :class:`MinibatchLoader`: the one
    place a DataModule takes ``data.steps_per_execution`` (several optimizer steps per
    Lightning step: same minibatches, same order, less framework overhead for small nets).

    A subclass builds its training loader and returns ``self.training_loader(loader)``, and
    puts per-minibatch work after the transfer to the device (augmentation) in
    :meth:`on_after_minibatch_transfer`.

    Args:
        steps_per_execution: minibatches per Lightning step when nothing observes Lightning's
            batches one by one (:func:`invisible_grouping`); 1: one per step.
    """

    def __init__(self, steps_per_execution: int = 1) -> None:
        super().__init__()
        self.steps_per_execution = int(steps_per_execution)

    def training_loader(self, loader: MinibatchLoader) -> MinibatchLoader:
        """``loader`` as the training loader of this DataModule's trainer (grouped when that
        changes nothing anyone sees)."""
        loader.steps_per_execution = self.steps_per_execution
        loader.attach(self.trainer)
        return loader

    def on_after_minibatch_transfer(self, minibatch: Any) -> Any:
        """One minibatch after its transfer to the device (train, validation or test): the
        place for on-device augmentation. The default leaves it alone."""
        return minibatch

    @property
    def transforms_batches(self) -> bool:
        """Whether :meth:`on_after_minibatch_transfer` has anything to do (else batches skip it)."""
        return type(self).on_after_minibatch_transfer is not MinibatchDataModule.on_after_minibatch_transfer

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not self.transforms_batches:
            return batch
        return map_minibatches(batch, self.on_after_minibatch_transfer)


class TensorLoader(MinibatchLoader):
    """Iterate minibatches of equally long tensors.

    Args:
        tensors: tensors sharing their first dimension (e.g. images, labels).
        batch_size: examples per batch (per process under DDP).
        shuffle: draw a new permutation every epoch.
        drop_last: drop the last incomplete batch.
        seed: base seed; epoch ``e`` shuffles with a generator seeded by a hash of
            ``(seed, e)``, so every process draws the same permutation, a resumed run sees the
            same order as an uninterrupted one, and no two seeds share an epoch's order (as
            with ``seed + e``, where seed 0's epoch 1 was seed 1's epoch 0).
        rank, world_size: this process's share under data parallelism. Training shards are
            padded (as ``DistributedSampler`` does) so every process takes the same number of
            steps; evaluation shards are not padded so metrics count every example once.
        epoch_fn: returns the current epoch (the trainer's), read at the start of each pass.
        steps_per_execution: group this many consecutive minibatches into one item (a
            :class:`StepGroup` of batch tuples) so a LightningModule can take several optimizer
            steps per Lightning step, amortising the framework's per-batch overhead. Same
            minibatches, same order.
        max_batches: stop each pass after this many minibatches (``limit_train_batches``
            counted in minibatches whatever the grouping); None: all.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_to_equal: bool | None = None,
        epoch_fn: Callable[[], int] | None = None,
        steps_per_execution: int = 1,
        max_batches: int | None = None,
    ) -> None:
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"tensor lengths differ: {[len(t) for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tuple(tensors)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad_to_equal = shuffle if pad_to_equal is None else pad_to_equal
        self.epoch_fn = epoch_fn
        if steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}")
        self.steps_per_execution = int(steps_per_execution)
        self.max_batches = max_batches
        self.epoch = 0
        self._n = n

    # -- sizes ---------------------------------------------------------------------------
    def _shard_size(self) -> int:
        if self.world_size == 1:
            return self._n
        if self.pad_to_equal:
            return -(-self._n // self.world_size)
        return len(range(self.rank, self._n, self.world_size))

    def num_batches(self) -> int:
        """Minibatches per pass (per process)."""
        m = self._shard_size()
        n = m // self.batch_size if self.drop_last else -(-m // self.batch_size)
        return n if self.max_batches is None else min(n, max(int(self.max_batches), 0))

    # -- iteration -----------------------------------------------------------------------
    def _indices(self) -> torch.Tensor | None:
        """Indices of this process's shard for this epoch; ``None`` means all, in order."""
        if not self.shuffle and self.world_size == 1:
            return None
        device = self.tensors[0].device
        if self.shuffle:
            # one stream per (seed, epoch), a function of both only (a resumed run replays it)
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            idx = torch.randperm(self._n, generator=g)
        else:
            idx = torch.arange(self._n)
        if self.world_size > 1:
            if self.pad_to_equal:
                total = self._shard_size() * self.world_size
                if total > self._n:
                    idx = torch.cat([idx, idx[: total - self._n]])
            idx = idx[self.rank :: self.world_size]
        return idx.to(device)

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.epoch_fn is not None:
            self.epoch = int(self.epoch_fn())
        idx = self._indices()
        bs = self.batch_size
        for b in range(self.num_batches()):
            if idx is None:
                yield tuple(t[b * bs : (b + 1) * bs] for t in self.tensors)
            else:
                sel = idx[b * bs : (b + 1) * bs]
                yield tuple(t.index_select(0, sel) for t in self.tensors)
