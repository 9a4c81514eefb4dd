"""Word-vector evaluation: the Google analogy test (``questions-words.txt``) and nearest neighbours.

The analogy evaluation follows gensim's ``KeyedVectors.evaluate_word_analogies`` (itself the
``compute-accuracy`` tool of Mikolov's word2vec):

- only the ``restrict`` most frequent words are candidates (30,000 here, the figure of
  word2vec's ``compute-accuracy`` and of gensim's older ``accuracy()``; gensim 4's
  ``evaluate_word_analogies`` defaults to 300,000, so pass ``restrict_vocab=30000`` to it for
  the same numbers); a question with a word outside them is skipped and counted as skipped;
- case-insensitive: words compare by their upper-case form, and a word with several case
  variants among the candidates stands for the most frequent one;
- 3CosAdd: the answer is the candidate nearest (cosine) to ``b - a + c`` of the unit-length
  vectors, the three question words excluded;
- accuracy per section and in total over the questions evaluated.

Everything is vectorised: one matrix product per chunk of questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from fodl.errors import FodlError


@dataclass
class AnalogyQuestions:
    """A question file: section names and, per question, its section and its four words."""

    sections: list[str]
    section_of: list[int]
    words: list[tuple[str, str, str, str]]


def read_analogies(path: str | Path) -> AnalogyQuestions:
    """Parse a word2vec question file: ``: section`` headers, then ``a b c d`` lines."""
    path = Path(path)
    if not path.is_file():
        raise FodlError(f"Analogy questions {path} do not exist. Give the path of word2vec's "
                        "questions-words.txt (data.analogies=...), or data.analogies=null to "
                        "train without the analogy evaluation.")
    sections: list[str] = []
    section_of: list[int] = []
    words: list[tuple[str, str, str, str]] = []
    for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.startswith(":"):
            sections.append(line[1:].strip())
            continue
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4 or not sections:
            what = "no ': section' header before it" if not sections else f"{len(parts)} words, not 4"
            raise FodlError(f"{path}, line {no}: {what} ({line.strip()[:60]!r}). It is not a word2vec "
                            "analogy file (': section' lines, then 'a b c d' lines).")
        section_of.append(len(sections) - 1)
        words.append(tuple(parts))  # type: ignore[arg-type]
    if not words:
        raise FodlError(f"{path} holds no analogy questions.")
    return AnalogyQuestions(sections, section_of, words)


@dataclass
class AnalogySet:
    """Questions encoded against a vocabulary, ready for :func:`evaluate_analogies`.

    ``candidates``: vocabulary ids of the words that may answer (the ``restrict`` most frequent);
    ``canon``: for each candidate, the position (in ``candidates``) of its most frequent case
    variant; ``questions``: (Q, 4) positions in ``candidates`` (canonical), of the questions
    whose four words are all candidates; ``section``: (Q,) section index of each;
    ``sections``: names; ``asked``: questions per section in the file.
    """

    candidates: torch.Tensor
    canon: torch.Tensor
    questions: torch.Tensor
    section: torch.Tensor
    sections: list[str]
    asked: list[int]

    @property
    def evaluated(self) -> list[int]:
        return torch.bincount(self.section, minlength=len(self.sections)).tolist()


def encode_analogies(qs: AnalogyQuestions, words: Sequence[str], restrict: int = 30000,
                     case_insensitive: bool = True, skip: int = 0) -> AnalogySet:
    """Encode ``qs`` against a vocabulary whose ``words`` are in decreasing frequency (ids
    ``0 .. len-1``); the first ``skip`` ids (specials such as ``<unk>``) are never candidates."""
    ids = list(range(skip, min(len(words), skip + restrict)))
    key = (lambda w: w.upper()) if case_insensitive else (lambda w: w)
    first: dict[str, int] = {}
    canon = []
    for pos, i in enumerate(ids):
        canon.append(first.setdefault(key(words[i]), pos))
    rows, section = [], []
    for s, quad in zip(qs.section_of, qs.words):
        pos = [first.get(key(w)) for w in quad]
        if None not in pos:
            rows.append(pos)
            section.append(s)
    asked = [0] * len(qs.sections)
    for s in qs.section_of:
        asked[s] += 1
    return AnalogySet(torch.tensor(ids, dtype=torch.long), torch.tensor(canon, dtype=torch.long),
                      torch.tensor(rows, dtype=torch.long).view(-1, 4),
                      torch.tensor(section, dtype=torch.long), list(qs.sections), asked)


@torch.no_grad()
def analogy_predictions(vectors: torch.Tensor, canon: torch.Tensor, questions: torch.Tensor,
                        chunk: int = 512) -> torch.Tensor:
    """For each question ``(a, b, c, d)`` (positions in ``vectors``' rows), the canonical
    position of the row nearest to ``b - a + c`` (unit-length vectors, cosine), excluding rows
    that are a case variant of ``a``, ``b`` or ``c``."""
    unit = F.normalize(vectors.float(), dim=1)
    variants = not torch.equal(canon, torch.arange(len(canon), device=canon.device))
    out = []
    for q in questions.split(chunk):
        scores = (unit[q[:, 1]] - unit[q[:, 0]] + unit[q[:, 2]]) @ unit.T
        if variants:  # exclude every case variant of a question word
            c = canon.unsqueeze(0)
            scores.masked_fill_((c == q[:, 0:1]) | (c == q[:, 1:2]) | (c == q[:, 2:3]), float("-inf"))
        else:
            scores.scatter_(1, q[:, :3], float("-inf"))
        out.append(canon[scores.argmax(1)])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=vectors.device)


def analogy_hits(embeddings: torch.Tensor, candidates: torch.Tensor, canon: torch.Tensor,
                 questions: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Bool per question: whether 3CosAdd over ``embeddings[candidates]`` answers ``d``."""
    pred = analogy_predictions(embeddings[candidates], canon, questions, chunk)
    return pred == questions[:, 3]


def evaluate_analogies(embeddings: torch.Tensor, aset: AnalogySet) -> dict:
    """Accuracy per section and in total. Returns ``{"total": acc, "correct": n, "evaluated":
    n, "asked": n, "sections": [{"section", "correct", "evaluated", "asked", "acc"}, ...]}``
    (``acc`` is None for a section with no question evaluated)."""
    dev = embeddings.device
    hits = analogy_hits(embeddings, aset.candidates.to(dev), aset.canon.to(dev), aset.questions.to(dev))
    correct = torch.bincount(aset.section.to(dev), weights=hits.double(),
                             minlength=len(aset.sections)).long().tolist()
    return summarize(aset.sections, correct, aset.evaluated, aset.asked)


def summarize(sections: Sequence[str], correct: Sequence[int], evaluated: Sequence[int],
              asked: Sequence[int]) -> dict:
    """The result dict of :func:`evaluate_analogies` from per-section counts."""
    rows = [{"section": s, "correct": int(c), "evaluated": int(e), "asked": int(a),
             "acc": (c / e) if e else None} for s, c, e, a in zip(sections, correct, evaluated, asked)]
    n_ok, n_ev = sum(correct), sum(evaluated)
    return {"total": n_ok / n_ev if n_ev else 0.0, "correct": int(n_ok), "evaluated": int(n_ev),
            "asked": int(sum(asked)), "sections": rows}


def format_analogies(result: dict) -> str:
    """A Markdown table: section, accuracy, correct / evaluated, questions skipped."""
    lines = ["| section | accuracy | correct / evaluated | skipped (word not in vocabulary) |",
             "|---|---|---|---|"]
    for r in result["sections"] + [{"section": "**total**", "acc": result["total"] if result["evaluated"] else None,
                                     "correct": result["correct"], "evaluated": result["evaluated"],
                                     "asked": result["asked"]}]:
        acc = "-" if r["acc"] is None else f"{100 * r['acc']:.1f}%"
        lines.append(f"| {r['section']} | {acc} | {r['correct']} / {r['evaluated']} | "
                     f"{r['asked'] - r['evaluated']} of {r['asked']} |")
    return "\n".join(lines)


@torch.no_grad()
def nearest_neighbours(embeddings: torch.Tensor, query: torch.Tensor, k: int = 8,
                       exclude: int = 0) -> torch.Tensor:
    """(len(query), k) ids of the rows most cosine-similar to each query row, the query itself
    left out (as the book's ``argsort()[1:top_match+1]``) and ids below ``exclude`` (specials)
    never returned."""
    unit = F.normalize(embeddings.float(), dim=1)
    sims = unit[query] @ unit.T
    sims[torch.arange(len(query), device=sims.device), query] = float("-inf")
    if exclude:
        sims[:, :exclude] = float("-inf")
    return sims.topk(min(k, unit.shape[0] - 1 - exclude), dim=1).indices


@torch.no_grad()
def solve_analogy(embeddings: torch.Tensor, a: int, b: int, c: int, k: int = 5,
                  restrict: int | None = None, exclude: int = 0) -> tuple[list[int], list[float]]:
    """``a : b :: c : ?`` by 3CosAdd: the ``k`` ids nearest to ``b - a + c`` (a, b, c excluded),
    among the ids below ``restrict`` (and not below ``exclude``), with their cosines."""
    unit = F.normalize(embeddings[:restrict].float(), dim=1)
    target = F.normalize(unit[b] - unit[a] + unit[c], dim=0)
    sims = unit @ target
    sims[[a, b, c]] = float("-inf")
    sims[:exclude] = float("-inf")
    top = sims.topk(k)
    return top.indices.tolist(), top.values.tolist()
