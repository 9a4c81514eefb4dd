"""The sentiment LSTM of book chapter 7: embedding -> LSTM with dropout -> max over time -> logits.

``forward(tokens, lengths)``: ``tokens`` ``(B, T)`` word ids padded at the end, ``lengths``
``(B,)`` the real lengths. Padding never reaches the pooling: the LSTM's outputs at padded
positions are replaced by ``-inf`` before the max over time and by 0 in the mean (a forward
LSTM's outputs at the real positions do not depend on what follows them); a bidirectional
LSTM's backward direction, which would read the padding first, reads each review reversed
within its own length (``pack=true``: packed sequences instead, the same outputs, several times
slower on a CPU; for a forward LSTM too).

Options beyond the book (each off by default, so the defaults are the book's net):
``pooling`` over time (``max``, the book; ``mean``; ``maxmean``: both, concatenated, twice the
features), ``word_dropout`` (training only: each token's input vector is zeroed with that
probability, so the net cannot lean on a few words), ``bigram_buckets`` (bigram-aware inputs:
the input at step t adds an embedding of the hashed word pair ``(w[t-1], w[t])``, ``w[-1]`` =
padding; its own rows, so the LSTM sees each word with its left neighbour), ``trigram_buckets``
(the same for the hashed triple ``(w[t-2], w[t-1], w[t])``, in a table of its own),
``ngram_dropout`` (training only: each token's n-gram inputs, bigram and trigram together, are
zeroed with that probability while its word input stays), ``ngram_max_norm`` (each n-gram
table row looked up is renormalised to at most that L2 norm, ``nn.Embedding(max_norm=...)``).

``output=book`` is the book's code: ``sigmoid(batch_norm(W h + b))`` feeds the softmax;
``output=linear`` (default): plain logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fodl.nets.init import set_forget_bias

POOLINGS = ("max", "mean", "maxmean")


class LSTMClassifierNet(nn.Module):
    """Args:
        vocab_size: embedding rows (the vocabulary's size at most; book: 30,000).
        embedding_dim: book: 512.
        hidden_size: LSTM units (book: 512).
        num_layers, bidirectional: a deeper / two-way LSTM (book: 1, forward only).
        dropout: the book's ``DropoutWrapper(input_keep_prob=output_keep_prob=0.5)``: dropout on
            the LSTM's inputs and on its outputs (and between stacked layers).
        num_classes: 2 (negative, positive).
        output: ``linear`` or ``book`` (module docstring).
        pack: run packed sequences (same result, less compute on padding, much more overhead
            per batch on a CPU); otherwise a bidirectional LSTM reverses each review in place.
        pad_id: the padding id (its embedding row stays zero).
        pooling: ``max`` (book), ``mean`` or ``maxmean`` over the real time steps.
        word_dropout: probability of zeroing a token's input vector in training (0: off).
        bigram_buckets: rows of the hashed-bigram embedding (0: no bigram inputs).
        trigram_buckets: rows of the hashed-trigram embedding (0: no trigram inputs).
        ngram_dropout: probability of zeroing a token's n-gram (bigram + trigram) inputs in
            training, its word input kept (0: off).
        ngram_max_norm: largest L2 norm of an n-gram table row (rows looked up are
            renormalised in place; None: no limit).
    """

    POOLINGS = POOLINGS

    def __init__(self, vocab_size: int = 30000, embedding_dim: int = 512, hidden_size: int = 512,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.5,
                 num_classes: int = 2, output: str = "linear", pack: bool = False,
                 pad_id: int = 0, pooling: str = "max", word_dropout: float = 0.0,
                 bigram_buckets: int = 0, trigram_buckets: int = 0, ngram_dropout: float = 0.0,
                 ngram_max_norm: float | None = None) -> None:
        super().__init__()
        if output not in ("linear", "book"):
            raise ValueError(f"output must be linear or book, got {output!r}")
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(self.POOLINGS)}, got {pooling!r}")
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        if not 0.0 <= ngram_dropout < 1.0:
            raise ValueError(f"ngram_dropout must be in [0, 1), got {ngram_dropout}")
        if ngram_max_norm is not None and ngram_max_norm <= 0:
            raise ValueError(f"ngram_max_norm must be > 0 or None, got {ngram_max_norm}")
        self.pooling, self.word_dropout, self.pad_id = pooling, float(word_dropout), pad_id
        self.ngram_dropout = float(ngram_dropout)
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.bigram_embed = (nn.Embedding(bigram_buckets, embedding_dim, max_norm=ngram_max_norm)
                             if bigram_buckets else None)
        self.trigram_embed = (nn.Embedding(trigram_buckets, embedding_dim, max_norm=ngram_max_norm)
                              if trigram_buckets else None)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.drop = nn.Dropout(dropout)
        width = hidden_size * (2 if bidirectional else 1) * (2 if pooling == "maxmean" else 1)
        self.fc = nn.Linear(width, num_classes)
        self.bn = nn.BatchNorm1d(num_classes, eps=1e-3, momentum=0.1) if output == "book" else None
        self.pack = pack
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the book: embeddings and the output layer N(0, 1/fan_in); biases 0. The LSTM keeps
        # PyTorch's U(-1/sqrt(h), 1/sqrt(h)) with the forget-gate bias at 1 (as TF's BasicLSTMCell).
        with torch.no_grad():
            self.embed.weight.normal_(0.0, math.sqrt(1.0 / self.embed.num_embeddings))
            if self.embed.padding_idx is not None:
                self.embed.weight[self.embed.padding_idx].zero_()
            for table in (self.bigram_embed, self.trigram_embed):
                if table is not None:
                    table.weight.normal_(0.0, math.sqrt(1.0 / self.embed.num_embeddings))
            nn.init.normal_(self.fc.weight, 0.0, math.sqrt(1.0 / self.fc.in_features))
            nn.init.zeros_(self.fc.bias)
        set_forget_bias(self.lstm, 1.0)

    def ngram_tables(self) -> list[nn.Embedding]:
        """The hashed n-gram tables (bigram, trigram) the net has."""
        return [t for t in (self.bigram_embed, self.trigram_embed) if t is not None]

    def inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T, embedding_dim)``: word (+ hashed bigram, trigram) embeddings, n-gram dropout
        and word dropout in training (a step dropped by word dropout loses its word and n-gram
        inputs alike; n-gram dropout takes only the n-gram inputs)."""
        emb = self.embed(tokens)
        if self.bigram_embed is not None or self.trigram_embed is not None:
            ids = tokens.long()
            prev = F.pad(ids[:, :-1], (1, 0), value=self.pad_id)
            pair = prev * 1_000_003 + ids  # distinct for ids < 1,000,003
            grams = None
            if self.bigram_embed is not None:
                grams = self.bigram_embed(pair % self.bigram_embed.num_embeddings)
            if self.trigram_embed is not None:
                prev2 = F.pad(ids, (2, 0), value=self.pad_id)[:, : ids.shape[1]]
                triple = (prev2 * 1_000_003 + prev) * 1_000_003 + ids  # < 2^63 for ids < 10^6
                tri = self.trigram_embed(triple % self.trigram_embed.num_embeddings)
                grams = tri if grams is None else grams + tri
            if self.training and self.ngram_dropout > 0:
                keep = torch.rand(tokens.shape, device=tokens.device) >= self.ngram_dropout
                grams = grams * keep.unsqueeze(-1).to(grams.dtype)
            emb = emb + grams
        if self.training and self.word_dropout > 0:
            keep = torch.rand(tokens.shape, device=tokens.device) >= self.word_dropout
            emb = emb * keep.unsqueeze(-1).to(emb.dtype)
        return emb

    def features(self, tokens: torch.Tensor, lengths: torch.Tensor,
                 delta: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, features)``: the pooling (max / mean / both) over the real time steps of the
        LSTM's outputs. ``delta`` ``(B, T, embedding_dim)``: added to the input embeddings
        (an adversarial perturbation, :class:`~fodl.models.sentiment.TextClassifierModule`)."""
        width = tokens.shape[1]
        emb = self.inputs(tokens)
        emb = self.drop(emb if delta is None else emb + delta)
        if self.pack and bool((lengths < width).any()):
            packed = pack_padded_sequence(emb, lengths.cpu().clamp_min(1), batch_first=True,
                                          enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=width)
        elif self.lstm.bidirectional and bool((lengths < width).any()):
            out = self._reversed_bidirectional(emb, lengths.to(tokens.device))
        else:
            out, _ = self.lstm(emb)
        out = self.drop(out)
        lengths = lengths.to(tokens.device)
        real = (torch.arange(width, device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        pooled = []
        if self.pooling in ("max", "maxmean"):
            pooled.append(out.masked_fill(~real, float("-inf")).amax(1))
        if self.pooling in ("mean", "maxmean"):
            pooled.append(out.masked_fill(~real, 0.0).sum(1) / lengths.clamp_min(1).unsqueeze(1).to(out.dtype))
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, 1)

    def _reversed_bidirectional(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The bidirectional LSTM on a padded batch without packing: the backward direction
        reads each sequence reversed within its own length (padding stays at the end), as a
        packed sequence would have it; the same weights, the same outputs at the real steps,
        ~6x faster than packed sequences on a CPU. Layer by layer, each direction one
        ``torch.lstm`` call (the kernel ``nn.LSTM`` calls)."""
        lstm = self.lstm
        b, t = x.shape[:2]
        steps = torch.arange(t, device=x.device).unsqueeze(0)
        rev = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
        h0 = x.new_zeros(1, b, lstm.hidden_size)
        for layer in range(lstm.num_layers):
            if layer and lstm.dropout:
                x = F.dropout(x, lstm.dropout, self.training)
            outs = []
            for suffix, seq in (("", x), ("_reverse", x.gather(1, rev.unsqueeze(-1).expand_as(x)))):
                weights = [getattr(lstm, f"{n}_l{layer}{suffix}")
                           for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                outs.append(torch.lstm(seq, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0])
            back = outs[1].gather(1, rev.unsqueeze(-1).expand_as(outs[1]))
            x = torch.cat([outs[0], back], -1)
        return x

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor,
                delta: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.fc(self.features(tokens, lengths, delta))
        if self.bn is not None:
            logits = torch.sigmoid(self.bn(logits))
        return logits
