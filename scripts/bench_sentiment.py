#!/usr/bin/env python
"""The sentiment LSTM's anchor: a linear model on TF-IDF n-grams, on fodl's own IMDB split.

    python scripts/bench_sentiment.py                                   # the linear model only
    python scripts/bench_sentiment.py --ckpt outputs/lstm_sentiment/runs/<time>/checkpoints/<best>.ckpt
    python scripts/reproduce.py --only ch7_sentiment_linear   # as a row of the generated results

TF-IDF of word unigrams + bigrams (``min_df`` 2, the 300,000 most frequent n-grams, sublinear
term frequency) and scikit-learn's ``LogisticRegression(C=4)``, trained on the reviews the fodl
model trained on (fodl's IMDB reader and tokenizer, the 25,000 training reviews less the
``--val-size`` held out with ``--split-seed`` and ``--val-split``, as ``data.val_size`` /
``data.split_seed`` / ``data.val_split`` carve them; ``--full-train`` uses all 25,000) and
scored on the same 25,000 test reviews. Reviews are whole (no cut) and keep every word. With ``--ckpt``, the checkpoint's test accuracy is printed
beside it (reviews tokenised with the checkpoint's settings, cut to its ``max_len``), and so is
the accuracy of the two models averaged (the mean of their class probabilities: Mesnil et al.
2014's ensemble of a bag-of-n-grams model and an RNN trained apart).
Reads the data from --data-dir (default: $FODL_DATA_DIR, else ../shared/data, else ./data).
"""

import argparse
import os
import sys
import time

import torch

from fodl.config import default_data_dir
from fodl.errors import FodlError, reports_errors


def ngrams(tokens: list[str]) -> list[str]:
    """Unigrams and bigrams of one token list (the TF-IDF vocabulary's terms)."""
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of rows whose highest score is the label's."""
    return float((scores.argmax(-1) == labels).float().mean())


def linear_baseline(train, test, c: float = 4.0, min_df: int = 2, max_features: int = 300_000,
                    max_iter: int = 1000) -> dict:
    """Fit TF-IDF + logistic regression on ``train = (token lists, labels)``; accuracy on ``test``."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise FodlError("scripts/bench_sentiment.py needs scikit-learn (the dev extra): "
                        "pip install -e '.[dev]'.") from e
    t0 = time.perf_counter()
    vec = TfidfVectorizer(analyzer=ngrams, min_df=min_df, max_features=max_features,
                          sublinear_tf=True)
    x_train = vec.fit_transform(train[0])
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit(x_train, train[1].numpy())
    fit_s = time.perf_counter() - t0
    proba = clf.predict_proba(vec.transform(test[0]))
    acc = accuracy(torch.as_tensor(proba), test[1])
    return {"acc": acc, "fit_s": fit_s, "features": x_train.shape[1], "proba": proba,
            "wall_s": time.perf_counter() - t0}


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="an lstm_sentiment checkpoint to score beside the linear model")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--cache-dir", default=os.environ.get("FODL_CACHE_DIR"),
                    help="where fodl caches the tokenised reviews (default: $FODL_CACHE_DIR, else none)")
    ap.add_argument("--val-size", type=int, default=2500, help="as data.val_size of the fodl run")
    ap.add_argument("--split-seed", type=int, default=0, help="as data.split_seed of the fodl run")
    ap.add_argument("--val-split", default="random", choices=["random", "films"],
                    help="as data.val_split of the fodl run (the recipes hold out whole films)")
    ap.add_argument("--full-train", action="store_true", help="fit the linear model on all 25,000")
    ap.add_argument("--C", type=float, default=4.0, help="inverse L2 strength (default 4)")
    ap.add_argument("--no-linear", action="store_true", help="only score --ckpt (no linear model)")
    ap.add_argument("--min-df", type=int, default=2)
    ap.add_argument("--max-features", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0,
                    help="accepted for the results pipeline; the linear model's fit is deterministic")
    ap.add_argument("--metrics-json", help="also write the results here: test/acc (the linear model's), "
                    "with --ckpt lstm/acc and ensemble/acc (both models averaged)")
    args = ap.parse_args()
    if args.no_linear and not args.ckpt:
        raise FodlError("scripts/bench_sentiment.py --no-linear leaves nothing to score: give --ckpt.")
    from fodl.data.imdb import IMDBDataModule

    model, settings = None, {"tokenizer": "words", "lowercase": True}
    if args.ckpt:
        from fodl.models.sentiment import load_text_classifier

        model = load_text_classifier(args.ckpt)
        settings = {k: model.text_settings[k] for k in settings if k in model.text_settings}
    dm = IMDBDataModule(args.data_dir, args.cache_dir, download=False,
                        val_size=0 if args.full_train else args.val_size, split_seed=args.split_seed,
                        val_split=args.val_split,
                        **settings)
    reviews = dm.reviews()
    train, test = reviews["train"], reviews["test"]
    rows, metrics, probas = [], {}, []
    if not args.no_linear:
        r = linear_baseline(train, test, args.C, args.min_df, args.max_features)
        metrics.update({"test/acc": r["acc"], "fit_s": r["fit_s"], "features": float(r["features"])})
        probas.append(torch.as_tensor(r["proba"], dtype=torch.float32))
        rows.append((f"TF-IDF 1-2 grams ({r['features']:,} features, min_df {args.min_df}, sublinear tf) + "
                     f"LogisticRegression(C={args.C:g}), {len(train[0]):,} training reviews",
                     r["acc"], f"{r['fit_s']:.1f} s fit, {r['wall_s']:.1f} s with the test"))
    if model is not None:
        from fodl.models.sentiment import probabilities_on

        t0 = time.perf_counter()
        p = probabilities_on(model, test[0])
        probas.append(p)
        acc = accuracy(p, test[1])
        metrics["lstm/acc"] = acc
        rows.append((f"fodl lstm_sentiment ({args.ckpt})", acc,
                     f"{time.perf_counter() - t0:.1f} s to classify the test set"))
    if len(probas) == 2:
        # Mesnil et al. 2014's ensemble: the two models, trained apart, vote with their probabilities
        acc = accuracy(probas[0] + probas[1], test[1])
        metrics["ensemble/acc"] = acc
        rows.append(("the two averaged (mean of their class probabilities, no weight tuned)", acc, "-"))
    if args.metrics_json:
        from fodl.train import write_metrics

        write_metrics(args.metrics_json, metrics)
    print(f"\n| model | test accuracy ({len(test[0]):,} reviews) | time |")
    print("|---|---|---|")
    for name, acc, t in rows:
        print(f"| {name} | {100 * acc:.2f}% | {t} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
