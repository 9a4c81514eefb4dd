"""POS-tagging scores shared by the tagger module and the NLTK anchor: overall accuracy,
accuracy on unknown words (word forms absent from the training split), per-tag accuracy."""

from __future__ import annotations

import time
from typing import Sequence

import torch


def tagging_scores(pred: torch.Tensor, gold: torch.Tensor, unknown: torch.Tensor,
                   tag_names: Sequence[str]) -> dict:
    """``acc``, ``acc_unknown``, ``unknown_tokens``, ``tokens`` and ``per_tag``
    (tag -> (accuracy, count), by decreasing count) of predicted vs gold tag ids."""
    correct = pred == gold
    n_tags = len(tag_names)
    count = torch.bincount(gold, minlength=n_tags)
    hits = torch.bincount(gold[correct], minlength=n_tags)
    order = torch.argsort(count, descending=True, stable=True).tolist()
    per_tag = {tag_names[i]: (float(hits[i]) / max(int(count[i]), 1), int(count[i]))
               for i in order if count[i] > 0}
    return {"acc": float(correct.float().mean()) if len(gold) else float("nan"),
            "acc_unknown": float(correct[unknown].float().mean()) if unknown.any() else float("nan"),
            "unknown_tokens": int(unknown.sum()), "tokens": len(gold), "per_tag": per_tag}


def per_tag_table(per_tag: dict) -> str:
    """Markdown table of per-tag accuracy."""
    rows = ["| tag | accuracy | tokens |", "|---|---|---|"]
    rows += [f"| {t} | {a:.4f} | {n} |" for t, (a, n) in per_tag.items()]
    return "\n".join(rows)


def nltk_perceptron(train: Sequence, test: Sequence, iterations: int = 5, seed: int = 0) -> dict:
    """NLTK's averaged perceptron tagger trained on ``train`` sentences (``(words, tags)``
    pairs) from scratch (no download) and scored on ``test``: :func:`tagging_scores` plus
    ``train_s`` (wall time of training)."""
    import random

    try:
        from nltk.tag.perceptron import PerceptronTagger
    except ImportError:
        from fodl.errors import FodlError

        raise FodlError("The NLTK anchor needs nltk: pip install -e '.[bench]' (or pip install "
                        "nltk).") from None
    random.seed(seed)  # the perceptron shuffles its sentences with `random`
    tagger = PerceptronTagger(load=False)
    t0 = time.perf_counter()
    tagger.train([list(zip(w, t)) for w, t in train], nr_iter=iterations)
    train_s = time.perf_counter() - t0
    names = sorted({t for _, ts in train for t in ts} | {t for _, ts in test for t in ts})
    index = {t: i for i, t in enumerate(names)}
    known = {w for ws, _ in train for w in ws}
    pred, gold, unknown = [], [], []
    for words, tags in test:
        out = tagger.tag(list(words))
        pred += [index.get(t, -1) for _, t in out]
        gold += [index[t] for t in tags]
        unknown += [w not in known for w in words]
    scores = tagging_scores(torch.tensor(pred), torch.tensor(gold), torch.tensor(unknown), names)
    scores["train_s"] = train_s
    return scores
