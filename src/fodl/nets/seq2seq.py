"""Encoder-decoder translation of book chapter 7 (figures 7-24 and 7-27), with attention.

- **Encoder**: embedding -> (bi)LSTM over *packed* sequences (padding is never read, in either
  direction). Its final states (both directions concatenated, per layer) go through
  ``tanh(Linear)`` (``h``) and ``Linear`` (``c``) to initialise the decoder LSTM (figure 7-24).
- **Attention** over the encoder outputs, padding masked out of the softmax:

  - ``bahdanau`` (additive, Bahdanau et al. 2015): ``v . tanh(W_q s_{t-1} + W_k h_j)``, queried
    with the decoder's *previous* state (figure 7-27); the context is fed into the LSTM with the
    previous word, and the output layer reads ``[s_t; c_t; y_{t-1}]``;
  - ``dot`` / ``general`` (Luong et al. 2015): ``s_t . h_j`` / ``s_t . W h_j``, queried with the
    decoder's *current* state; ``tanh(W_c [s_t; c_t])`` feeds the output layer. Without input
    feeding, the decoder LSTM runs over the whole target at once under teacher forcing;
  - ``none``: the book's attention-free baseline (figure 7-24): the output layer reads ``s_t``.

- **Teacher forcing** (``teacher_forcing`` < 1): in training, each next input is the gold word
  with that probability (per sentence and step), else the model's own previous prediction.
- **Decoding** (:func:`greedy_decode`, :func:`beam_search`): batched over sentences, stopping
  at ``<eos>``; beam search with the GNMT length penalty ``((5 + |y|) / 6) ** alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fodl.nets.init import set_forget_bias

ATTENTIONS = ("bahdanau", "dot", "general", "none")


@dataclass
class Memory:
    """What the decoder attends to: encoder outputs (values), their projections (keys), and
    the mask of real source positions."""

    values: torch.Tensor  # (B, S, K)
    keys: torch.Tensor | None  # (B, S, *)
    mask: torch.Tensor  # (B, S) bool

    def index_select(self, idx: torch.Tensor) -> Memory:
        return Memory(self.values.index_select(0, idx),
                      None if self.keys is None else self.keys.index_select(0, idx),
                      self.mask.index_select(0, idx))


class Attention(nn.Module):
    """Scores of queries against encoder positions, softmax over the real positions only."""

    def __init__(self, kind: str, query_dim: int, key_dim: int, attention_dim: int,
                 scaled: bool = True) -> None:
        super().__init__()
        self.kind = kind
        # dot/general scores divided by sqrt(query_dim) (as in Transformer attention)
        self.scale = 1.0 / math.sqrt(query_dim) if scaled and kind in ("dot", "general") else 1.0
        if kind == "bahdanau":
            self.w_k = nn.Linear(key_dim, attention_dim, bias=False)
            self.w_q = nn.Linear(query_dim, attention_dim)
            self.v = nn.Linear(attention_dim, 1, bias=False)
        elif kind == "general":
            self.w = nn.Linear(key_dim, query_dim, bias=False)
        elif kind == "dot":
            if query_dim != key_dim:
                raise ValueError(
                    f"attention=dot scores s_t . h_j, so the decoder's hidden size ({query_dim}) must "
                    f"equal the encoder's output size ({key_dim}; twice its hidden size when "
                    "bidirectional). Set model.net.decoder_hidden_size to it, or use attention=general.")
        else:
            raise ValueError(f"attention must be one of {ATTENTIONS[:3]}, got {kind!r}")

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        """The part of the score that depends only on the encoder (computed once per sentence)."""
        if self.kind == "bahdanau":
            return self.w_k(values)
        if self.kind == "general":
            return self.w(values)
        return values

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` ``(B, Tq, Q)`` -> context ``(B, Tq, K)``, weights ``(B, Tq, S)`` (rows sum
        to 1, exactly 0 on padding)."""
        if self.kind == "bahdanau":
            scores = self.v(torch.tanh(self.w_q(query).unsqueeze(2) + memory.keys.unsqueeze(1))).squeeze(-1)
        else:
            scores = torch.bmm(query, memory.keys.transpose(1, 2))
            if self.scale != 1.0:
                scores = scores * self.scale
        scores = scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, -1)
        return torch.bmm(weights, memory.values), weights


