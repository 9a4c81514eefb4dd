"""Convolutional nets of chapter 5."""

from __future__ import annotations

import torch
from torch import nn

from fodl.nets.init import init_weights


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
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.view(-1, 1, 28, 28) if x.dim() == 2 else x))


class CIFARConvNet(nn.Module):
    """The book's CIFAR-10 CNN on 24x24 crops: conv5x5(64)-pool-conv5x5(64)-pool-fc384-fc192-fc10.

    ``batch_norm=True`` is the book's batch-normalised variant: BN on the pre-activations of
    every conv and hidden fc layer (eps 1e-3, moving averages with decay 0.9, i.e. PyTorch
    momentum 0.1), and the book sets dropout off (keep_prob=1) for it.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, crop: int = 24,
                 dropout: float = 0.5, batch_norm: bool = False, init: str = "he_normal") -> None:
        super().__init__()

        def norm2d(c):
            return [nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)] if batch_norm else []

        def norm1d(c):
            return [nn.BatchNorm1d(c, eps=1e-3, momentum=0.1)] if batch_norm else []

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2), *norm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 5, padding=2), *norm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 64 * (crop // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 384), *norm1d(384), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(384, 192), *norm1d(192), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(192, num_classes),
        )
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
