#!/usr/bin/env python
"""fodl's training epoch vs a plain PyTorch loop, in one process, on the same in-memory data.

    python scripts/benchmark.py                       # MNIST MLP and CNN on the CPU
    python scripts/benchmark.py --models mnist_mlp --epochs 4 --accelerator gpu
    python scripts/benchmark.py --time-to 0.9744 experiment=fast/mnist_mlp
    python scripts/benchmark.py --models mnist_mlp --clock thread     # CPU seconds, one thread

Reads MNIST from --data-dir (default: $FODL_DATA_DIR, else ./data, as paths.data_dir).
"""

import argparse
import sys

import torch

from fodl.benchmark import compare, time_to_accuracy
from fodl.config import default_data_dir
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mnist_mlp", "mnist_cnn"])
    ap.add_argument("--epochs", type=int, default=6,
                    help="epochs of each, interleaved plain/fodl; the first pair is warm-up")
    ap.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--clock", default="wall", choices=["wall", "thread"],
                    help="wall: seconds as a user waits (default); thread: CPU seconds of the "
                         "training thread, torch on one thread (steadier on a shared CPU)")
    ap.add_argument("--time-to", type=float, default=None, metavar="ACC",
                    help="instead: time fodl's fit until val/acc >= ACC (give model/experiment overrides)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the fodl run")
    args = ap.parse_args()

    if args.time_to is not None:
        r = time_to_accuracy(args.overrides or ["model=mnist_mlp"], args.data_dir, args.time_to)
        reached = r["val_acc"] >= args.time_to
        print(f"\n{' '.join(args.overrides)}: val/acc {r['val_acc']:.4f} "
              f"{'>=' if reached else '< (target NOT reached)'} {args.time_to} after "
              f"{r['epochs']} epochs, fit {r['fit_s']:.1f} s; test/acc {r['test_acc']:.4f}")
        return 0 if reached else 1

    rows = []
    for model in args.models:
        r = compare(model, args.data_dir, args.epochs, args.accelerator, args.overrides, args.clock)
        rows.append((model, r))
    threads = 1 if args.clock == "thread" else torch.get_num_threads()
    dev = torch.cuda.get_device_name() if args.accelerator == "gpu" else f"CPU, {threads} threads"
    if args.clock == "thread":
        dev += ", CPU s of the training thread"
    print("\n| model | device | steps/epoch | plain PyTorch s/epoch | fodl s/epoch | ratio (median of pairs) |")
    print("|---|---|---|---|---|---|")
    for model, r in rows:
        print(f"| {model} | {dev} | {r['steps']} | {r['plain_s']:.2f} | {r['fodl_s']:.2f} | {r['ratio']:.2f}x |")
    text = [(m, r) for m, r in rows if r.get("tokens")]
    if text:  # text models: throughput in tokens (tagged words, review tokens) per second
        print("\n| model | tokens/epoch | plain PyTorch tokens/s | fodl tokens/s | ratio |")
        print("|---|---|---|---|---|")
        for model, r in text:
            print(f"| {model} | {r['tokens']:,} | {r['tokens'] / r['plain_s']:,.0f} | "
                  f"{r['tokens'] / r['fodl_s']:,.0f} | {r['ratio']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
