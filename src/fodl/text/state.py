"""Text state in checkpoints: the vocabularies and the text settings a model was trained with
(tokenizer, maximum length, window features ...) kept in a Lightning checkpoint as plain
containers under ``checkpoint["fodl_text"]``, so that ``torch.load(weights_only=True)`` reads
them and a CLI needs nothing but the checkpoint.

- :func:`store_text_state` (from a LightningModule's ``on_save_checkpoint``);
- :func:`load_text_state` (on load, and by the CLIs that read a checkpoint).
"""

from __future__ import annotations

from typing import Any, Mapping

from fodl.errors import FodlError
from fodl.text.vocab import Vocabulary

TEXT_KEY = "fodl_text"


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
