"""The sentiment LSTM of book chapter 7: embedding -> LSTM with dropout -> max over time -> logits.

``forward(tokens, lengths)``: ``tokens`` ``(B, T)`` word ids padded at the end, ``lengths``
``(B,)`` the real lengths. Padding never reaches the max-pool: the LSTM's outputs at padded
positions are replaced by ``-inf`` before the max over time (a forward LSTM's outputs at the
real positions do not depend on what follows them); a bidirectional LSTM, whose backward
direction would read the padding first, runs on packed sequences (``pack=true`` forces
packing for a forward LSTM too).

``output=book`` is the book's code: ``sigmoid(batch_norm(W h + b))`` feeds the softmax;
``output=linear`` (default): plain logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


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
        pack: run packed sequences even for a forward LSTM (same result, less compute on
            padding, more overhead per batch).
        pad_id: the padding id (its embedding row stays zero).
    """

    def __init__(self, vocab_size: int = 30000, embedding_dim: int = 512, hidden_size: int = 512,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.5,
                 num_classes: int = 2, output: str = "linear", pack: bool = False,
                 pad_id: int = 0) -> None:
        super().__init__()
        if output not in ("linear", "book"):
            raise ValueError(f"output must be linear or book, got {output!r}")
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.drop = nn.Dropout(dropout)
        width = hidden_size * (2 if bidirectional else 1)
        self.fc = nn.Linear(width, num_classes)
        self.bn = nn.BatchNorm1d(num_classes, eps=1e-3, momentum=0.1) if output == "book" else None
        self.pack = pack or bidirectional
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the book: embeddings and the output layer N(0, 1/fan_in); biases 0. The LSTM keeps
        # PyTorch's U(-1/sqrt(h), 1/sqrt(h)) with the forget-gate bias at 1 (as TF's BasicLSTMCell).
        with torch.no_grad():
            self.embed.weight.normal_(0.0, math.sqrt(1.0 / self.embed.num_embeddings))
            if self.embed.padding_idx is not None:
                self.embed.weight[self.embed.padding_idx].zero_()
            nn.init.normal_(self.fc.weight, 0.0, math.sqrt(1.0 / self.fc.in_features))
            nn.init.zeros_(self.fc.bias)
            h = self.lstm.hidden_size
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    p.zero_()
                    p[h : 2 * h].fill_(1.0)  # forget gate
                elif name.startswith("bias_hh"):
                    p.zero_()

    def features(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, hidden)``: the max over the real time steps of the LSTM's outputs."""
        width = tokens.shape[1]
        emb = self.drop(self.embed(tokens))
        if self.pack and bool((lengths < width).any()):
            packed = pack_padded_sequence(emb, lengths.cpu().clamp_min(1), batch_first=True,
                                          enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=width)
        else:
            out, _ = self.lstm(emb)
        out = self.drop(out)
        real = torch.arange(width, device=tokens.device).unsqueeze(0) < lengths.to(tokens.device).unsqueeze(1)
        return out.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.features(tokens, lengths))
        if self.bn is not None:
            logits = torch.sigmoid(self.bn(logits))
        return logits
