"""The deep autoencoder of chapter 6 (after Hinton & Salakhutdinov, Science 2006)."""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn

from fodl.nets.init import INITS, init_weights

# The book's chapter 6 layers draw weights from N(0, sqrt(1 / fan_in)) (``stddev=(1.0 /
# weight_shape[0])**0.5``), half the variance of the chapter 3 and 5 nets' He init.
BOOK_INIT = "lecun_normal"
# Activations a layer may end with: the book's sigmoid everywhere; Hinton & Salakhutdinov's
# deep autoencoder has a linear code layer (and logistic hidden and output layers).
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "linear": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh}
Activation = Literal["sigmoid", "linear", "relu", "tanh"]  # checked by fodl.schema before a run


class Autoencoder(nn.Module):
    """``in_features -> hidden[0] -> ... -> code_size`` (encoder) and the mirror image back to
    ``in_features`` (decoder). Every layer, the code and the output layer included, is
    ``sigmoid(batch_norm(x W + b))`` as in the book's ``layer()``: batch norm with eps 1e-3 and
    moving averages of decay 0.9 (PyTorch ``momentum=0.1``), so codes lie in (0, 1) and so
    do reconstructed pixels. ``code_activation`` and ``hidden_activation`` replace the sigmoid
    of the code layer and of the hidden layers (the output layer stays sigmoid), and
    ``output_batch_norm=False`` makes the output layer a plain ``sigmoid(x W + b)``.

    Args:
        in_features: input size; images are flattened (``(B, 1, 28, 28) -> (B, 784)``).
        hidden: encoder hidden sizes; the decoder uses them reversed. Book: 1000, 500, 250.
        code_size: dimension of the code. Book: 30 (reconstruction) and 2 (figure 6-11).
        init: ``lecun_normal`` (the book's N(0, sqrt(1/fan_in)), zero biases) or any scheme
            of :func:`fodl.nets.init.init_weights`.
        code_activation: activation of the code layer: ``sigmoid`` (the book), ``linear``
            (Hinton & Salakhutdinov 2006: a linear code with batch norm), ``relu``, ``tanh``.
        hidden_activation: activation of the other encoder and decoder layers but the output
            (same choices; the book: ``sigmoid``).
        output_batch_norm: batch norm in the output layer (the book: True). Without it the
            output layer is Hinton & Salakhutdinov's logistic layer; with it, a pixel that is
            always black needs its batch-norm scale near 0 and shift near -5, which Adam at
            1e-3 takes thousands of steps to reach.
        hidden_dropout: dropout after the activation of every hidden layer (not the code, not
            the output). 0 (the book): none, and no Dropout modules, so checkpoints keep the
            same keys.

    ``encode(x)`` gives codes ``(B, code_size)``, ``decode(z)`` flat reconstructions
    ``(B, in_features)``, ``forward(x) = decode(encode(x))``.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (1000, 500, 250),
        code_size: int = 30,
        init: str = BOOK_INIT,
        code_activation: Activation = "sigmoid",
        hidden_activation: Activation = "sigmoid",
        output_batch_norm: bool = True,
        hidden_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if code_size < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"code_size ({code_size}) and hidden sizes ({list(hidden)}) must be >= 1")
        if init != BOOK_INIT and init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {(BOOK_INIT, *INITS)}")
        for name, act in (("code_activation", code_activation), ("hidden_activation", hidden_activation)):
            if act not in ACTIVATIONS:
                raise ValueError(f"unknown {name} {act!r}; choose one of {tuple(ACTIVATIONS)}")
        if not 0.0 <= hidden_dropout < 1.0:
            raise ValueError(f"hidden_dropout must be in [0, 1), got {hidden_dropout}")
        sizes = [in_features, *hidden, code_size]
        n = len(sizes) - 1
        self.in_features = in_features
        self.code_size = code_size
        self.encoder = _stack(sizes, [hidden_activation] * (n - 1) + [code_activation],
                              dropout=hidden_dropout)
        self.decoder = _stack(sizes[::-1], [hidden_activation] * (n - 1) + ["sigmoid"],
                              last_norm=output_batch_norm, dropout=hidden_dropout)
        if init == BOOK_INIT:
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, nn.Linear):
                        m.weight.normal_(0.0, math.sqrt(1.0 / m.in_features))
                        m.bias.zero_()
        else:
            init_weights(self, init)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x.flatten(1)))


def _stack(sizes: Sequence[int], activations: Sequence[str], last_norm: bool = True,
           dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    n = len(activations)
    for i, (a, b, act) in enumerate(zip(sizes[:-1], sizes[1:], activations)):
        norm = nn.BatchNorm1d(b, eps=1e-3, momentum=0.1) if last_norm or i < n - 1 else nn.Identity()
        layers += [nn.Linear(a, b), norm, ACTIVATIONS[act]()]
        if dropout and i < n - 1:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
