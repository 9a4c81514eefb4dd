"""POS-tagging scores shared by the tagger module and the NLTK anchor
(:func:`fodl.analysis.tagging.nltk_perceptron`): overall accuracy, accuracy on unknown words
(word forms absent from the training split), per-tag accuracy."""

from __future__ import annotations

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
