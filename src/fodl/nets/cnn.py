"""Convolutional nets of chapter 5."""

from __future__ import annotations

import torch
from torch import nn

from fodl.nets.init import init_layer


class MNISTConvNet(nn.Module):
    """The book's MNIST CNN: conv5x5(32)-pool2-conv5x5(64)-pool2-fc1024-dropout-fc10.

    'SAME' padding as in the book (28 -> 14 -> 7), ReLU everywhere, He-normal init with
    fan_in = kh*kw*in_channels, zero biases. Logits out (the book's extra ReLU on the output
    layer is available as ``output_activation="relu"``).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.5,
                 init: str = "he_normal", output_activation: str | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(1024, num_classes)]
        if output_activation == "relu":
            head.append(nn.ReLU())
        self.classifier = nn.Sequential(*head)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init_layer(m, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.view(-1, 1, 28, 28) if x.dim() == 2 else x))
