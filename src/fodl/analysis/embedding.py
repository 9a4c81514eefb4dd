"""Penultimate-layer features of a classifier and their t-SNE map (book figure 5-19)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def penultimate_features(net: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The input of the net's last ``nn.Linear`` (the representation the classifier reads)."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach().cpu()))
    net.eval()
    try:
        for i in range(0, len(x), batch_size):
            net(x[i : i + batch_size])
    finally:
        handle.remove()
    return torch.cat(captured)


def tsne(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=min(perplexity, (len(features) - 1) / 3), init="pca",
                random_state=seed).fit_transform(features.numpy())
