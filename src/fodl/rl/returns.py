"""Discounted returns (book chapter 9, "Discounted Future Return") and their normalisation."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def discounted_returns(rewards: Sequence[float] | np.ndarray, gamma: float,
                       dones: Sequence[bool] | np.ndarray | None = None) -> np.ndarray:
    """``G_t = r_t + gamma * G_{t+1}`` for every step, computed backwards.

    ``rewards`` is one episode (or several laid end to end with ``dones[t] = True`` on the last
    step of each: the sum restarts there). An episode cut by a time limit is summed to its last
    step like a terminated one, as REINFORCE does. The book's ``discount_rewards`` is this with
    ``gamma=0.98``.
    """
    r = np.asarray(rewards, dtype=np.float64)
    d = np.zeros(len(r), dtype=bool) if dones is None else np.asarray(dones, dtype=bool)
    if d.shape != r.shape:
        raise ValueError(f"rewards and dones differ in shape: {r.shape} vs {d.shape}")
    out = np.empty_like(r)
    g = 0.0
    for t in range(len(r) - 1, -1, -1):
        if d[t]:
            g = 0.0
        g = r[t] + gamma * g
        out[t] = g
    return out.astype(np.float32)


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the batch (a single value becomes 0): the usual variance
    reduction of REINFORCE, subtracting the batch-mean baseline and scaling the step."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + eps)
