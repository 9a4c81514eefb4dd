"""The Differentiable Neural Computer (book chapter 8; Graves et al., Nature 2016, "Hybrid
computing using a neural network with dynamic external memory") and the LSTM it is compared
with.

The memory operations are small pure functions on batched tensors, one per equation of the
paper's Methods, so each can be tested on a hand-computed case. Shapes: ``B`` batch, ``N``
memory slots, ``W`` word size, ``R`` read heads, ``T`` time steps. Everything is vectorised
over the batch, the slots and the heads; the only Python loop is over time steps.

One time step of :class:`DNC` (the paper's order):

1. controller: ``h_t = LSTM([x_t; r_{t-1}], h_{t-1})`` (or a feed-forward layer), interface
   vector ``xi_t = W_xi h_t`` clipped to ``[-clip, clip]`` and parsed (:func:`parse_interface`);
2. usage: retention ``psi = prod_i (1 - f_i w^r_{t-1,i})`` (:func:`retention`),
   ``u_t = (u + w^w_{t-1} - u w^w_{t-1}) psi`` (:func:`update_usage`);
3. write weighting: allocation from the slots sorted by usage (:func:`allocation_weighting`),
   content lookup with the write key (:func:`content_weighting`), gated
   ``w^w = g^w (g^a a + (1 - g^a) c^w)`` (:func:`write_weighting`);
4. memory ``M_t = M_{t-1} (1 - w^w e^T) + w^w v^T`` (:func:`write_memory`);
5. temporal links ``L_t[i,j] = (1 - w_i - w_j) L[i,j] + w_i p_{t-1}[j]``, zero diagonal
   (:func:`update_link`), precedence ``p_t = (1 - sum w) p + w`` (:func:`update_precedence`);
6. read weightings: backward ``L^T w^r``, content, forward ``L w^r`` mixed by the read modes
   (:func:`directional_weightings`, :func:`read_weighting`); read vectors ``r = M^T w^r``;
7. output ``y_t = W_y h_t + W_r [r_t^1; ...; r_t^R]`` (one Linear on ``[h_t; r_t]``).

Numerical safety (the public PyTorch DNC warns of NaNs): norms are ``sqrt(sum x^2 + eps)``
(finite gradient at a zero memory row), usage is kept in ``[eps, 1]`` before the cumulative
product of the allocation (DeepMind's reference code), the interface vector is clipped (so
key strengths and gates cannot saturate into inf), and the softmaxes are torch's stable ones.
As in DeepMind's code, usage is not differentiated with respect to the previous write weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fodl.errors import FodlError
from fodl.nets.init import init_weights, set_forget_bias

EPS = 1e-6
CONTROLLERS = ("lstm", "feedforward")


# -- the memory operations ------------------------------------------------------------------
def oneplus(x: torch.Tensor) -> torch.Tensor:
    """``1 + softplus(x)``: key strengths in ``[1, inf)``."""
    return 1.0 + F.softplus(x)


def content_weighting(memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor,
                      eps: float = EPS) -> torch.Tensor:
    """Content-based addressing ``C(M, k, beta)[i] = softmax_i(beta cos(k, M[i]))``.

    ``memory`` (B, N, W), ``keys`` (B, H, W), ``strengths`` (B, H) -> (B, H, N) for H keys.
    Norms are ``sqrt(|x|^2 + eps)``: a zero row or key gives cosine 0, never 0/0."""
    dot = torch.bmm(keys, memory.transpose(1, 2))
    m_norm = (memory.square().sum(-1) + eps).sqrt()  # (B, N)
    k_norm = (keys.square().sum(-1) + eps).sqrt()  # (B, H)
    cos = dot / (k_norm.unsqueeze(-1) * m_norm.unsqueeze(1))
    return torch.softmax(strengths.unsqueeze(-1) * cos, dim=-1)


def retention(free_gates: torch.Tensor, prev_read_weights: torch.Tensor) -> torch.Tensor:
    """The retention vector ``psi = prod_i (1 - f_i w^r_{t-1,i})``: how much of each slot
    survives the free gates. ``free_gates`` (B, R), ``prev_read_weights`` (B, R, N) -> (B, N)."""
    return (1.0 - free_gates.unsqueeze(-1) * prev_read_weights).prod(1)


def update_usage(prev_usage: torch.Tensor, prev_write_weights: torch.Tensor,
                 psi: torch.Tensor) -> torch.Tensor:
    """``u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} w^w_{t-1}) psi_t``; (B, N) each."""
    return (prev_usage + prev_write_weights - prev_usage * prev_write_weights) * psi


def allocation_weighting(usage: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The allocation weighting ``a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]``, where
    ``phi`` lists the slots by increasing usage (the free list); slots of equal usage are
    taken in index order (a stable sort). ``usage`` (B, N) -> (B, N).

    Usage is first mapped to ``eps + (1 - eps) u`` (DeepMind's reference code), so the
    cumulative product never multiplies by an exact 0."""
    u = eps + (1.0 - eps) * usage
    sorted_u, phi = torch.sort(u, dim=-1, stable=True)
    prod = torch.cumprod(sorted_u, dim=-1)
    exclusive = torch.cat([torch.ones_like(prod[..., :1]), prod[..., :-1]], dim=-1)
    return torch.zeros_like(u).scatter(-1, phi, (1.0 - sorted_u) * exclusive)


