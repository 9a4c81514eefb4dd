"""Parallel text for sequence-to-sequence translation (book chapter 7): Multi30k or your own pairs.

Sources (``corpus``):

- ``multi30k`` (default): Multi30k task 1 under ``data_dir/multi30k/``:
  ``{train,val,test_2016_flickr}.{en,de,fr}.gz`` (29,000 / 1,014 / 1,000 aligned captions), the
  language pair chosen with ``src`` / ``tgt`` (``de`` -> ``en`` is what papers report; ``en`` ->
  ``fr`` is the book's direction). Missing files are downloaded from the dataset's repository
  (``multi30k/dataset``, ``data/task1/raw/``) and md5-checked when ``download=true``.
- ``files``: your own pairs, per split (``train`` required; ``val`` and ``test`` optional): a
  tab-separated file of ``source<TAB>target`` lines, or a list of two line-aligned files
  ``[source_file, target_file]`` (plain or ``.gz``). Without ``val``, ``val_size`` training pairs
  are held out; without ``test``, the validation pairs are tested.

Tokenisation (documented, and stored in checkpoints for ``scripts/translate.py``): Unicode
normalised to NFC, lowercased (``lowercase=true``), then :func:`fodl.text.tokenize.word_tokenize`
(words with inner apostrophes/hyphens kept whole, numbers kept, every punctuation mark its own
token). One vocabulary per language from the training pairs (``min_count``, ``max_size``;
``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3). Target sequences are
``<bos> ... <eos>``; sources end with ``<eos>``. Pairs whose side is longer than ``max_len``
tokens are dropped from training only (evaluation keeps every pair, cut to ``max_len``).

BLEU is computed by sacreBLEU on detokenised output (:func:`detokenize`) against the raw
reference lines, case-insensitively when the text is lowercased.

Batches are ``(src (B, S), src_lengths, tgt (B, T), tgt_lengths, index)`` from
:class:`~fodl.data.buckets.LengthBucketLoader` (length buckets on the source); ``index`` is the
pair's row in its split (for the reference sentences).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch

from fodl.data.base import InMemoryDataModule, resolve_data_dir
from fodl.data.buckets import LengthBucketLoader
from fodl.data.download import cached, download
from fodl.errors import FodlError
from fodl.text.corpus import read_text_file
from fodl.text.tokenize import word_tokenize
from fodl.text.vocab import BOS, EOS, PAD, UNK, Vocabulary

log = logging.getLogger(__name__)

SPECIALS = (PAD, UNK, BOS, EOS)
LANGUAGES = ("en", "de", "fr")
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_MD5 = {
    "train.de.gz": "81ff90b99829c0cd4b1b587d394afd39", "train.en.gz": "0065d13af80720a55ca8153d126e6627",
    "train.fr.gz": "6cb767741dcad3931f966fefbc05203f", "val.de.gz": "6e0e229eb049e3fc99a1ef02fb2d5f91",
    "val.en.gz": "2b69aa9253948ac9f67e94917272dd40", "val.fr.gz": "93fc564584b7e5ba410c761ea5a1c682",
    "test_2016_flickr.de.gz": "efd67d314d98489b716b145475101932",
    "test_2016_flickr.en.gz": "ff2c0fcb4893a13bd73414306bc250ae",
    "test_2016_flickr.fr.gz": "08dc7cd4a662f31718412de95ca9bfe3",
}


# -- readers --------------------------------------------------------------------------------
def read_lines(path: str | Path) -> list[str]:
    """The lines of a text file (plain or ``.gz``, UTF-8), without their line ends."""
    path = Path(path)
    text = read_text_file(path, "Parallel text file")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_aligned(src_path: str | Path, tgt_path: str | Path) -> list[tuple[str, str]]:
    """``(source, target)`` pairs from two line-aligned files (line i of one translates line i
    of the other). Different line counts are an error naming both files."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise FodlError(
            f"The aligned files {src_path} ({len(src)} lines) and {tgt_path} ({len(tgt)} lines) "
            "have different line counts, so their sentences cannot be paired. Line i of the "
            "source file must translate line i of the target file: check that both are the same "
            "split of the same corpus and that neither has extra or missing lines.")
    if not src:
        raise FodlError(f"The aligned files {src_path} and {tgt_path} are empty.")
    return list(zip(src, tgt))


