#!/usr/bin/env python
"""Book chapter 4, figure 4-9: minibatches needed to bring the MNIST MLP's training cost to 0.1
with plain SGD (0.01) and with momentum (0.01, 0.9). Book: ~18,000 vs just over 2,000.

    python scripts/momentum_speedup.py [--threshold 0.1] [--window 100] [--seed 0] [overrides ...]
    python scripts/reproduce.py --only ch4_momentum_speedup       # 3 seeds, as a results row

--metrics-json writes sgd/minibatches, momentum/minibatches and speedup (their ratio); a run that
does not reach the cost within --max-epochs leaves its number out.
"""

import argparse
import sys

from fodl.analysis.momentum import steps_to_cost
from fodl.config import default_data_dir
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--window", type=int, default=100, help="minibatches in the running mean of the cost")
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--seed", type=int, default=None, help="the runs' seed (default: the config's)")
    ap.add_argument("--metrics-json", help="also write the minibatch counts here")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.net.output_activation=relu")
    args = ap.parse_args()
    rows = []
    seed = [] if args.seed is None else [f"seed={args.seed}"]
    for name in ("sgd", "momentum"):
        steps = steps_to_cost([f"optimizer={name}", *seed, *args.overrides], args.data_dir,
                              args.threshold, args.window, args.max_epochs)
        rows.append((name, steps))
    if args.metrics_json:
        from fodl.train import write_metrics

        got = {f"{name}/minibatches": float(steps) for name, steps in rows if steps is not None}
        if len(got) == 2:
            got["speedup"] = got["sgd/minibatches"] / got["momentum/minibatches"]
        write_metrics(args.metrics_json, got)
    book = {"sgd": "~18,000", "momentum": "just over 2,000"}
    print(f"\n| optimizer | minibatches to cost <= {args.threshold} (mean of {args.window}) | book |")
    print("|---|---|---|")
    for name, steps in rows:
        print(f"| {name} | {steps if steps is not None else f'not within {args.max_epochs} epochs'} | {book[name]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
