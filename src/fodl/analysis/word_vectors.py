"""Word vectors from a skip-gram checkpoint: neighbours, analogies, TensorBoard projector, t-SNE.

The logic behind ``scripts/word_vectors.py``. A skip-gram checkpoint holds the vocabulary
(``checkpoint["fodl_text"]``, plain lists) next to the weights, so nothing here reads the
corpus again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fodl.data.vectors import EMBEDDING_KEY, load_word_vectors
from fodl.errors import FodlError
from fodl.metrics.analogy import nearest_neighbours, solve_analogy
from fodl.text.vocab import Vocabulary

__all__ = ["EMBEDDING_KEY", "analogy", "export_projector", "load_word_vectors", "neighbours", "tsne_plot"]

def _ids(vocab: Vocabulary, words: list[str]) -> list[int]:
    missing = [w for w in words if w not in vocab or w in vocab.specials]
    if missing:
        raise FodlError(f"Not in the vocabulary: {', '.join(missing)} (it has {len(vocab)} words, "
                        "lowercased; rare words were left out by data.min_count / data.max_size).")
    return [vocab.index[w] for w in words]


def neighbours(vectors: torch.Tensor, vocab: Vocabulary, words: list[str], k: int = 8) -> list[str]:
    """The book's lines: ``Nearest neighbor of <word>: <k words>`` (cosine, specials left out)."""
    ids = _ids(vocab, words)
    near = nearest_neighbours(vectors, torch.tensor(ids), k, exclude=vocab.num_specials)
    return [f"Nearest neighbor of {w}: " + ", ".join(vocab.decode(n)) for w, n in zip(words, near)]


def analogy(vectors: torch.Tensor, vocab: Vocabulary, a: str, b: str, c: str, k: int = 5,
            restrict: int | None = 30000) -> list[tuple[str, float]]:
    """``a : b :: c : ?`` by 3CosAdd among the ``restrict`` most frequent words."""
    ia, ib, ic = _ids(vocab, [a, b, c])
    hi = None if restrict is None else vocab.num_specials + restrict
    ids, sims = solve_analogy(vectors, ia, ib, ic, k, restrict=hi, exclude=vocab.num_specials)
    return list(zip(vocab.decode(ids), sims))


def export_projector(vectors: torch.Tensor, vocab: Vocabulary, out_dir: str | Path,
                     n: int | None = 10000) -> Path:
    """Write the ``n`` most frequent words' vectors with their labels for TensorBoard's
    projector (``tensorboard --logdir out_dir``, PROJECTOR tab)."""
    from torch.utils.tensorboard import SummaryWriter

    lo = vocab.num_specials
    hi = len(vocab) if n is None else min(len(vocab), lo + n)
    out_dir = Path(out_dir)
    with SummaryWriter(str(out_dir)) as writer:
        writer.add_embedding(vectors[lo:hi], metadata=vocab.words[lo:hi], tag="word_vectors")
    return out_dir


def tsne_plot(vectors: torch.Tensor, vocab: Vocabulary, out: str | Path, n: int = 500,
              seed: int = 0) -> Path:
    """Book figure 6-22: t-SNE (perplexity 30, PCA init) of the ``n`` most frequent words,
    each point labelled with its word. Needs scikit-learn."""
    from fodl.analysis.embedding import tsne

    lo = vocab.num_specials
    hi = min(len(vocab), lo + n)
    xy = tsne(torch.nn.functional.normalize(vectors[lo:hi], dim=1), seed=seed)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(18, 18))
    ax.scatter(xy[:, 0], xy[:, 1], s=6)
    for (x, y), word in zip(xy, vocab.words[lo:hi]):
        ax.annotate(word, xy=(x, y), xytext=(5, 2), textcoords="offset points", ha="right",
                    va="bottom", fontsize=8)
    ax.set(title=f"t-SNE of the {hi - lo} most frequent words' skip-gram vectors", xticks=[], yticks=[])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
