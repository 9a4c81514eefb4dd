#!/usr/bin/env python
"""Linear interpolation between a random init and a trained MNIST MLP (book chapter 4).

    python scripts/interpolate.py outputs/mnist_mlp/runs/<time>/checkpoints/last.ckpt
        [--out DIR] [--seed 0] [--step 0.01] [--data-dir DIR] [--metrics-json FILE]
    python scripts/reproduce.py --only ch4_interpolation     # on the pipeline's ch3_mnist_mlp runs

Evaluates the test-set cost along theta(a) = a*theta_f + (1-a)*theta_i for a in [-2, 2];
writes interpolation.png, interpolation.csv and a TensorBoard scalar interpolation/cost
(x = 100*(a+2), as in the book's summary writer), and prints the costs at a=0 and a=1
(book: 2.38 random, 0.0805 trained); --metrics-json also writes those two as cost_random and
cost_trained (the results pipeline's row).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from fodl.analysis.classifier_run import load_classifier_run
from fodl.analysis.interpolation import alpha_grid, interpolate
from fodl.errors import FodlError, reports_errors


def run(ckpt: str, out: Path, seed: int = 0, step: float = 0.01, data_dir: str | None = None) -> dict:
    module, dm, cfg = load_classifier_run(ckpt, data_dir, "test", "interpolate.py")
    torch.manual_seed(seed)
    initial = instantiate(cfg.model.net)  # a fresh draw of the run's own initialisation
    x, y = dm.splits["test"]
    alphas = alpha_grid(-2.0, 2.0, step)
    costs = interpolate(module.net, initial, x, y, alphas)

    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "interpolation.csv", np.c_[alphas, costs], delimiter=",",
               header="alpha,test_cost", comments="")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(alphas, costs, "r.", ms=3)
    ax.set(xlabel="alpha", ylabel="incurred error (test cross-entropy)", yscale="log",
           title="theta(a) = a*theta_trained + (1-a)*theta_random")
    ax.axvline(0, color="gray", lw=0.5)
    ax.axvline(1, color="gray", lw=0.5)
    fig.tight_layout()
    fig.savefig(out / "interpolation.png", dpi=120)
    plt.close(fig)
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(out / "tensorboard")) as w:
        for a, c in zip(alphas, costs):
            w.add_scalar("interpolation/cost", float(c), int(round((a + 2) / step)))
    at = {a: float(costs[int(np.argmin(np.abs(alphas - a)))]) for a in (0.0, 1.0)}
    return {"cost_random": at[0.0], "cost_trained": at[1.0], "alphas": alphas, "costs": costs}


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="?", help="a model=mnist_mlp checkpoint")
    ap.add_argument("--ckpt", dest="ckpt_option", metavar="CKPT", help="the same, as an option")
    ap.add_argument("--out", default=None,
                    help="default: the --metrics-json file's directory, else <run dir>/interpolation")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random initialisation theta_i")
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--data-dir", default=os.environ.get("FODL_DATA_DIR"))
    ap.add_argument("--metrics-json", help="also write cost_random and cost_trained here")
    args = ap.parse_args()
    if bool(args.ckpt) == bool(args.ckpt_option):
        raise FodlError("scripts/interpolate.py needs one checkpoint: give it as the argument or "
                        "as --ckpt, not both or neither.")
    ckpt = args.ckpt or args.ckpt_option
    out = (Path(args.out) if args.out else Path(args.metrics_json).resolve().parent if args.metrics_json
           else Path(ckpt).resolve().parent.parent / "interpolation")
    r = run(ckpt, out, args.seed, args.step, args.data_dir)
    if args.metrics_json:
        from fodl.train import write_metrics

        write_metrics(args.metrics_json, {"cost_random": r["cost_random"], "cost_trained": r["cost_trained"]})
    print(f"test cost at alpha=0 (random init): {r['cost_random']:.4f}   (book: 2.38)")
    print(f"test cost at alpha=1 (trained):     {r['cost_trained']:.4f}   (book: 0.0805)")
    print(f"wrote {out}/interpolation.png, interpolation.csv, tensorboard/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