def write_weighting(allocation: torch.Tensor, content: torch.Tensor, write_gate: torch.Tensor,
                    allocation_gate: torch.Tensor) -> torch.Tensor:
    """``w^w = g^w (g^a a + (1 - g^a) c^w)``: (B, N), (B, N), (B, 1), (B, 1) -> (B, N)."""
    return write_gate * (allocation_gate * allocation + (1.0 - allocation_gate) * content)


def write_memory(memory: torch.Tensor, write_weights: torch.Tensor, erase: torch.Tensor,
                 write_vector: torch.Tensor) -> torch.Tensor:
    """``M_t = M_{t-1} o (1 - w^w e^T) + w^w v^T``: (B, N, W), (B, N), (B, W), (B, W)."""
    w = write_weights.unsqueeze(-1)
    return memory * (1.0 - w * erase.unsqueeze(1)) + w * write_vector.unsqueeze(1)


def update_link(link: torch.Tensor, prev_precedence: torch.Tensor, write_weights: torch.Tensor,
                off_diagonal: torch.Tensor | None = None) -> torch.Tensor:
    """The temporal link matrix ``L_t[i,j] = (1 - w_i - w_j) L_{t-1}[i,j] + w_i p_{t-1}[j]``
    with ``L_t[i,i] = 0``: ``L[i,j]`` is how much slot ``i`` was written right after slot
    ``j``. ``link`` (B, N, N), ``prev_precedence`` and ``write_weights`` (B, N).
    ``off_diagonal``: the (N, N) matrix ``1 - I`` (made here when not given)."""
    wi = write_weights.unsqueeze(-1)
    new = (1.0 - wi - write_weights.unsqueeze(-2)) * link + wi * prev_precedence.unsqueeze(-2)
    if off_diagonal is None:
        n = link.shape[-1]
        off_diagonal = 1.0 - torch.eye(n, dtype=link.dtype, device=link.device)
    return new * off_diagonal


