"""The book's CIFAR-10 input pipeline (TensorFlow's cifar10_input), batched on tensors.

Works on uint8 or float batches ``(N, 3, H, W)`` on any device; randomness comes from an
explicit ``torch.Generator`` so a seed fixes every crop, flip and colour change.
"""

from __future__ import annotations

import torch


def _rand(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    oy = (_rand(n, generator, x.device) * (h - size + 1)).long()
    ox = (_rand(n, generator, x.device) * (w - size + 1)).long()
    ar = torch.arange(size, device=x.device)
    rows = (oy[:, None] + ar)[:, None, :, None]
    cols = (ox[:, None] + ar)[:, None, None, :]
    return x[torch.arange(n, device=x.device)[:, None, None, None],
             torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator,
                 fill: float = 0.0) -> torch.Tensor:
    """Each image moved by its own whole-pixel offset in ``[-max_shift, max_shift]`` on each
    axis, the uncovered border set to ``fill`` (the background)."""
    if max_shift <= 0:
        return x
    s = int(max_shift)
    padded = torch.nn.functional.pad(x, (s, s, s, s), value=fill)
    return random_crop(padded, x.shape[-1], generator)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = _rand(len(x), generator, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_brightness(x: torch.Tensor, max_delta: float, generator: torch.Generator) -> torch.Tensor:
    delta = (_rand(len(x), generator, x.device) * 2 - 1) * max_delta
    return x + delta[:, None, None, None]


def random_contrast(x: torch.Tensor, lower: float, upper: float, generator: torch.Generator) -> torch.Tensor:
    factor = lower + _rand(len(x), generator, x.device) * (upper - lower)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * factor[:, None, None, None] + mean


def per_image_standardization(x: torch.Tensor) -> torch.Tensor:
    """tf.image.per_image_standardization: (x - mean) / max(std, 1/sqrt(num_elements))."""
    flat = x.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False).clamp_min(1.0 / flat.shape[1] ** 0.5)
    return (x - mean[:, None, None, None]) / std[:, None, None, None]


def distort(x: torch.Tensor, generator: torch.Generator, crop: int = 24) -> torch.Tensor:
    """Training distortions of the book: random crop, flip, brightness (+-63 on the 0-255
    scale), contrast [0.2, 1.8], then per-image standardization."""
    x = random_crop(x, crop, generator).float()
    x = random_flip(x, generator)
    x = random_brightness(x, 63.0, generator)
    x = random_contrast(x, 0.2, 1.8, generator)
    return per_image_standardization(x)


def evaluate_view(x: torch.Tensor, crop: int = 24) -> torch.Tensor:
    """Evaluation input of the book: central crop and per-image standardization."""
    return per_image_standardization(center_crop(x, crop).float())
