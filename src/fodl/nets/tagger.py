"""The neural n-gram tagger of book chapter 7: a window of word embeddings -> MLP -> tag logits.

Input: ``(B, W, F)`` integer features from :class:`fodl.text.window.WindowFeaturizer`
(column 0 the word id, 1 the word's shape, 2... its suffix ids), ``W`` words per window.
Each word of the window becomes the concatenation of its word embedding (300-d in the book),
and, when enabled, a shape embedding and suffix embeddings; the ``W`` of them are concatenated
(the book's 3 x 300 = 900 inputs) and go through the hidden layers (book: 512, 256) to
``num_tags`` logits.

``style=book`` is the book's code: every layer, the output included, is
``sigmoid(batch_norm(W x + b))`` (TF's ``batch_norm_with_global_normalization``, eps 1e-3, EMA
decay 0.9), and those sigmoid outputs feed the softmax; ``style=modern`` (default) keeps batch
norm on the hidden layers with ReLU, dropout, and linear logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class WindowTaggerNet(nn.Module):
    """Args:
        vocab_size: word embedding rows (at least the word vocabulary's size).
        embedding_dim: word embedding size (book: 300).
        left, right: context words before / after the tagged word (``data.left`` /
            ``data.right``); a window has ``left + 1 + right`` words (book: 2 + 1 + 0).
        num_tags: output classes (CoNLL-2000: 44).
        hidden: hidden layer sizes (book: [512, 256]).
        suffix_lengths: the suffix features of the input (``data.suffix_lengths``).
        suffix_vocab_size, suffix_dim: suffix embeddings (``suffix_dim=0``: ignore suffixes).
        shape_dim: shape embedding size (0: ignore shapes, as the book).
        num_shapes: shape embedding rows: the word shapes of ``fodl.text.window.SHAPES`` (11;
            the tagger module checks that they fit).
        style: ``book`` or ``modern`` (module docstring).
        dropout: dropout before each hidden layer and the output (modern only).
        word_dropout: in training, each word id is replaced by ``<unk>`` with this
            probability, so the unknown-word vector and the suffix/shape features learn to
            carry a word the tagger has never seen.
        unk_id, num_specials: the word vocabulary's ``<unk>`` id and number of specials
            (specials are never dropped).
        freeze_embeddings: keep the word embeddings fixed (the book's Google News vectors).
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 300, left: int = 2, right: int = 0,
                 num_tags: int = 44, hidden: list[int] | None = None,
                 suffix_lengths: list[int] | None = None, suffix_vocab_size: int = 1,
                 suffix_dim: int = 0,
                 shape_dim: int = 0, num_shapes: int = 11, style: str = "modern", dropout: float = 0.0,
                 word_dropout: float = 0.0, unk_id: int = 1, num_specials: int = 4,
                 freeze_embeddings: bool = False) -> None:
        super().__init__()
        if style not in ("book", "modern"):
            raise ValueError(f"style must be book or modern, got {style!r}")
        hidden = [512, 256] if hidden is None else list(hidden)
        self.window, self.style = left + 1 + right, style
        self.num_suffix_features = num_suffix_features = len(suffix_lengths or [])
        self.word_dropout, self.unk_id, self.num_specials = word_dropout, unk_id, num_specials
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.embed.weight.requires_grad_(not freeze_embeddings)
        self.shape = nn.Embedding(num_shapes, shape_dim) if shape_dim else None
        self.suffix = nn.Embedding(suffix_vocab_size, suffix_dim) if suffix_dim and num_suffix_features else None
        per_word = embedding_dim + shape_dim + (suffix_dim * num_suffix_features if self.suffix else 0)
        layers: list[nn.Module] = []
        width = self.window * per_word
        for h in hidden:
            if style == "modern" and dropout:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h, eps=1e-3, momentum=0.1),
                       nn.Sigmoid() if style == "book" else nn.ReLU()]
            width = h
        if style == "modern" and dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_tags))
        if style == "book":
            layers += [nn.BatchNorm1d(num_tags, eps=1e-3, momentum=0.1), nn.Sigmoid()]
        self.mlp = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the book's layer(): W ~ N(0, 1/fan_in), b = 0; embeddings N(0, 1/sqrt(dim)) -> unit-ish rows
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, math.sqrt(1.0 / m.in_features))
                nn.init.zeros_(m.bias)
        for e in (self.embed, self.shape, self.suffix):
            if e is not None:
                with torch.no_grad():
                    e.weight.normal_(0.0, 1.0 / math.sqrt(e.embedding_dim))

    def load_vectors(self, vectors: torch.Tensor, found: torch.Tensor) -> int:
        """Copy pretrained ``vectors`` into the rows where ``found``; returns how many."""
        rows = min(len(vectors), self.embed.num_embeddings)
        if vectors.shape[1] != self.embed.embedding_dim:
            raise ValueError(f"pretrained vectors have {vectors.shape[1]} dimensions, the "
                             f"embedding {self.embed.embedding_dim}")
        mask = found[:rows]
        with torch.no_grad():
            self.embed.weight[:rows][mask] = vectors[:rows][mask].to(self.embed.weight)
        return int(mask.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        words = x[..., 0]
        if self.training and self.word_dropout:
            drop = (torch.rand(words.shape, device=words.device) < self.word_dropout) & (
                words >= self.num_specials)
            words = words.masked_fill(drop, self.unk_id)
        parts = [self.embed(words)]
        if self.shape is not None:
            parts.append(self.shape(x[..., 1]))
        if self.suffix is not None:
            parts.append(self.suffix(x[..., 2 : 2 + self.num_suffix_features]).flatten(-2))
        h = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        return self.mlp(h.flatten(1))
