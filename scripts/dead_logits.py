#!/usr/bin/env python
"""Why the book's momentum run stalled at 86.83%: count "dead" output units of MLPs trained with
the book's ReLU on the logits (model.net.output_activation=relu). A unit is dead when its
pre-ReLU logit is negative for every validation image: it outputs 0, gets no gradient, and
its class can only win by ties. A "dying" unit is positive on only a few images of its own
class; the table shows, for the worst class, that fraction and the class's recall.

    python scripts/train.py -m model=mnist_mlp optimizer=momentum model.net.output_activation=relu \\
        seed=0,1,2,3,4,5,6,7,8,9 trainer.max_epochs=3 test=false
    python scripts/dead_logits.py outputs/multiruns/<time>
"""

import argparse
import sys
from pathlib import Path

import torch

from fodl.checkpoint import load_run
from fodl.errors import FodlError, reports_errors


@torch.no_grad()
def dead_units(ckpt: Path, data_dir: str | None) -> tuple[int, float, list[int], int, float, float]:
    module, dm, cfg = load_run(ckpt, data_dir, "fit")
    x, y = dm.splits["val"]
    layers = module.net.layers
    if not isinstance(layers[-1], torch.nn.ReLU):
        raise FodlError(f"{ckpt}: this MLP has linear logits (output_activation is not relu).")
    pre = layers[:-1](x.flatten(1))  # logits before the output ReLU
    dead = [int(c) for c in torch.nonzero(pre.max(0).values < 0).flatten()]
    pred = layers[-1](pre).argmax(1)
    acc = (pred == y).float().mean().item()
    classes = range(pre.shape[1])
    alive = torch.tensor([(pre[y == c, c] > 0).float().mean().item() for c in classes])
    worst = int(alive.argmin())
    recall = (pred[y == worst] == worst).float().mean().item()
    return cfg.seed, acc, dead, worst, float(alive[worst]), recall


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    rows = []
    for ckpt in sorted(Path(args.sweep_dir).glob("*/checkpoints/last.ckpt")):
        rows.append(dead_units(ckpt, args.data_dir))
    if not rows:
        print(f"error: no */checkpoints/last.ckpt under {args.sweep_dir}", file=sys.stderr)
        return 2
    print("| seed | val acc | dead output units (classes) | least-alive class | its logit > 0 on | its recall |")
    print("|---|---|---|---|---|---|")
    for seed, acc, dead, worst, alive, recall in sorted(rows):
        print(f"| {seed} | {acc:.4f} | {len(dead)} {dead if dead else ''} | {worst} | {alive:.1%} | {recall:.1%} |")
    n_bad = sum(1 for r in rows if r[4] < 0.01)
    print(f"\n{n_bad} of {len(rows)} runs lost a class: its output ReLU is off for (almost) all of its images.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
