"""The book's weight initialisations, by name."""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("zeros", "he_normal", "uniform", "torch")


def init_layer(layer: nn.Module, scheme: str) -> None:
    """Initialise a layer's own parameters in place: Linear, Conv, Embedding, LSTM/GRU/RNN.

    Every weight matrix (a parameter with 2 or more dimensions: a Linear/Conv weight, an
    embedding table, each of an LSTM's ``weight_ih_l*`` / ``weight_hh_l*``) follows ``scheme``
    with ``fan_in = w[0].numel()`` (in_features, kh*kw*in_channels, the embedding dimension,
    or an LSTM gate's input size); every bias (1-D) starts at 0 as in the book.

    - ``zeros``: all zero (the book's logistic regression).
    - ``he_normal``: N(0, sqrt(2 / fan_in)) (the book's ``random_normal_initializer``
      with ``stddev=(2/fan_in)**0.5``).
    - ``uniform``: U(-1, 1) scaled by 1/sqrt(fan_in) (the book's cautionary example).
    - ``torch``: PyTorch's default (``reset_parameters``).
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {INITS}")
    if scheme == "torch":
        layer.reset_parameters()
        return
    params = list(layer.named_parameters(recurse=False))
    if not params:
        raise ValueError(f"init_layer: {type(layer).__name__} has no parameters of its own")
    with torch.no_grad():
        for _, p in params:
            if p.dim() < 2:
                p.zero_()
                continue
            fan_in = p[0].numel()
            if scheme == "zeros":
                p.zero_()
            elif scheme == "he_normal":
                p.normal_(0.0, math.sqrt(2.0 / fan_in))
            else:
                p.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))


# the layers ``init_weights`` initialises (normalisation layers keep their ones and zeros)
WEIGHTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.RNNBase)


def init_weights(net: nn.Module, scheme: str) -> nn.Module:
    """``init_layer(m, scheme)`` for every Linear / Conv / Embedding / LSTM-GRU-RNN in ``net``."""
    for m in net.modules():
        if isinstance(m, WEIGHTED_LAYERS):
            init_layer(m, scheme)
    return net


def set_forget_bias(lstm: nn.LSTM, value: float = 1.0, other_gates: bool = True) -> nn.LSTM:
    """Start the LSTM's forget gates at bias ``value`` (TF's BasicLSTMCell: 1.0; Jozefowicz et
    al. 2015: it helps LSTMs learn). PyTorch has two bias vectors per layer and direction:
    ``bias_ih`` carries the value, ``bias_hh``'s forget slice is zeroed. ``other_gates``: also
    zero the other gates' biases (TF's start); ``False`` keeps what they were initialised to."""
    h = lstm.hidden_size
    forget = slice(h, 2 * h)  # the gates are ordered input, forget, cell, output
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith(("bias_ih", "bias_hh")):
                if other_gates:
                    p.zero_()
                p[forget] = value if name.startswith("bias_ih") else 0.0
    return lstm
