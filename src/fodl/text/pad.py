"""Numericalised sequences as padded tensors with lengths.

- :func:`pad_ids`: a list of id sequences -> ``(N, T)`` tensor padded at the end + lengths.
- :func:`length_mask`: ``(N, T)`` bool, True on the real tokens.

(The text state a checkpoint keeps is :mod:`fodl.text.state`.)
"""

from __future__ import annotations

from typing import Sequence

import torch

from fodl.errors import FodlError


def pad_ids(sequences: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0,
            max_len: int | None = None,
            dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, lengths)``: ``ids`` ``(N, T)`` holds each sequence's first ``max_len`` ids,
    then ``pad_id``; ``T`` is the longest (cut) length, at least 1; ``lengths`` (int64)."""
    if max_len is not None and max_len < 1:
        raise FodlError(f"max_len={max_len}: it must be at least 1.")
    cut = [s[:max_len] if max_len is not None else s for s in sequences]
    lengths = torch.tensor([len(s) for s in cut], dtype=torch.long)
    width = max(int(lengths.max()) if len(cut) else 0, 1)
    out = torch.full((len(cut), width), pad_id, dtype=dtype)
    for i, s in enumerate(cut):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    return out, lengths


def length_mask(lengths: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """``(N, T)`` bool: True where position < length (the real tokens of a padded batch)."""
    width = int(lengths.max()) if width is None else width
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
