"""Batches of variable-length sequences: length buckets, each batch cut to its longest member.

A split is held as a padded ``(N, T)`` token tensor (padding at the end), the lengths and any
per-sequence tensors (labels). :class:`LengthBucketLoader` is a
:class:`~fodl.data.loader.TensorLoader` (same seeding, DDP sharding and ``max_batches``)
whose batches are dense:

- training: every epoch the shard is shuffled (the stream of ``(seed, epoch)``), cut into pools
  of ``bucket_batches`` batches, each pool sorted by length and cut into batches, and the order
  of all batches shuffled: sequences of a batch have nearly the same length, and every epoch
  still mixes them differently (the classic ``BucketIterator`` scheme);
- evaluation: the shard sorted by length, longest first;
- every batch is ``(tokens[:, :longest], lengths, *others)``: no column is only padding.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from fodl.data.loader import TensorLoader, derive_seed


class LengthBucketLoader(TensorLoader):
    """``tensors = (tokens (N, T), lengths (N,), *others)``; ``bucket_batches``: batches per
    sorted pool in training (0: plain shuffled batches, still cut to their longest member).
    Other arguments: :class:`~fodl.data.loader.TensorLoader`."""

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, *,
                 bucket_batches: int = 50, **kwargs) -> None:
        super().__init__(tensors, batch_size, **kwargs)
        if self.tensors[0].ndim != 2 or self.tensors[1].ndim != 1:
            raise ValueError("LengthBucketLoader takes (tokens (N, T), lengths (N,), ...)")
        self.bucket_batches = int(bucket_batches)

    def batch_indices(self) -> list[torch.Tensor]:
        """This epoch's batches, as index tensors into the split (on its device)."""
        if self.epoch_fn is not None:
            self.epoch = int(self.epoch_fn())
        lengths = self.tensors[1]
        idx = self._indices()
        if idx is None:
            idx = torch.arange(self._n, device=lengths.device)
        bs = self.batch_size
        if self.shuffle and self.bucket_batches:
            pool = self.bucket_batches * bs  # whole batches per pool: only the last can be short
            batches = []
            for p in idx.split(pool):
                p = p[torch.argsort(lengths[p], descending=True, stable=True)]
                batches += list(p.split(bs))
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0xB0C))
            order = torch.randperm(len(batches), generator=g).tolist()
            if self.drop_last and batches and len(batches[-1]) < bs:
                short = len(batches) - 1
                order = [i for i in order if i != short]
            batches = [batches[i] for i in order]
        elif self.shuffle:
            batches = list(idx.split(bs))
        else:
            batches = list(idx[torch.argsort(lengths[idx], descending=True, stable=True)].split(bs))
        if self.drop_last and not (self.shuffle and self.bucket_batches):
            batches = [b for b in batches if len(b) == bs]
        return batches[: self.num_batches()]

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        tokens, lengths, *others = self.tensors
        for sel in self.batch_indices():
            lens = lengths.index_select(0, sel)
            width = max(int(lens.max()), 1)
            yield (tokens[:, :width].index_select(0, sel), lens,
                   *(t.index_select(0, sel) for t in others))
