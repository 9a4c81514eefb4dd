"""Chapter 4 (Goodfellow et al.): cost along the line theta(a) = a*theta_f + (1-a)*theta_i
between a random initialisation theta_i and a trained solution theta_f."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


@torch.no_grad()
def cost(net: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict | None = None,
         batch_size: int = 10000) -> float:
    """Mean cross-entropy of ``net`` (optionally with substituted ``params``) over (x, y)."""
    net.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = functional_call(net, params, (xb,)) if params is not None else net(xb)
        total += F.cross_entropy(logits, yb, reduction="sum").item()
    return total / len(x)


def interpolate(trained: nn.Module, initial: nn.Module, x: torch.Tensor, y: torch.Tensor,
                alphas: np.ndarray) -> np.ndarray:
    """Cost at each alpha; alpha=0 is ``initial``, alpha=1 is ``trained``."""
    theta_f = {k: v.detach() for k, v in trained.named_parameters()}
    theta_i = {k: v.detach() for k, v in initial.named_parameters()}
    if theta_f.keys() != theta_i.keys():
        raise ValueError("the two nets have different parameters")
    net = copy.deepcopy(trained)
    return np.array([
        cost(net, x, y, {k: a * theta_f[k] + (1 - a) * theta_i[k] for k in theta_f})
        for a in (float(a) for a in alphas)
    ])


def alpha_grid(start: float = -2.0, stop: float = 2.0, step: float = 0.01) -> np.ndarray:
    """The book's grid, with both ends and exact 0 and 1 included."""
    n = int(round((stop - start) / step))
    return np.round(np.linspace(start, stop, n + 1), 10)
