#!/usr/bin/env python
"""The POS tagger's anchor: NLTK's averaged perceptron on the same CoNLL-2000 split.

    python scripts/bench_pos.py                                  # NLTK only
    python scripts/bench_pos.py --ckpt outputs/pos_tagger/runs/<time>/checkpoints/<best>.ckpt
    python scripts/reproduce.py --only ch7_pos_nltk          # as a row of the generated results

Trains NLTK's ``PerceptronTagger`` from scratch (nothing to download; ``pip install -e
'.[bench]'``) on the training sentences the fodl tagger trained on (the CoNLL-2000 training
file less the validation sentences, as ``data.val_size`` / ``data.split_seed`` carve them;
``--full-train`` uses all 8,936), scores both on the official test set, and prints overall
accuracy and accuracy on unknown words (word forms absent from the training sentences).
Reads the data from --data-dir (default: $FODL_DATA_DIR, else ../shared/data, else ./data).
"""

import argparse
import sys

from fodl.analysis.tagging import nltk_perceptron
from fodl.config import default_data_dir
from fodl.data.conll import CoNLLDataModule
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="a pos_tagger checkpoint to score beside NLTK")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--layout", default="pos", choices=["pos", "official"])
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--full-train", action="store_true", help="train NLTK on all training sentences")
    ap.add_argument("--iterations", type=int, default=5, help="perceptron passes (NLTK's default 5)")
    ap.add_argument("--seed", type=int, default=0, help="the perceptron's sentence shuffling")
    ap.add_argument("--metrics-json", help="also write NLTK's test/acc and test/acc_unknown here")
    args = ap.parse_args()
    dm = CoNLLDataModule(args.data_dir, layout=args.layout, val_size=0 if args.full_train else args.val_size,
                         split_seed=args.split_seed, download=False)
    sents = dm.sentences()
    rows = []
    r = nltk_perceptron(sents["train"], sents["test"], args.iterations, seed=args.seed)
    if args.metrics_json:
        from fodl.train import write_metrics

        write_metrics(args.metrics_json, {"test/acc": r["acc"], "test/acc_unknown": r["acc_unknown"],
                                          "train_s": r["train_s"]})
    rows.append((f"NLTK averaged perceptron ({args.iterations} passes, {len(sents['train'])} "
                 f"training sentences, {r['train_s']:.0f} s to train)", r))
    if args.ckpt:
        from fodl.models.tagger import evaluate_checkpoint

        rows.append((f"fodl pos_tagger ({args.ckpt})", evaluate_checkpoint(args.ckpt, args.data_dir)))
    print("\n| tagger | test accuracy | unknown-word accuracy | unknown tokens |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {100 * r['acc']:.2f}% | {100 * r['acc_unknown']:.2f}% | "
              f"{r['unknown_tokens']} of {r['tokens']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
