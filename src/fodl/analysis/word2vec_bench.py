"""fodl's skip-gram against gensim's ``Word2Vec(sg=1)``: same corpus file, same settings.

The logic behind ``scripts/bench_word2vec.py``. The corpus is tokenised once by fodl's toolkit
and written as a plain-text file (one document per line, words separated by spaces); both
systems train on that file, so they see the same tokens (fodl's tokeniser is the identity on
it). Timed: the training passes only (gensim's ``train``, fodl's ``trainer.fit`` without
validation), not reading the corpus or building the vocabulary. Words per second count every
corpus token of every epoch, out-of-vocabulary ones included, as gensim reports them. Both
sets of vectors are scored by the same analogy evaluator (and gensim's by gensim's own, which
must agree).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fodl.errors import FodlError
from fodl.metrics.analogy import (
    AnalogySet,
    encode_analogies,
    evaluate_analogies,
    read_analogies,
)
from fodl.text.corpus import encode_corpus


@dataclass
class Settings:
    """What both systems are given (word2vec's names)."""

    dim: int = 128
    window: int = 5
    negative: int = 5
    min_count: int = 5
    max_vocab: int = 30000
    sample: float = 1e-3
    epochs: int = 5
    threads: int = 2
    seed: int = 1


@dataclass
class Result:
    name: str
    vocab: int
    train_s: float
    words_per_s: float
    analogy: dict
    cpu_s: float = float("nan")  # CPU seconds of the process (all its threads) while training
    extra: dict = field(default_factory=dict)


def write_token_file(source: str | Path, out: Path, members=None, strip_html: bool = False,
                     max_documents: int | None = None) -> tuple[Path, int]:
    """Tokenise ``source`` with fodl's toolkit and write one document per line to ``out``;
    returns ``(out, number of tokens)``."""
    enc = encode_corpus(source, members, strip_html=strip_html, max_documents=max_documents)
    words = enc["words"]
    ids = enc["ids"].tolist()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        start = 0
        for n in enc["doc_lengths"].tolist():
            f.write(" ".join(words[i] for i in ids[start : start + n]) + "\n")
            start += n
    return out, len(ids)


def _load() -> float:
    return os.getloadavg()[0]


class _Clock:
    """Wall and process CPU seconds of a block, and the mean 1-minute load around it."""

    def __enter__(self):
        self.load, self.cpu, self.t0 = _load(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu
        self.load = (self.load + _load()) / 2


def run_gensim(corpus: Path, s: Settings, questions: Path, restrict: int, mode: str = "iterable") -> Result:
    """gensim 4's skip-gram with negative sampling on ``corpus``; gensim's defaults otherwise
    (alpha 0.025 -> 0.0001 linearly, dynamic window)."""
    try:
        from gensim.models import Word2Vec
        from gensim.models.word2vec import LineSentence
    except ImportError:
        raise FodlError("gensim is not installed: pip install -e '.[bench]' (or pip install "
                        "gensim==4.4.0), or run with --skip-gensim.") from None
    model = Word2Vec(sg=1, hs=0, vector_size=s.dim, window=s.window, negative=s.negative,
                     min_count=s.min_count, max_final_vocab=s.max_vocab, sample=s.sample,
                     workers=s.threads, epochs=s.epochs, seed=s.seed)
    if mode == "corpus_file":
        model.build_vocab(corpus_file=str(corpus))
        with _Clock() as clock:
            model.train(corpus_file=str(corpus), total_words=model.corpus_total_words,
                        total_examples=model.corpus_count, epochs=s.epochs)
    else:
        sentences = LineSentence(str(corpus))
        model.build_vocab(sentences)
        with _Clock() as clock:
            model.train(sentences, total_examples=model.corpus_count, epochs=s.epochs)
    wv = model.wv
    aset = encode_analogies(read_analogies(questions), wv.index_to_key, restrict)
    ours = evaluate_analogies(torch.from_numpy(wv.vectors), aset)
    own_score, _ = wv.evaluate_word_analogies(str(questions), restrict_vocab=restrict)
    return Result(f"gensim {__import__('gensim').__version__} Word2Vec(sg=1), {mode}, {s.threads} workers",
                  len(wv), clock.wall, model.corpus_total_words * s.epochs / clock.wall, ours,
                  clock.cpu, {"gensim_evaluator_total": own_score, "load": clock.load})


def run_fodl(corpus: Path, s: Settings, questions: Path, restrict: int,
             overrides: list[str] | None = None) -> Result:
    """fodl's ``experiment=fast/skipgram`` with ``s``'s settings on ``corpus``."""
    from fodl.config import compose_run
    from fodl.train import build

    torch.set_num_threads(s.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run([
            "experiment=fast/skipgram", "data=corpus", f"data.corpus={corpus}",
            f"data.analogies={questions}", f"data.analogy_restrict={restrict}",
            f"paths.root_dir={tmp}", f"paths.cache_dir={tmp}/cache",
            f"model.net.embedding_dim={s.dim}", f"data.window={s.window}",
            f"model.negatives_per_pair={s.negative}", f"data.min_count={s.min_count}",
            f"data.max_size={s.max_vocab}", f"data.subsample={s.sample}",
            f"trainer.max_epochs={s.epochs}", f"seed={s.seed}", "trainer.accelerator=cpu",
            "callbacks=none", "logger=none", "test=false", "trainer.num_sanity_val_steps=0",
            "+trainer.limit_val_batches=0", "+trainer.enable_checkpointing=false",
            "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            *(overrides or [])], Path(tmp) / "run")
        datamodule, module, trainer = build(cfg)
        datamodule.setup("fit")
        with _Clock() as clock:
            trainer.fit(module, datamodule=datamodule)
        aset: AnalogySet = datamodule.analogy
        result = evaluate_analogies(module.net.in_embed.weight.detach(), aset)
    name = (f"fodl skip-gram (experiment=fast/skipgram, {cfg.model.loss}, "
            f"{cfg.optimizer._target_.rsplit('.', 1)[-1]}), {s.threads} torch threads")
    return Result(name, len(datamodule.vocab), clock.wall, datamodule.corpus_tokens * s.epochs / clock.wall,
                  result, clock.cpu, {"load": clock.load})


def format_results(results: list[Result], s: Settings, tokens: int, restrict: int) -> str:
    lines = [f"corpus: {tokens:,} tokens; dim {s.dim}, window {s.window}, negative {s.negative}, "
             f"min_count {s.min_count}, vocabulary <= {s.max_vocab}, sample {s.sample}, "
             f"{s.epochs} epochs, {s.threads} threads; analogies among the {restrict} most "
             "frequent words", "",
             "| system | vocabulary | train s (wall) | words/s | CPU s | words per CPU s | "
             "analogy accuracy (total) | evaluated | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        note = ""
        if "gensim_evaluator_total" in r.extra:
            note = f" (gensim's evaluator: {100 * r.extra['gensim_evaluator_total']:.2f}%)"
        lines.append(f"| {r.name} | {r.vocab:,} | {r.train_s:.1f} | {r.words_per_s:,.0f} | "
                     f"{r.cpu_s:.1f} | {r.words_per_s * r.train_s / r.cpu_s:,.0f} | "
                     f"{100 * r.analogy['total']:.2f}%{note} | {r.analogy['evaluated']:,} of "
                     f"{r.analogy['asked']:,} | {r.extra.get('load', float('nan')):.1f} |")
    lines += ["", "| section | " + " | ".join(r.name.split(" (")[0].split(",")[0] for r in results) + " |",
              "|---|" + "---|" * len(results)]
    for i, sec in enumerate(results[0].analogy["sections"]):
        cells = []
        for r in results:
            row = r.analogy["sections"][i]
            cells.append("-" if row["acc"] is None else
                         f"{100 * row['acc']:.1f}% ({row['correct']}/{row['evaluated']})")
        lines.append(f"| {sec['section']} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"{100 * r.analogy['total']:.2f}% ({r.analogy['correct']}/{r.analogy['evaluated']})"
        for r in results) + " |")
    return "\n".join(lines)