def update_precedence(prev_precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    """``p_t = (1 - sum_i w^w[i]) p_{t-1} + w^w``: the degree to which each slot was the
    last one written. (B, N) each."""
    return (1.0 - write_weights.sum(-1, keepdim=True)) * prev_precedence + write_weights


def directional_weightings(link: torch.Tensor, prev_read_weights: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``f_i = L w^r_{t-1,i}`` and backward ``b_i = L^T w^r_{t-1,i}`` weightings of
    each read head: ``link`` (B, N, N), ``prev_read_weights`` (B, R, N) -> two (B, R, N)."""
    forward = torch.bmm(prev_read_weights, link.transpose(1, 2))
    backward = torch.bmm(prev_read_weights, link)
    return forward, backward


def read_weighting(modes: torch.Tensor, backward: torch.Tensor, content: torch.Tensor,
                   forward: torch.Tensor) -> torch.Tensor:
    """``w^r_i = pi_i[1] b_i + pi_i[2] c_i + pi_i[3] f_i``: ``modes`` (B, R, 3) in the paper's
    order (backward, content, forward), the weightings (B, R, N)."""
    return modes[..., 0:1] * backward + modes[..., 1:2] * content + modes[..., 2:3] * forward


# -- sentence steps ---------------------------------------------------------------------------
def position_encoding(ids: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The memory networks' position encoding (Sukhbaatar et al. 2015, section 4.1):
    ``l[j, k] = (1 - j/J) - (k/d)(1 - 2j/J)`` for word ``j`` (1..J) of a sentence of ``J``
    words and feature ``k`` (1..d), 0 for padding. ``ids`` (..., L) word ids, 0 = padding ->
    (..., L, dim). Weighting word vectors with it before summing keeps the word order in
    the sentence's vector (a plain sum would be a bag of words)."""
    words = ids != 0
    j = torch.cumsum(words, -1).to(dtype).unsqueeze(-1)  # 1..J at the words
    big_j = words.sum(-1, keepdim=True).clamp_min(1).to(dtype).unsqueeze(-1)
    k = torch.arange(1, dim + 1, dtype=dtype, device=ids.device) / dim
    weights = (1.0 - j / big_j) - k * (1.0 - 2.0 * j / big_j)
    return weights * words.unsqueeze(-1).to(dtype)


def encode_sentences(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """One vector per sentence step: the position-encoded sum of its words' rows of
    ``table``. ``ids`` (B, T, L) -> (B, T, table.embedding_dim)."""
    vectors = table(ids)
    return (vectors * position_encoding(ids, vectors.shape[-1], vectors.dtype)).sum(-2)


# -- the interface vector ---------------------------------------------------------------------
class Interface(NamedTuple):
    """The controller's parsed interface vector at one step."""

    read_keys: torch.Tensor  # (B, R, W)
    read_strengths: torch.Tensor  # (B, R), >= 1
    write_key: torch.Tensor  # (B, 1, W)
    write_strength: torch.Tensor  # (B, 1), >= 1
    erase: torch.Tensor  # (B, W) in (0, 1)
    write_vector: torch.Tensor  # (B, W)
    free_gates: torch.Tensor  # (B, R) in (0, 1)
    allocation_gate: torch.Tensor  # (B, 1)
    write_gate: torch.Tensor  # (B, 1)
    read_modes: torch.Tensor  # (B, R, 3): backward, content, forward; sums to 1


def interface_size(word_size: int, read_heads: int) -> int:
    """``R W + 3 W + 5 R + 3``, the paper's interface vector length."""
    return read_heads * word_size + 3 * word_size + 5 * read_heads + 3


def parse_interface(xi: torch.Tensor, word_size: int, read_heads: int) -> Interface:
    """Split and squash an interface vector (B, interface_size). Layout: read keys, write
    key, write vector (linear); read strengths, write strength (oneplus); erase, free gates,
    allocation gate, write gate (sigmoid); read modes (softmax over 3 per head). The parts
    sharing a squashing function are adjacent, so each function runs once."""
    b, w, r = xi.shape[0], word_size, read_heads
    linear, strengths, gates, modes = xi.split([r * w + 2 * w, r + 1, w + r + 2, 3 * r], 1)
    read_keys, write_key, write_vector = linear.split([r * w, w, w], 1)
    read_strengths, write_strength = oneplus(strengths).split([r, 1], 1)
    erase, free_gates, allocation_gate, write_gate = torch.sigmoid(gates).split([w, r, 1, 1], 1)
    return Interface(read_keys.view(b, r, w), read_strengths, write_key.view(b, 1, w),
                     write_strength, erase, write_vector, free_gates, allocation_gate, write_gate,
                     torch.softmax(modes.view(b, r, 3), dim=-1))


class MemoryState(NamedTuple):
    """Everything the memory carries from one step to the next."""

    memory: torch.Tensor  # (B, N, W)
    usage: torch.Tensor  # (B, N)
    precedence: torch.Tensor  # (B, N)
    link: torch.Tensor  # (B, N, N)
    write_weights: torch.Tensor  # (B, N)
    read_weights: torch.Tensor  # (B, R, N)
    read_vectors: torch.Tensor  # (B, R, W)


def initial_state(batch: int, slots: int, word_size: int, read_heads: int,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> MemoryState:
    """An empty memory: all zeros (nothing written, nothing read)."""
    z = dict(dtype=dtype, device=device)
    return MemoryState(torch.zeros(batch, slots, word_size, **z), torch.zeros(batch, slots, **z),
                       torch.zeros(batch, slots, **z), torch.zeros(batch, slots, slots, **z),
                       torch.zeros(batch, slots, **z), torch.zeros(batch, read_heads, slots, **z),
                       torch.zeros(batch, read_heads, word_size, **z))


def memory_step(state: MemoryState, iface: Interface,
                off_diagonal: torch.Tensor | None = None) -> MemoryState:
    """One write-then-read cycle of the memory (steps 2-6 of the module docstring)."""
    psi = retention(iface.free_gates, state.read_weights)
    usage = update_usage(state.usage, state.write_weights.detach(), psi)
    allocation = allocation_weighting(usage)
    write_content = content_weighting(state.memory, iface.write_key, iface.write_strength).squeeze(1)
    ww = write_weighting(allocation, write_content, iface.write_gate, iface.allocation_gate)
    memory = write_memory(state.memory, ww, iface.erase, iface.write_vector)
    link = update_link(state.link, state.precedence, ww, off_diagonal)
    precedence = update_precedence(state.precedence, ww)
    forward, backward = directional_weightings(link, state.read_weights)
    read_content = content_weighting(memory, iface.read_keys, iface.read_strengths)
    rw = read_weighting(iface.read_modes, backward, read_content, forward)
    return MemoryState(memory, usage, precedence, link, ww, rw, torch.bmm(rw, memory))


# -- the nets -------------------------------------------------------------------------------
class DNC(nn.Module):
    """A DNC: controller + memory of ``memory_size x word_size``, ``read_heads`` read heads
    and one write head (module docstring). Maps a sequence to one output per step.

    Args:
        input_size: features per step, or with ``tokens=True`` the vocabulary size (inputs
            are then word ids (B, T), the paper's one-hot words, or sentences of word ids
            (B, T, L), one per step, position-encoded (:func:`encode_sentences`)).
        output_size: outputs (logits) per step.
        tokens: inputs are word ids (B, T) instead of vectors (B, T, input_size).
        controller: ``lstm`` (the paper's) or ``feedforward`` (one tanh layer on
            ``[x_t; r_{t-1}]``).
        hidden_size: controller units.
        memory_size, word_size, read_heads: N, W, R.
        clip: the interface vector is clipped to ``[-clip, clip]`` (0: no clipping).
        init: weight initialisation (:func:`fodl.nets.init.init_weights`).
        compile: run the memory step (:func:`memory_step`) through ``torch.compile``: its
            few dozen small operations become a few fused kernels, forward and backward. The
            first batch of each shape pays the compilation (about a minute on a CPU).

    ``forward(x)`` returns logits (B, T, output_size); ``forward(x, trace=True)`` also
    returns a dict of per-step (B, T, ...) tensors, detached: ``write_weights``,
    ``read_weights`` (B, T, R, N), ``usage``, ``allocation_gate``, ``write_gate``,
    ``free_gates`` (B, T, R), ``read_modes`` (B, T, R, 3): the paper's figure 3 material.
    """

    def __init__(self, input_size: int, output_size: int, tokens: bool = False,
                 controller: str = "lstm", hidden_size: int = 64, memory_size: int = 16,
                 word_size: int = 16, read_heads: int = 1, clip: float = 20.0,
                 init: str = "torch", compile: bool = False) -> None:
        super().__init__()
        if controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {controller!r}; choose one of {CONTROLLERS}")
        for name, v in (("input_size", input_size), ("output_size", output_size),
                        ("hidden_size", hidden_size), ("memory_size", memory_size),
                        ("word_size", word_size), ("read_heads", read_heads)):
            if v < 1:
                raise ValueError(f"DNC {name} must be >= 1, got {v}")
        self.input_size, self.output_size, self.tokens = input_size, output_size, tokens
        self.controller, self.hidden_size = controller, hidden_size
        self.memory_size, self.word_size, self.read_heads = memory_size, word_size, read_heads
        self.clip = clip
        gates = (4 if controller == "lstm" else 1) * hidden_size
        # the input's share of the controller's pre-activations, for all steps at once: a
        # lookup table for word ids (exactly one-hot input times a weight matrix), else a Linear
        self.input_gates = nn.Embedding(input_size, gates) if tokens else nn.Linear(input_size, gates)
        # the recurrent share: [r_{t-1}; h_{t-1}] (the feed-forward controller: r_{t-1} only)
        recurrent = read_heads * word_size + (hidden_size if controller == "lstm" else 0)
        self.recurrent_gates = nn.Linear(recurrent, gates, bias=False)
        self.interface = nn.Linear(hidden_size, interface_size(word_size, read_heads))
        self.output = nn.Linear(hidden_size + read_heads * word_size, output_size)
        init_weights(self, init)
        if tokens and init == "torch":  # nn.Embedding's N(0, 1) is far too large for gates
            nn.init.uniform_(self.input_gates.weight, -hidden_size ** -0.5, hidden_size ** -0.5)
        self.register_buffer("off_diagonal", 1.0 - torch.eye(memory_size), persistent=False)
        self.compiled = compile
        self._memory_step = torch.compile(memory_step, dynamic=False) if compile else memory_step

    def forward(self, x: torch.Tensor, trace: bool = False):
        if self.tokens and x.dim() == 3:  # one sentence per step
            xg = encode_sentences(self.input_gates, x)
        else:
            xg = self.input_gates(x)  # (B, T, gates)
        b, steps = xg.shape[:2]
        h_size, r, w = self.hidden_size, self.read_heads, self.word_size
        state = initial_state(b, self.memory_size, w, r, xg.dtype, xg.device)
        h = xg.new_zeros(b, h_size)
        c = xg.new_zeros(b, h_size)
        lstm = self.controller == "lstm"
        w_rec = self.recurrent_gates.weight.t()
        hs, reads = [], []
        traces: dict[str, list[torch.Tensor]] = {k: [] for k in TRACE_KEYS} if trace else {}
        for t in range(steps):
            prev_read = state.read_vectors.reshape(b, r * w)
            if lstm:
                sig, cand = torch.addmm(xg[:, t], torch.cat([prev_read, h], 1), w_rec).split(
                    [3 * h_size, h_size], 1)
                i, f, o = torch.sigmoid(sig).split(h_size, 1)
                c = f * c + i * torch.tanh(cand)
                h = o * torch.tanh(c)
            else:
                h = torch.tanh(torch.addmm(xg[:, t], prev_read, w_rec))
            xi = self.interface(h)
            if self.clip:
                xi = xi.clamp(-self.clip, self.clip)
            iface = parse_interface(xi, w, r)
            state = self._memory_step(state, iface, self.off_diagonal)
            hs.append(h)
            reads.append(state.read_vectors.reshape(b, r * w))
            if trace:
                for k, v in (("write_weights", state.write_weights), ("read_weights", state.read_weights),
                             ("usage", state.usage), ("allocation_gate", iface.allocation_gate[:, 0]),
                             ("write_gate", iface.write_gate[:, 0]), ("free_gates", iface.free_gates),
                             ("read_modes", iface.read_modes)):
                    traces[k].append(v.detach())
        y = self.output(torch.cat([torch.stack(hs, 1), torch.stack(reads, 1)], -1))
        if trace:
            return y, {k: torch.stack(v, 1) for k, v in traces.items()}
        return y


TRACE_KEYS = ("write_weights", "read_weights", "usage", "allocation_gate", "write_gate",
              "free_gates", "read_modes")


class SequenceLSTM(nn.Module):
    """The baseline: the DNC's task heads on an LSTM without memory (``nn.LSTM``, all steps
    in one call). Same arguments as :class:`DNC` for the input and output; word ids enter as
    one-hot vectors, as in the paper, or with ``embedding_size > 0`` as learnt embeddings of
    that size (needed for sentence steps (B, T, L), which are position-encoded sums of them,
    :func:`encode_sentences`). ``forget_bias``: the forget gates' bias at the start (each
    layer's ``bias_ih``; ``bias_hh`` of that gate zeroed), e.g. 1.0 as TF's BasicLSTMCell and
    Jozefowicz et al. 2015; ``None`` keeps ``init``'s."""

    def __init__(self, input_size: int, output_size: int, tokens: bool = False,
                 hidden_size: int = 256, num_layers: int = 1, init: str = "torch",
                 embedding_size: int = 0, forget_bias: float | None = None) -> None:
        super().__init__()
        if min(input_size, output_size, hidden_size, num_layers) < 1 or embedding_size < 0:
            raise ValueError("SequenceLSTM sizes must be >= 1 (embedding_size >= 0)")
        self.input_size, self.output_size, self.tokens = input_size, output_size, tokens
        self.embedding = nn.Embedding(input_size, embedding_size) if tokens and embedding_size else None
        features = embedding_size if self.embedding is not None else input_size
        self.lstm = nn.LSTM(features, hidden_size, num_layers, batch_first=True)
        self.output = nn.Linear(hidden_size, output_size)
        init_weights(self, init)
        if self.embedding is not None and init == "torch":
            nn.init.normal_(self.embedding.weight, 0.0, embedding_size ** -0.5)
        if forget_bias is not None:
            set_forget_bias(self.lstm, forget_bias, other_gates=False)

    def forward(self, x: torch.Tensor, trace: bool = False):
        if self.tokens and x.dim() == 3:
            if self.embedding is None:
                raise FodlError("The LSTM baseline reads sentence steps (data.unit=sentence) "
                                "through word embeddings: set model.net.embedding_size (e.g. 64).")
            x = encode_sentences(self.embedding, x)
        elif self.embedding is not None:
            x = self.embedding(x)
        elif self.tokens:
            x = F.one_hot(x, self.input_size).to(self.output.weight.dtype)
        y = self.output(self.lstm(x)[0])
        return (y, {}) if trace else y
