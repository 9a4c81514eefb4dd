"""Word vectors trained here: the input embeddings of a chapter 6 skip-gram checkpoint, with
its vocabulary (the CoNLL tagger's ``data.vectors=<run>.ckpt``, ``scripts/word_vectors.py``).
Files in word2vec's formats are :mod:`fodl.text.vectors`."""

from __future__ import annotations

from pathlib import Path

import torch

from fodl.checkpoint import read_checkpoint
from fodl.errors import FodlError
from fodl.text.state import TEXT_KEY, load_text_state
from fodl.text.vocab import Vocabulary

# the input embeddings of a skip-gram net (fodl.nets.skipgram.SkipGramNet) in its module's state
EMBEDDING_KEY = "net.in_embed.weight"


def load_word_vectors(ckpt_path: str | Path) -> tuple[torch.Tensor, Vocabulary]:
    """``(vectors, vocabulary)`` of a skip-gram checkpoint: one row per vocabulary word."""
    ckpt = read_checkpoint(ckpt_path)
    if EMBEDDING_KEY not in ckpt["state_dict"] or TEXT_KEY not in ckpt:
        raise FodlError(f"{ckpt_path} is not a skip-gram checkpoint (it has no {EMBEDDING_KEY} "
                        "and vocabulary). Give a checkpoint of a model=skipgram run.")
    vocab = load_text_state(ckpt, str(ckpt_path))[0]["words"]
    return ckpt["state_dict"][EMBEDDING_KEY][: len(vocab)].float(), vocab
