"""Comparing runs (chapter 4 optimizers, chapter 5 batch norm): curves (PNG) and a markdown table."""

from __future__ import annotations

from pathlib import Path

from fodl.analysis.tblogs import Run

BOOK_TEST_ACC = {"sgd": 0.9807, "momentum": 0.8683}  # the book's printed results (500 epochs)


def plot(runs: list[Run], out_png: Path,
         title: str = "MNIST MLP 784-256-256-10: optimizers (book chapter 4)") -> Path:
    """Training cost per minibatch and validation error per epoch of each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cost, ax_err) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        cost = run.scalars.get("train/loss_step", [])
        # logged steps are optimizer steps
        ax_cost.plot([s for s, _ in cost], [v for _, v in cost], label=run.label, lw=1)
        val = run.scalars.get("val/acc", [])
        ax_err.plot(range(1, len(val) + 1), [1 - v for _, v in val], label=run.label, lw=1.2)
    ax_cost.set(xlabel="minibatch (optimizer step)", ylabel="training cost (cross-entropy)",
                yscale="log", title="Training cost")
    ax_err.set(xlabel="epoch", ylabel="validation error", yscale="log", title="Validation error")
    for ax in (ax_cost, ax_err):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def table(runs: list[Run]) -> str:
    lines = ["| run | epochs | final train cost | best val acc | test acc | book test acc |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        val = [v for _, v in run.scalars.get("val/acc", [])]
        book = BOOK_TEST_ACC.get(run.label)
        lines.append(
            f"| {run.label} | {len(val)} | {run.metrics.get('train/loss', float('nan')):.4f} | "
            f"{max(val) if val else float('nan'):.4f} | {run.metrics.get('test/acc', float('nan')):.4f} | "
            f"{f'{book:.4f}' if book else 'not printed'} |")
    return "\n".join(lines) + "\n"
