#!/usr/bin/env python
"""t-SNE of a trained classifier's penultimate-layer features on test images (book figure 5-19).

    python scripts/tsne.py outputs/cifar_cnn/runs/<time>/checkpoints/last.ckpt [--n 2000] [--out x.png]

Needs scikit-learn (pip install -e ".[analysis]").
"""

import argparse
import os
import sys
from pathlib import Path

import torch

from fodl.analysis.classifier_run import load_classifier_run
from fodl.analysis.embedding import penultimate_features, tsne
from fodl.errors import reports_errors


def run(ckpt: str, out: Path, n: int = 2000, seed: int = 0, data_dir: str | None = None) -> Path:
    module, dm, _ = load_classifier_run(ckpt, data_dir, "test", "tsne.py")
    x, y = dm.splits["test"]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = x[idx], y[idx]
    if hasattr(dm, "transform"):  # e.g. CIFAR: the evaluation view (central crop, standardised)
        x = dm.transform(x, train=False)
    emb = tsne(penultimate_features(module.net, x), seed=seed)
    classes = getattr(__import__(type(dm).__module__, fromlist=["CLASSES"]), "CLASSES", None)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 7))
    for c in range(int(y.max()) + 1):
        m = (y == c).numpy()
        ax.scatter(emb[m, 0], emb[m, 1], s=4, label=classes[c] if classes else str(c))
    ax.legend(markerscale=4, fontsize=8)
    ax.set(title=f"t-SNE of penultimate features, {n} test images", xticks=[], yticks=[])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: <run dir>/tsne.png")
    ap.add_argument("--data-dir", default=os.environ.get("FODL_DATA_DIR"))
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent / "tsne.png"
    print(f"wrote {run(args.ckpt, out, args.n, args.seed, args.data_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
