"""Batching of in-memory tensors by indexing: no Dataset, no collate, no worker processes.

The book's models are tiny and its batches are 100, so a per-sample ``Dataset`` + ``collate``
costs more than the model. A whole split lives in memory (on the training device when
possible) and a batch is one ``index_select`` per tensor.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch


class TensorLoader:
    """Iterate minibatches of equally long tensors.

    Args:
        tensors: tensors sharing their first dimension (e.g. images, labels).
        batch_size: examples per batch (per process under DDP).
        shuffle: draw a new permutation every epoch.
        drop_last: drop the last incomplete batch.
        seed: base seed; epoch ``e`` uses ``seed + e``, so every process draws the same
            permutation and a resumed run sees the same order as an uninterrupted one.
        rank, world_size: this process's share under data parallelism. Training shards are
            padded (as ``DistributedSampler`` does) so every process takes the same number of
            steps; evaluation shards are not padded so metrics count every example once.
        epoch_fn: returns the current epoch (the trainer's), read at the start of each pass.
        steps_per_execution: group this many consecutive minibatches into one item (a list of
            batch tuples) so a LightningModule can take several optimizer steps per Lightning
            step, amortising the framework's per-batch overhead. Same minibatches, same order.
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
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __len__(self) -> int:
        """Items per pass: minibatches, or groups of ``steps_per_execution`` of them."""
        return -(-self.num_batches() // self.steps_per_execution)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- iteration -----------------------------------------------------------------------
    def _indices(self) -> torch.Tensor | None:
        """Indices of this process's shard for this epoch; ``None`` means all, in order."""
        if not self.shuffle and self.world_size == 1:
            return None
        device = self.tensors[0].device
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
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

    def __iter__(self) -> Iterator:
        if self.steps_per_execution == 1:
            yield from self._batches()
            return
        group: list[tuple[torch.Tensor, ...]] = []
        for batch in self._batches():
            group.append(batch)
            if len(group) == self.steps_per_execution:
                yield group
                group = []
        if group:
            yield group
