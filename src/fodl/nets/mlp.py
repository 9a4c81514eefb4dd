"""Feed-forward nets of chapter 3: logistic regression (no hidden layer) and the ReLU MLP."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fodl.nets.init import init_layer


class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> num_classes`` with ReLU between layers; logits out.

    ``hidden=[]`` with ``init="zeros"`` is the book's logistic regression; ``hidden=[256, 256]``
    with ``init="he_normal"`` its multilayer model. ``output_activation="relu"`` reproduces
    the book's code exactly, which also passes the output layer through a ReLU: the logits
    cannot go negative and a unit whose pre-activation goes negative for every input stops
    learning, which is what stalls the book's momentum run at 86.83% (chapter 4).
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (256, 256),
        num_classes: int = 10,
        init: str = "he_normal",
        output_activation: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if output_activation not in (None, "none", "relu"):
            raise ValueError(f"output_activation must be none or relu, got {output_activation!r}")
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], num_classes))
        if output_activation == "relu":
            layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                init_layer(m, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))
