"""The book's weight initialisations, by name."""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("zeros", "he_normal", "uniform", "torch")


def init_layer(layer: nn.Module, scheme: str) -> None:
    """Initialise a Linear/Conv weight in place; biases start at 0 as in the book.

    - ``zeros``: all zero (the book's logistic regression).
    - ``he_normal``: N(0, sqrt(2 / fan_in)) (the book's ``random_normal_initializer``
      with ``stddev=(2/fan_in)**0.5``; fan_in = in_features or kh*kw*in_channels).
    - ``uniform``: U(-1, 1)-scaled by 1/sqrt(fan_in) (the book's cautionary example).
    - ``torch``: PyTorch's default.
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {INITS}")
    if scheme == "torch":
        layer.reset_parameters()
        return
    w = layer.weight
    fan_in = w[0].numel()
    with torch.no_grad():
        if scheme == "zeros":
            w.zero_()
        elif scheme == "he_normal":
            w.normal_(0.0, math.sqrt(2.0 / fan_in))
        else:
            w.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        if layer.bias is not None:
            layer.bias.zero_()
