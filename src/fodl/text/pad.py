"""Numericalised sequences as padded tensors with lengths, and text state in checkpoints.

- :func:`pad_ids`: a list of id sequences -> ``(N, T)`` tensor padded at the end + lengths.
- :func:`length_mask`: ``(N, T)`` bool, True on the real tokens.
- :func:`store_text_state` / :func:`load_text_state`: vocabularies and the text settings a
  model was trained with (tokenizer, maximum length, window features ...) kept in a Lightning
  checkpoint as plain containers under ``checkpoint["fodl_text"]``, so that
  ``torch.load(weights_only=True)`` reads them and a CLI needs nothing but the checkpoint.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fodl.errors import FodlError
from fodl.text.vocab import Vocabulary

TEXT_KEY = "fodl_text"


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


def store_text_state(checkpoint: dict, vocabularies: Mapping[str, Vocabulary],
                     settings: Mapping[str, Any] | None = None) -> None:
    """Put ``vocabularies`` (as :meth:`Vocabulary.to_dict`) and plain ``settings`` into a
    checkpoint dict (from a LightningModule's ``on_save_checkpoint``)."""
    checkpoint[TEXT_KEY] = {"vocabularies": {k: v.to_dict() for k, v in vocabularies.items()},
                            "settings": dict(settings or {})}


def load_text_state(checkpoint: Mapping, source: str = "the checkpoint"
                    ) -> tuple[dict[str, Vocabulary], dict[str, Any]]:
    """The vocabularies and settings :func:`store_text_state` put into ``checkpoint``."""
    state = checkpoint.get(TEXT_KEY)
    if not isinstance(state, Mapping) or "vocabularies" not in state:
        raise FodlError(f"{source} holds no vocabulary ({TEXT_KEY!r} is missing): it was not "
                        "written by a fodl text model (pos_tagger, lstm_sentiment, ...) after "
                        "training started. Use a checkpoint from such a run's checkpoints/ folder.")
    vocabs = {k: Vocabulary.from_dict(v) for k, v in state["vocabularies"].items()}
    return vocabs, dict(state.get("settings") or {})
