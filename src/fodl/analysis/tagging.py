"""The NLTK averaged-perceptron anchor for the POS tagger, scored by the tagger's own metrics
(:func:`fodl.metrics.tagging.tagging_scores`)."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from fodl.metrics.tagging import tagging_scores


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