class Seq2SeqNet(nn.Module):
    """Args:
        src_vocab_size, tgt_vocab_size: embedding / output rows (``data.*_max_size``).
        embedding_dim: both embeddings' size.
        hidden_size: encoder LSTM units per direction.
        decoder_hidden_size: decoder LSTM units (None: the encoder's output size, i.e.
            ``hidden_size`` x 2 when bidirectional).
        num_layers: LSTM layers of encoder and decoder.
        bidirectional: a bidirectional encoder.
        attention: ``bahdanau`` | ``dot`` | ``general`` | ``none`` (module docstring).
        attention_dim: the additive attention's hidden size (None: ``decoder_hidden_size``).
        scaled_scores: divide ``dot`` / ``general`` scores by ``sqrt(decoder_hidden_size)``.
            Unscaled (Luong's formula), our Multi30k CPU run's attention saturated on the
            ``<eos>`` position within the first epoch and stayed there (every weight 1.0 on it
            for every output word: an attention-free model, 10 BLEU at epoch 3).
        dropout: on embeddings, between LSTM layers and before the output layer.
        teacher_forcing: probability of feeding the gold previous word in training.
        pad_id, bos_id, eos_id: the target vocabulary's specials (``<pad>`` 0, ``<bos>`` 2,
            ``<eos>`` 3 in :mod:`fodl.data.parallel`).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embedding_dim: int = 256,
                 hidden_size: int = 256, decoder_hidden_size: int | None = None,
                 num_layers: int = 1, bidirectional: bool = True, attention: str = "bahdanau",
                 attention_dim: int | None = None, scaled_scores: bool = True,
                 dropout: float = 0.3,
                 teacher_forcing: float = 1.0, pad_id: int = 0, bos_id: int = 2,
                 eos_id: int = 3) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must be in [0, 1], got {teacher_forcing}")
        directions = 2 if bidirectional else 1
        enc_out = hidden_size * directions
        dec = decoder_hidden_size or enc_out
        self.attention, self.teacher_forcing = attention, teacher_forcing
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.num_layers, self.directions, self.hidden_size = num_layers, directions, hidden_size
        self.tgt_vocab_size = tgt_vocab_size
        # words the target vocabulary really has (set from the data; rows past it are never
        # decoded): the output layer has tgt_vocab_size rows, the vocabulary may be smaller
        self.num_words = tgt_vocab_size
        self.src_embed = nn.Embedding(src_vocab_size, embedding_dim, padding_idx=pad_id)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, embedding_dim, padding_idx=pad_id)
        self.encoder = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0,
                               bidirectional=bidirectional)
        self.bridge_h = nn.Linear(enc_out, dec)
        self.bridge_c = nn.Linear(enc_out, dec)
        self.drop = nn.Dropout(dropout)
        feed = enc_out if attention == "bahdanau" else 0
        self.decoder = nn.LSTM(embedding_dim + feed, dec, num_layers, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0)
        self.attn = (Attention(attention, dec, enc_out, attention_dim or dec, scaled_scores)
                     if attention != "none" else None)
        if attention == "bahdanau":
            out_in = dec + enc_out + embedding_dim
        elif attention in ("dot", "general"):
            self.combine = nn.Linear(dec + enc_out, dec, bias=False)
            out_in = dec
        else:
            out_in = dec
        self.out = nn.Linear(out_in, tgt_vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for e in (self.src_embed, self.tgt_embed):
                e.weight.normal_(0.0, 1.0 / math.sqrt(e.embedding_dim))
                e.weight[self.pad_id].zero_()
        for lstm in (self.encoder, self.decoder):
            set_forget_bias(lstm, 1.0)

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor
               ) -> tuple[Memory, tuple[torch.Tensor, torch.Tensor]]:
        """Encoder outputs as :class:`Memory`, and the decoder's initial ``(h, c)``."""
        width = src.shape[1]
        emb = self.drop(self.src_embed(src))
        packed = pack_padded_sequence(emb, src_lengths.cpu().clamp_min(1), batch_first=True,
                                      enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=width)
        b = src.shape[0]

        def join(s):  # (layers * directions, B, H) -> (layers, B, directions * H)
            return s.view(self.num_layers, self.directions, b, self.hidden_size).transpose(1, 2).reshape(
                self.num_layers, b, self.directions * self.hidden_size)

        state = (torch.tanh(self.bridge_h(join(h))).contiguous(), self.bridge_c(join(c)).contiguous())
        mask = torch.arange(width, device=src.device).unsqueeze(0) < src_lengths.to(src.device).unsqueeze(1)
        keys = self.attn.keys(out) if self.attn is not None else None
        return Memory(out, keys, mask), state

    # -- decoder ---------------------------------------------------------------------------
    def step(self, y_prev: torch.Tensor, state, memory: Memory):
        """One decoder step for ``y_prev`` ``(B,)``: ``(logits (B, V), state, weights (B, S) | None)``."""
        logits, state, w = self._decode(y_prev.unsqueeze(1), state, memory)
        logits = logits.squeeze(1)
        if self.num_words < self.tgt_vocab_size:
            logits[:, self.num_words :] = float("-inf")
        return logits, state, (None if w is None else w.squeeze(1))

    def _decode(self, y_in: torch.Tensor, state, memory: Memory):
        """Decode ``y_in`` ``(B, T)`` given as inputs (teacher forcing): logits ``(B, T, V)``.

        ``bahdanau`` steps one word at a time (its LSTM input depends on the attention of the
        previous state); the others run the LSTM over all ``T`` at once."""
        emb = self.drop(self.tgt_embed(y_in))
        if self.attention == "bahdanau":
            outs, weights = [], []
            h = state
            for t in range(y_in.shape[1]):
                ctx, w = self.attn(h[0][-1].unsqueeze(1), memory)
                e = emb[:, t : t + 1]
                o, h = self.decoder(torch.cat([e, ctx], -1), h)
                outs.append(torch.cat([o, ctx, e], -1))
                weights.append(w)
            return self.out(self.drop(torch.cat(outs, 1))), h, torch.cat(weights, 1)
        o, state = self.decoder(emb, state)
        if self.attn is None:
            return self.out(self.drop(o)), state, None
        ctx, w = self.attn(o, memory)
        att = torch.tanh(self.combine(torch.cat([o, ctx], -1)))
        return self.out(self.drop(att)), state, w

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor,
                tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, V)`` of the next word after each of ``tgt_in`` (``<bos> y_1 ...``)."""
        memory, state = self.encode(src, src_lengths)
        if not (self.training and self.teacher_forcing < 1.0):
            return self._decode(tgt_in, state, memory)[0]
        logits = []
        y = tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            lg, state, _ = self.step(y, state, memory)
            logits.append(lg)
            if t + 1 < tgt_in.shape[1]:
                gold = torch.rand(y.shape, device=y.device) < self.teacher_forcing
                y = torch.where(gold, tgt_in[:, t + 1], lg.argmax(-1))
        return torch.stack(logits, 1)


# -- decoding -----------------------------------------------------------------------------------
@dataclass
class Decoded:
    """Per sentence: ``tokens`` (ids, ``<eos>`` excluded), ``score`` (sum of log-probabilities,
    ``<eos>`` included), ``ranking`` (the score the search ranked by: ``score`` / length
    penalty), ``attention`` ``(len, S)`` rows (None for ``attention=none`` or when not asked)."""

    tokens: list[list[int]]
    score: torch.Tensor
    ranking: torch.Tensor
    attention: list[torch.Tensor] | None


def length_penalty(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's ``((5 + |y|) / 6) ** alpha`` (1 for ``alpha=0``: plain log-probability)."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


def _finish(tokens: torch.Tensor, lengths: torch.Tensor, eos: int) -> list[list[int]]:
    out = []
    for row, n in zip(tokens.tolist(), lengths.tolist()):
        row = row[:n]
        out.append(row[:-1] if row and row[-1] == eos else row)
    return out


@torch.no_grad()
def greedy_decode(net: Seq2SeqNet, src: torch.Tensor, src_lengths: torch.Tensor,
                  max_len: int = 60, alpha: float = 0.0, attention: bool = False) -> Decoded:
    """The most probable word at every step, until ``<eos>`` (or ``max_len`` words)."""
    memory, state = net.encode(src, src_lengths)
    b = src.shape[0]
    y = torch.full((b,), net.bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    score = torch.zeros(b, device=src.device)
    lengths = torch.zeros(b, dtype=torch.long, device=src.device)
    toks, atts = [], []
    for _ in range(max_len):
        logits, state, w = net.step(y, state, memory)
        logp = F.log_softmax(logits.float(), -1)
        best, y = logp.max(-1)
        y = y.masked_fill(done, net.pad_id)
        score = score + best.masked_fill(done, 0.0)
        lengths = lengths + (~done).long()
        done = done | (y == net.eos_id)
        toks.append(y)
        if attention and w is not None:
            atts.append(w)
        if bool(done.all()):
            break
    tokens = torch.stack(toks, 1)
    att = None
    if atts:
        a = torch.stack(atts, 1)
        att = [a[i, : int(n)] for i, n in enumerate(lengths)]
    return Decoded(_finish(tokens, lengths, net.eos_id), score,
                   score / length_penalty(lengths, alpha), att)


@torch.no_grad()
def beam_search(net: Seq2SeqNet, src: torch.Tensor, src_lengths: torch.Tensor,
                beam_size: int = 5, max_len: int = 60, alpha: float = 0.0,
                attention: bool = False, keep_greedy: bool = True) -> Decoded:
    """Beam search, batched over sentences: ``beam_size`` hypotheses per sentence, each step
    extended by every word and pruned to the ``beam_size`` best by total log-probability; a
    hypothesis that emitted ``<eos>`` is finished (it keeps its score and only waits); the
    search stops when every hypothesis of every sentence is finished or at ``max_len``. The
    answer is the hypothesis with the best ``score / length_penalty(len, alpha)``.

    ``keep_greedy``: the greedy translation is a candidate too, so the answer is never worse
    than greedy decoding under the ranking score (pruning can drop the greedy path from the
    beam when its first words looked worse than others)."""
    k = beam_size
    memory, state = net.encode(src, src_lengths)
    b, device = src.shape[0], src.device
    rep = torch.arange(b, device=device).repeat_interleave(k)
    memory = memory.index_select(rep)
    state = tuple(s.index_select(1, rep) for s in state)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = float("-inf")  # every sentence starts from one hypothesis
    y = torch.full((b * k,), net.bos_id, dtype=torch.long, device=device)
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, dtype=torch.long, device=device)
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=device)
    att = torch.zeros(b * k, 0, src.shape[1], device=device) if attention and net.attn is not None else None
    v = net.tgt_vocab_size
    waiting = torch.full((v,), float("-inf"), device=device)
    waiting[net.pad_id] = 0.0  # a finished hypothesis continues with padding at no cost
    offset = (torch.arange(b, device=device) * k).unsqueeze(1)
    for _ in range(max_len):
        logits, state, w = net.step(y, state, memory)
        logp = F.log_softmax(logits.float(), -1)
        logp = torch.where(done.unsqueeze(1), waiting, logp)
        cand = (scores.reshape(-1, 1) + logp).view(b, k * v)
        scores, idx = cand.topk(k, dim=1)
        origin = (idx // v + offset).view(-1)
        y = (idx % v).view(-1)
        state = tuple(s.index_select(1, origin) for s in state)
        tokens = torch.cat([tokens.index_select(0, origin), y.unsqueeze(1)], 1)
        if att is not None:
            att = torch.cat([att.index_select(0, origin), w.index_select(0, origin).unsqueeze(1)], 1)
        done = done.index_select(0, origin)
        lengths = lengths.index_select(0, origin) + (~done).long()
        done = done | (y == net.eos_id)
        if bool(done.all()):
            break
    ranking = scores / length_penalty(lengths, alpha).view(b, k)
    best = ranking.argmax(1)
    pick = best + offset.squeeze(1)
    out_tokens = _finish(tokens.index_select(0, pick), lengths.index_select(0, pick), net.eos_id)
    out = Decoded(out_tokens, scores.view(-1).index_select(0, pick),
                  ranking.gather(1, best.unsqueeze(1)).squeeze(1),
                  None if att is None else [att[int(p), : int(lengths[p])] for p in pick])
    if keep_greedy:
        g = greedy_decode(net, src, src_lengths, max_len, alpha, attention)
        better = (g.ranking > out.ranking).tolist()
        for i, use in enumerate(better):
            if use:
                out.tokens[i] = g.tokens[i]
                if out.attention is not None and g.attention is not None:
                    out.attention[i] = g.attention[i]
        sel = torch.tensor(better, device=device)
        out.score = torch.where(sel, g.score, out.score)
        out.ranking = torch.where(sel, g.ranking, out.ranking)
    return out