def read_tsv(path: str | Path) -> list[tuple[str, str]]:
    """``(source, target)`` pairs from ``source<TAB>target`` lines (blank lines skipped)."""
    pairs = []
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise FodlError(
                f"{path}, line {lineno}: {line[:80]!r} has {len(fields)} tab-separated field(s); "
                "a pairs file has exactly two per line (source<TAB>target). Fix the line, or give "
                "two line-aligned files instead ([source_file, target_file]).")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise FodlError(f"{path} holds no sentence pairs (source<TAB>target lines).")
    return pairs


# -- tokenisation ---------------------------------------------------------------------------
def tokenize_sentence(text: str, lowercase: bool = True) -> list[str]:
    """The tokens of one sentence: NFC, optionally lowercased, words/numbers/punctuation."""
    return word_tokenize(unicodedata.normalize("NFC", text), lowercase=lowercase, strip_html=False)


_NO_SPACE_BEFORE = re.compile(r" ([.,!?;:%)\]}»])")
_NO_SPACE_AFTER = re.compile(r"([(\[{«¿¡]) ")


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens back to a sentence: spaces joined, none before ``. , ! ? ; : % )`` or after ``(``
    (sacreBLEU re-tokenises with its own 13a rules, so this only has to be a plain sentence)."""
    text = " ".join(tokens)
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    return _NO_SPACE_AFTER.sub(r"\1", text)


class ParallelTextDataModule(InMemoryDataModule):
    """Sentence pairs for translation (see the module docstring).

    Args:
        data_dir, cache_dir: where the data is found / the tokenised pairs are cached.
        corpus: ``multi30k``, or ``files`` (then ``files`` gives the splits).
        src, tgt: the language pair (Multi30k: two of en, de, fr).
        files: ``{train: pairs.tsv | [src_file, tgt_file], val: ..., test: ...}`` (relative to
            ``data_dir`` unless absolute).
        download: fetch missing Multi30k files (md5-checked).
        lowercase: lowercase before tokenising (BLEU is then case-insensitive).
        min_count: words seen fewer times in the training pairs map to ``<unk>``.
        subword: ``"bpe"``: each word is split into byte-pair-encoding pieces learned from the
            training side of its language (:mod:`fodl.text.subword`; ``subword_vocab_size``
            pieces per language, the learned model kept in checkpoints); the vocabularies are
            then of pieces (all kept), and BLEU is scored on the re-joined words. ``None``:
            whole words.
        src_max_size, tgt_max_size: each vocabulary's size at most, specials included (the
            net's embedding / output rows: ``model.net.*_vocab_size`` follow them).
        max_len: training pairs with a side longer than this (tokens) are dropped; evaluation
            sources and targets are cut to it.
        val_size, split_seed: held-out training pairs when there is no validation split.
        bucket_batches: training batches per length-sorted pool (0: no bucketing).
        batch_size, eval_batch_size, on_device, seed, ``**kwargs``: batching
            (:class:`~fodl.data.base.InMemoryDataModule`).
    """

    def __init__(self, data_dir: str | None = None, cache_dir: str | None = None,
                 corpus: str = "multi30k", src: str = "de", tgt: str = "en",
                 files: dict[str, Any] | None = None, download: bool = True,
                 lowercase: bool = True, min_count: int = 2, src_max_size: int | None = None,
                 tgt_max_size: int | None = None,
                 max_len: int = 50, val_size: int = 1000, split_seed: int = 0,
                 bucket_batches: int = 50, batch_size: int = 128, eval_batch_size: int = 256,
                 on_device: bool = True, seed: int = 0,
                 subword: str | None = None, subword_vocab_size: int = 8000, **kwargs) -> None:
        super().__init__(batch_size, eval_batch_size, seed, on_device, False, **kwargs)
        if subword in ("none", "null", ""):
            subword = None
        if subword not in (None, "bpe"):
            raise FodlError(f"data.subword={subword!r}: choose bpe (byte-pair-encoding pieces "
                            "learned from the training side of each language) or null (words).")
        if corpus not in ("multi30k", "files"):
            raise FodlError(f"data.corpus={corpus!r}: choose multi30k or files (with data.files).")
        if corpus == "multi30k":
            for key, lang in (("src", src), ("tgt", tgt)):
                if lang not in LANGUAGES:
                    raise FodlError(f"data.{key}={lang!r}: Multi30k has {', '.join(LANGUAGES)}. "
                                    "For other languages give your own pairs (data.corpus=files).")
            if src == tgt:
                raise FodlError(f"data.src and data.tgt are both {src!r}: choose two languages.")
        elif not files or "train" not in files:
            raise FodlError("data.corpus=files needs data.files with at least a train entry: a "
                            "pairs.tsv file or [source_file, target_file].")
        if max_len < 2:
            raise FodlError(f"data.max_len={max_len}: give at least 2 tokens.")
        self.root = resolve_data_dir(data_dir)
        self.cache_dir, self.corpus, self.src, self.tgt = cache_dir, corpus, src, tgt
        self.files = dict(files or {})
        self.download, self.lowercase = download, lowercase
        self.min_count, self.max_len = min_count, max_len
        self.src_max_size, self.tgt_max_size = src_max_size, tgt_max_size
        self.val_size, self.split_seed = val_size, split_seed
        self.bucket_batches = bucket_batches
        self.subword, self.subword_vocab_size = subword, subword_vocab_size
        self.codecs: dict[str, Any] = {}  # side -> fodl.text.subword.SubwordCodec (subword=bpe)
        self.src_vocab: Vocabulary | None = None
        self.tgt_vocab: Vocabulary | None = None
        self.references: dict[str, list[str]] = {}
        self.sources: dict[str, list[str]] = {}

    # -- files ---------------------------------------------------------------------------
    def _path(self, p: str) -> Path:
        q = Path(str(p)).expanduser()
        return q if q.is_absolute() else self.root / q

    def source_files(self) -> dict[str, list[Path]]:
        """Per split, the file(s) it is read from (one TSV or two aligned files)."""
        if self.corpus == "files":
            out = {}
            for split, spec in self.files.items():
                if split not in ("train", "val", "test"):
                    raise FodlError(f"data.files.{split}: the splits are train, val and test.")
                if isinstance(spec, str):
                    out[split] = [self._path(spec)]
                elif isinstance(spec, Sequence) and len(spec) == 2:
                    out[split] = [self._path(spec[0]), self._path(spec[1])]
                else:
                    raise FodlError(f"data.files.{split}={spec!r}: give a pairs file (source<TAB>"
                                    "target lines) or a list of two aligned files [source, target].")
                for p in out[split]:
                    if not p.is_file():
                        raise FodlError(f"data.files.{split}: {p} does not exist.")
            return out
        d = self.root / "multi30k"
        out = {}
        for split, stem in MULTI30K_SPLITS.items():
            out[split] = []
            for lang in (self.src, self.tgt):
                name = f"{stem}.{lang}.gz"
                p = d / name
                if not p.is_file():
                    if not self.download:
                        raise FodlError(f"{p} is missing (data.download=false). Put Multi30k's "
                                        f"{name} there (github.com/multi30k/dataset, data/task1/raw/), "
                                        "or set data.download=true to fetch it.")
                    p = download([MULTI30K_URL.format(name=name)], p, md5=MULTI30K_MD5[name])
                out[split].append(p)
        return out

    def prepare_data(self) -> None:
        self.source_files()

    def read_pairs(self) -> dict[str, list[tuple[str, str]]]:
        """Raw ``(source, target)`` sentence pairs of ``train`` / ``val`` / ``test``."""
        files = self.source_files()
        pairs = {s: (read_tsv(f[0]) if len(f) == 1 else read_aligned(*f)) for s, f in files.items()}
        if "val" not in pairs:
            train = pairs["train"]
            if self.val_size >= len(train) or self.val_size < 1:
                raise FodlError(f"data.val_size={self.val_size}: there is no validation file, so "
                                f"it must be between 1 and {len(train) - 1} (of the {len(train)} "
                                "training pairs), or give data.files.val.")
            g = torch.Generator().manual_seed(self.split_seed)
            order = torch.randperm(len(train), generator=g).tolist()
            held = set(order[: self.val_size])
            pairs["val"] = [train[i] for i in sorted(held)]
            pairs["train"] = [p for i, p in enumerate(train) if i not in held]
        pairs.setdefault("test", pairs["val"])
        return pairs

    # -- setup ---------------------------------------------------------------------------
    def text_settings(self) -> dict[str, Any]:
        """What translating raw text needs (stored in checkpoints)."""
        settings = {"src": self.src, "tgt": self.tgt, "lowercase": self.lowercase,
                    "tokenizer": "words", "max_len": self.max_len}
        if self.codecs:
            settings["subword"] = {side: c.to_str() for side, c in self.codecs.items()}
        return settings

    def _build(self) -> dict:
        pairs = self.read_pairs()
        tok = {s: [(tokenize_sentence(a, self.lowercase), tokenize_sentence(b, self.lowercase))
                   for a, b in ps] for s, ps in pairs.items()}
        return {"tokens": tok, "raw": pairs}

    def setup(self, stage: str | None = None) -> None:
        if self.src_vocab is not None:
            return
        files = [p for ps in self.source_files().values() for p in ps]
        key = hashlib.sha1(repr((self.corpus, self.src, self.tgt, sorted(
            (k, str(v)) for k, v in self.files.items()), self.lowercase, self.val_size,
            self.split_seed, 2)).encode()).hexdigest()[:10]
        data = cached(self.cache_dir, f"parallel-{self.corpus}-{self.src}-{self.tgt}-{key}", files,
                      self._build)
        tok, raw = data["tokens"], data["raw"]
        min_count = self.min_count
        if self.subword:
            from fodl.text.subword import SubwordCodec

            for j, side in enumerate(("src", "tgt")):
                self.codecs[side] = SubwordCodec.train((p[j] for p in tok["train"]),
                                                       self.subword_vocab_size)
            tok = {split: list(zip(self.codecs["src"].split_all([a for a, _ in ps]),
                                   self.codecs["tgt"].split_all([b for _, b in ps])))
                   for split, ps in tok.items()}
            min_count = 1  # every piece BPE learned was seen at least twice
        train = [(a, b) for a, b in tok["train"] if 0 < len(a) <= self.max_len - 1
                 and 0 < len(b) <= self.max_len - 2]
        if not train:
            raise FodlError(f"No training pair has both sides between 1 and data.max_len="
                            f"{self.max_len} tokens; raise data.max_len.")
        where = f"the {self.src}-{self.tgt} training pairs"
        self.src_vocab = Vocabulary.build(Counter(w for a, _ in train for w in a), min_count,
                                          self.src_max_size, SPECIALS, UNK,
                                          source=where + f" ({self.src})")
        self.tgt_vocab = Vocabulary.build(Counter(w for _, b in train for w in b), min_count,
                                          self.tgt_max_size, SPECIALS, UNK,
                                          source=where + f" ({self.tgt})")
        keep = [i for i, (a, b) in enumerate(tok["train"]) if 0 < len(a) <= self.max_len - 1
                and 0 < len(b) <= self.max_len - 2]
        self.splits = {}
        for split in ("train", "val", "test"):
            idx = keep if split == "train" else list(range(len(tok[split])))
            src, src_len = self.src_vocab.encode_batch([tok[split][i][0] or [UNK] for i in idx],
                                                       self.max_len, eos=True)
            tgt, tgt_len = self.tgt_vocab.encode_batch([tok[split][i][1] for i in idx],
                                                       self.max_len, bos=True, eos=True)
            self.splits[split] = (src, src_len, tgt, tgt_len, torch.arange(len(idx)))
            self.references[split] = [raw[split][i][1] for i in idx]
            self.sources[split] = [raw[split][i][0] for i in idx]
        self.train_tokens = int(self.splits["train"][3].sum() - len(keep))
        unk = self.tgt_vocab.unk_id
        test_tgt = self.splits["test"][2]
        log.info("parallel text %s %s->%s: %s pairs (%d training pairs over max_len=%d dropped); "
                 "vocabularies %s %d, %s %d (min_count=%d%s); %.2f%% of test target tokens unknown",
                 self.corpus, self.src, self.tgt, {k: len(v[1]) for k, v in self.splits.items()},
                 len(tok["train"]) - len(keep), self.max_len, self.src, len(self.src_vocab),
                 self.tgt, len(self.tgt_vocab), min_count, ", BPE pieces" if self.subword else "",
                 100 * float((test_tgt == unk).sum()) / max(int(self.splits["test"][3].sum()), 1))

    # -- loaders -------------------------------------------------------------------------
    @staticmethod
    def batch_tokens(batch) -> int:
        """Predicted target tokens in a training batch (``<bos>`` excluded; for tokens/s)."""
        return int(batch[3].sum()) - len(batch[3])

    def benchmark_loader(self, device: torch.device) -> LengthBucketLoader:
        """The training batches for ``fodl.benchmark``'s plain loop (one process, ``device``)."""
        tensors = tuple(t.to(device) for t in self.splits["train"])
        return LengthBucketLoader(tensors, self.batch_size, bucket_batches=self.bucket_batches,
                                  shuffle=True, seed=self.seed)
