"""The skip-gram net (book chapter 6): input embeddings plus output weights and biases."""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("book", "word2vec")


class SkipGramNet(nn.Module):
    """Two lookup tables of ``vocab_size x embedding_dim``: ``in_embed`` (the word vectors the
    book keeps, its ``embedding_matrix``) and ``out_embed`` (the output side that NCE / negative
    sampling scores against, the book's ``nce_W``), plus one output bias per word
    (``out_bias``, the book's ``nce_b``; used by NCE, unused by negative sampling).

    Args:
        vocab_size: rows of each table: at least the vocabulary size (rows beyond it are never
            looked up nor sampled, so they stay at their initial values and cost nothing with
            sparse gradients).
        embedding_dim: the book's 128.
        init: ``book``: ``in_embed`` U(-1, 1), ``out_embed`` truncated N(0, 1/sqrt(dim)), bias 0
            (the book's initialisers); ``word2vec``: ``in_embed`` U(-0.5/dim, 0.5/dim),
            ``out_embed`` and bias 0 (Mikolov's C code and gensim).
        sparse: sparse gradients (only the rows a batch looks up), which keep one SGD step
            proportional to the batch, not to the vocabulary. Needs an optimizer that takes
            sparse gradients: SGD (no momentum / weight decay), Adagrad, SparseAdam.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 128, init: str = "book",
                 sparse: bool = True) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.sparse = sparse
        self.in_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        self.out_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        self.out_bias = nn.Embedding(vocab_size, 1, sparse=sparse)
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "book") -> None:
        d = self.embedding_dim
        self.out_bias.weight.zero_()
        if init == "book":
            self.in_embed.weight.uniform_(-1.0, 1.0)
            nn.init.trunc_normal_(self.out_embed.weight, std=1.0 / math.sqrt(d),
                                  a=-2.0 / math.sqrt(d), b=2.0 / math.sqrt(d))
        else:
            self.in_embed.weight.uniform_(-0.5 / d, 0.5 / d)
            self.out_embed.weight.zero_()

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """The word vectors (input embeddings) of ``words``."""
        return self.in_embed(words)

    def block_logits(self, centers: torch.Tensor, targets: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """Logits of every center of a block against every target word of the block.

        ``centers`` (N, T): N blocks of T consecutive center words; ``targets`` (N, K): per
        block, the words around it and its noise words. Returns (N, T, K) logits
        ``u_center . v_target (+ b_target)``: one batched matrix product, where scoring pair by
        pair would gather one output row per (pair, sample), and one lookup of the output side
        (one sparse gradient to apply).
        """
        logits = torch.bmm(self.in_embed(centers), self.out_embed(targets).transpose(1, 2))
        if bias:
            logits = logits + self.out_bias(targets).transpose(1, 2)
        return logits
