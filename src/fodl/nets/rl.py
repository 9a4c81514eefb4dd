"""Nets of chapter 9: the policy / Q-value MLP for vector observations (CartPole) and the Nature
DQN conv net for stacks of Atari frames.

Both take ``obs_shape`` and ``num_actions``, which the agents read from the environment (the
configs give the nets as partials, so ``env.id=ALE/Breakout-v5`` gets 4 outputs and Pong 6
without another override).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from fodl.nets.init import init_weights


class ActionMLP(nn.Module):
    """``prod(obs_shape) -> hidden[0] -> ... -> num_actions`` with ReLU between layers.

    One output per action: Q-values (DQN) or logits of the policy's softmax (policy gradient),
    or ``num_actions=1`` for a state-value baseline. The book's policy net is
    ``hidden=[16, 16]``; SB3 zoo's CartPole DQN uses ``[256, 256]``.
    """

    def __init__(self, obs_shape: Sequence[int] = (4,), num_actions: int = 2,
                 hidden: Sequence[int] = (256, 256), init: str = "torch") -> None:
        super().__init__()
        sizes = [math.prod(obs_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_actions))
        self.layers = nn.Sequential(*layers)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.float())


class NatureCNN(nn.Module):
    """The DQN of Mnih et al. 2015: conv 32x8x8 stride 4, conv 64x4x4 stride 2, conv 64x3x3
    stride 1, fc 512, one linear output per action, ReLU between.

    Input: ``(B, 4, 84, 84)`` frame stacks, uint8 (scaled by 1/255 here, so the replay keeps
    bytes) or float. ``padding="valid"`` is the paper's (84 -> 20 -> 9 -> 7, 3136 features);
    the book's TensorFlow code uses slim's default ``"same"`` (84 -> 21 -> 11 -> 11, 7744).
    """

    def __init__(self, obs_shape: Sequence[int] = (4, 84, 84), num_actions: int = 6,
                 hidden: int = 512, padding: str = "valid", init: str = "torch") -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be valid or same, got {padding!r}")
        if len(obs_shape) != 3:
            raise ValueError(f"NatureCNN takes (frames, height, width) observations, got {tuple(obs_shape)}")

        c = obs_shape[0]
        layers: list[nn.Module] = []
        for cin, cout, k, s in ((c, 32, 8, 4), (32, 64, 4, 2), (64, 64, 3, 1)):
            if padding == "same":
                layers.append(_SamePad(k, s))
            layers += [nn.Conv2d(cin, cout, k, s), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            n = self.features(torch.zeros(1, *obs_shape)).shape[1]
        self.head = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return self.head(self.features(x))


class _SamePad(nn.Module):
    """TensorFlow's 'SAME' padding for a kernel ``k`` and stride ``s``: output ``ceil(n/s)``,
    the extra pixel (if any) on the right and bottom."""

    def __init__(self, k: int, s: int) -> None:
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(n / self.s) - 1) * self.s + self.k - n, 0)
            pads += [total // 2, total - total // 2]
        return nn.functional.pad(x, pads)
