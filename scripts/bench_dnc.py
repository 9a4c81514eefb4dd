#!/usr/bin/env python
"""Our DNC side by side with the public PyTorch DNC (the `dnc` package, ixaxaar/pytorch-dnc;
pip install -e ".[bench]") on the copy task, at equal settings: memory size, word size, read
heads, one LSTM controller layer of the same size, batch, Adam, gradient clipping.

    python scripts/bench_dnc.py [--memory 64 --word 16 --heads 1 --hidden 64 --batch 32]
        [--width 8 --max-length 10] [--steps 10 --rounds 5] [--compile] [--curve 0] [--out DIR]

Prints training steps/s of each (forward, loss, backward, clip, Adam step; timed in interleaved
rounds on the same batches, median reported) and, with --curve N, trains both for N steps from
the same batches and plots the loss curves (curves.png). Set OMP_NUM_THREADS / --threads.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from fodl.analysis.dnc import copy_batches, ours, package, plot_curves, speed, train_steps
from fodl.errors import reports_errors


@reports_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", type=int, default=64)
    p.add_argument("--word", type=int, default=16)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--max-length", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time our DNC with model.net.compile=true")
    p.add_argument("--curve", type=int, default=0, help="learning curves over this many steps (0: none)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/bench_dnc"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = (a.width, a.hidden, a.memory, a.word, a.heads)
    torch.manual_seed(a.seed)
    contestants = {"fodl DNC": ours(*sizes, lr=a.lr)}
    torch.manual_seed(a.seed)
    contestants["dnc package"] = package(*sizes, lr=a.lr)
    if a.compile:
        torch.manual_seed(a.seed)
        contestants["fodl DNC, compiled"] = ours(*sizes, lr=a.lr, compile=True)
    params = {k: sum(q.numel() for q in c.net.parameters()) for k, c in contestants.items()}
    print(f"copy task: width {a.width}, lengths 1..{a.max_length}, batch {a.batch}; memory "
          f"{a.memory}x{a.word}, {a.heads} read head(s), LSTM {a.hidden}; {torch.get_num_threads()} "
          f"thread(s)")
    batches = copy_batches(a.steps, a.batch, a.width, 1, a.max_length, a.seed)
    result = {"settings": vars(a) | {"out": str(a.out)}, "params": params,
              "steps_per_s": speed(contestants, batches, a.rounds)}
    print("| implementation | parameters | steps/s (median) | min - max |\n|---|---|---|---|")
    for k, v in result["steps_per_s"].items():
        print(f"| {k} | {params[k]:,} | {v['median']:.2f} | {v['min']:.2f} - {v['max']:.2f} |")
    if a.curve:
        a.out.mkdir(parents=True, exist_ok=True)
        batches = copy_batches(a.curve, a.batch, a.width, 1, a.max_length, a.seed + 1)
        curves = {}
        for label in ("fodl DNC", "dnc package"):
            torch.manual_seed(a.seed)
            c = ours(*sizes, lr=a.lr) if label == "fodl DNC" else package(*sizes, lr=a.lr)
            curves[label] = []
            train_steps(c, batches, record=curves[label])
        every = max(1, a.curve // 50)
        plot_curves(curves, every, a.out / "curves.png")
        result["curves"] = curves
        tail = max(1, a.curve // 10)
        for label, losses in curves.items():
            print(f"{label}: loss {sum(losses[:tail]) / tail:.4f} (first {tail} steps) -> "
                  f"{sum(losses[-tail:]) / tail:.4f} (last {tail})")
        (a.out / "bench.json").write_text(json.dumps(result, indent=1))
        print(f"written: {a.out / 'curves.png'}, {a.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
