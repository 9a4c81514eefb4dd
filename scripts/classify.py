#!/usr/bin/env python
"""Classify texts with a trained sentiment model: python scripts/classify.py CKPT "review text" [...]

Prints the label and its probability for each text (one line each). The checkpoint
(model=lstm_sentiment) holds the vocabulary and the tokenizer settings; nothing else is read.
"""

import argparse
import sys

from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="an lstm_sentiment checkpoint (outputs/lstm_sentiment/runs/<time>/checkpoints/*.ckpt)")
    ap.add_argument("texts", nargs="+", help="raw review texts")
    args = ap.parse_args()
    from fodl.models.sentiment import load_text_classifier

    model = load_text_classifier(args.ckpt)
    labels = model.text_settings.get("labels") or [str(i) for i in range(model.val_acc.num_classes)]
    probs = model.classify(args.texts)
    for text, p in zip(args.texts, probs):
        k = int(p.argmax())
        short = text if len(text) <= 60 else text[:57] + "..."
        print(f"{labels[k]}\t{float(p[k]):.4f}\t{short}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
