"""Chapter 8 analyses: copy-task generalisation to longer sequences, and the side-by-side
speed / learning-curve comparison with the public PyTorch DNC (the ``dnc`` package on PyPI,
ixaxaar/pytorch-dnc)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fodl.data.copy_task import CopyBatch, copy_io, make_copy_batch
from fodl.data.loader import derive_seed
from fodl.errors import FodlError

GENERALISATION_SEED = 20161012  # the DNC paper's publication date: one fixed test stream


# -- generalisation ---------------------------------------------------------------------------
@torch.no_grad()
def bit_error_by_length(net: nn.Module, width: int, lengths: list[int], sequences: int = 64,
                        repeats: int = 1, max_repeats: int = 1, batch_size: int = 64,
                        seed: int = GENERALISATION_SEED) -> dict[int, float]:
    """The fraction of output bits ``net`` gets wrong on ``sequences`` random copy-task
    sequences of each length. The sequences of a length are the same for every net (one fixed
    stream per length), so nets are compared on identical inputs."""
    net.eval()
    out = {}
    for n in lengths:
        g = torch.Generator().manual_seed(derive_seed(seed, n, repeats))
        wrong = bits = 0
        for start in range(0, sequences, batch_size):
            b = make_copy_batch(min(batch_size, sequences - start), n, width, repeats, max_repeats, g)
            logits = net(b.inputs)
            mask = b.mask.unsqueeze(-1)
            wrong += int((((logits > 0) != (b.targets > 0.5)) & mask).sum())
            bits += int(mask.sum()) * width
        out[n] = wrong / bits
    return out


def load_copy_net(path: str | Path) -> tuple[nn.Module, dict]:
    """The net of a copy-task checkpoint and its data settings (width, lengths, repeats)."""
    from omegaconf import OmegaConf

    from fodl.checkpoint import load_module

    module, data_cfg, _ = load_module(path)
    data = OmegaConf.to_container(data_cfg, resolve=False)
    if "width" not in data or getattr(module, "tokens", True):
        raise FodlError(f"{path} was not trained on the copy task (data=copy); the generalisation "
                        "test needs a copy-task checkpoint.")
    return module.net, data


def generalisation(checkpoints: dict[str, str | Path], factors: tuple[int, ...] = (1, 2, 3, 4),
                   sequences: int = 64) -> dict:
    """Bit error per length, 1 .. max(factors) x the training maximum, for each labelled
    checkpoint. Returns ``{"train_max": L, "lengths": [...], "error": {label: {length: e}}}``."""
    nets, datas = {}, {}
    for label, path in checkpoints.items():
        nets[label], datas[label] = load_copy_net(path)
    train_max = {d["max_length"] for d in datas.values()}
    widths = {d["width"] for d in datas.values()}
    if len(train_max) != 1 or len(widths) != 1:
        raise FodlError(f"The checkpoints were trained on different copy tasks (max_length "
                        f"{sorted(train_max)}, width {sorted(widths)}): compare like with like.")
    lmax, width = train_max.pop(), widths.pop()
    lengths = list(range(1, max(factors) * lmax + 1))
    error = {label: bit_error_by_length(net, width, lengths, sequences) for label, net in nets.items()}
    return {"train_max": lmax, "width": width, "factors": list(factors), "lengths": lengths,
            "sequences": sequences, "error": error}


def generalisation_table(result: dict) -> str:
    """A markdown table: bit error (%) at 1x .. 4x the training maximum, per model."""
    lmax = result["train_max"]
    cols = [f * lmax for f in result["factors"]]
    head = "| model | " + " | ".join(f"L={n} ({f}x)" for n, f in zip(cols, result["factors"])) + " |"
    rows = [head, "|---" * (len(cols) + 1) + "|"]
    for label, err in result["error"].items():
        rows.append(f"| {label} | " + " | ".join(f"{100 * err[n]:.2f}%" for n in cols) + " |")
    return "\n".join(rows)


def plot_generalisation(result: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, err in result["error"].items():
        ax.plot(list(err), [100 * e for e in err.values()], marker=".", label=label)
    ax.axvline(result["train_max"], color="gray", linestyle="--", lw=1, label="longest training length")
    ax.set_xlabel("sequence length (vectors to copy)")
    ax.set_ylabel("bit error (%)")
    ax.set_title(f"copy task, {result['width']}-bit vectors, {result['sequences']} sequences per length")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- side by side with the `dnc` package -----------------------------------------------------
def copy_loss(logits: torch.Tensor, batch: CopyBatch) -> torch.Tensor:
    """Sigmoid cross-entropy on the output steps, per bit (the MemoryModule's copy loss)."""
    mask = batch.mask.unsqueeze(-1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none")
    return (bce * mask).sum() / (mask.sum() * logits.shape[-1])


class Contestant(NamedTuple):
    """A net in the side-by-side comparison: its parameters, its copy-task logits, its Adam."""

    net: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    opt: torch.optim.Optimizer


def ours(width: int, hidden: int, memory: int, word: int, heads: int, lr: float = 1e-3,
         compile: bool = False) -> Contestant:
    """Our DNC (:class:`fodl.nets.dnc.DNC`) on the copy task."""
    from fodl.nets.dnc import DNC

    in_size, out_size = copy_io(width)
    net = DNC(in_size, out_size, hidden_size=hidden, memory_size=memory, word_size=word,
              read_heads=heads, compile=compile)
    return Contestant(net, net, torch.optim.Adam(net.parameters(), lr))


def package(width: int, hidden: int, memory: int, word: int, heads: int, lr: float = 1e-3) -> Contestant:
    """The ``dnc`` package's DNC at the same settings (one LSTM layer of ``hidden`` units,
    ``memory`` x ``word`` memory, ``heads`` read heads, interface clipped at 20, one
    interface Linear). Its output layer maps to the input width (``width + 2``): its first
    ``width`` outputs are the logits, which is a Linear to ``width`` outputs."""
    try:
        from dnc import DNC as PackageDNC
    except ImportError:
        raise FodlError("The `dnc` package is not installed: pip install -e '.[bench]' (or "
                        "pip install dnc).") from None
    in_size, _ = copy_io(width)
    net = PackageDNC(input_size=in_size, hidden_size=hidden, rnn_type="lstm", num_layers=1,
                     num_hidden_layers=1, nr_cells=memory, cell_size=word, read_heads=heads,
                     batch_first=True, gpu_id=-1, independent_linears=False, clip=20)

    def forward(x: torch.Tensor) -> torch.Tensor:
        y, _ = net(x, (None, None, None), reset_experience=True)
        return y[..., :width]

    return Contestant(net, forward, torch.optim.Adam(net.parameters(), lr))


def train_steps(c: Contestant, batches: list[CopyBatch], clip: float = 10.0,
                record: list[float] | None = None) -> None:
    """One Adam step per batch: forward, masked loss, backward, gradient-norm clip, step."""
    for b in batches:
        loss = copy_loss(c.forward(b.inputs), b)
        c.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(c.net.parameters(), clip)
        c.opt.step()
        if record is not None:
            record.append(loss.item())


def copy_batches(n: int, batch: int, width: int, min_length: int, max_length: int, seed: int) -> list[CopyBatch]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (n,), generator=g).tolist()
    return [make_copy_batch(batch, length, width, generator=g) for length in lengths]


def speed(contestants: dict[str, Contestant], batches: list[CopyBatch],
          rounds: int = 5, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Training steps per second of each contestant on the same batches, interleaved: each
    round times every contestant on all ``batches`` in turn (so machine load hits all alike);
    the median over rounds is reported."""
    for c in contestants.values():
        train_steps(c, batches[:warmup])
    times: dict[str, list[float]] = {k: [] for k in contestants}
    for _ in range(rounds):
        for label, c in contestants.items():
            t0 = time.perf_counter()
            train_steps(c, batches)
            times[label].append(len(batches) / (time.perf_counter() - t0))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()}


def plot_curves(curves: dict[str, list[float]], every: int, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, losses in curves.items():
        smooth = [sum(losses[i : i + every]) / len(losses[i : i + every]) for i in range(0, len(losses), every)]
        ax.plot([i * every for i in range(len(smooth))], smooth, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"copy loss (bits, mean of {every} steps)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
