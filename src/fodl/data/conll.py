"""CoNLL-2000 for part-of-speech tagging (book chapter 7): readers and the window DataModule.

Two on-disk layouts under ``data_dir``:

- ``layout=pos``: the book's copy, ``conll2000_pos/pos.{train,test}.txt``: ``word TAG`` per
  line, a blank line between sentences;
- ``layout=official``: the CoNLL-2000 shared task files, ``conll2000/{train,test}.txt[.gz]``:
  ``word TAG CHUNK`` per line, blank lines between sentences. Downloaded from the task's site
  when missing (``download=true``), md5-checked against the published archives (the same
  checksums as torchtext's CoNLL2000Chunking); local copies are validated by content
  (columns on every line; with ``verify=md5`` also the md5 of the uncompressed text).

Both are the same split: 8,936 training sentences (211,727 tokens, WSJ sections 15-18) and
2,012 test sentences (47,377 tokens, section 20). The validation split is ``val_size``
sentences of the training file drawn with ``split_seed``; test is the official test set.

Every token becomes one example: its window of word/shape/suffix features
(:class:`fodl.text.window.WindowFeaturizer`, padded at sentence edges, never crossing into the
neighbouring sentence) and its tag. Validation/test examples carry a third tensor: whether the
word form is *unknown* (absent from the training split), for the unknown-word accuracy.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

import torch

from fodl.data.base import InMemoryDataModule, resolve_data_dir
from fodl.data.download import cached, download
from fodl.data.vectors import load_word_vectors
from fodl.errors import FodlError
from fodl.text.corpus import read_text_file
from fodl.text.vectors import read_word2vec
from fodl.text.vocab import Vocabulary
from fodl.text.window import WindowFeaturizer

log = logging.getLogger(__name__)

OFFICIAL_URLS = {
    "train": ["https://www.clips.uantwerpen.be/conll2000/chunking/train.txt.gz",
              "http://www.cnts.ua.ac.be/conll2000/chunking/train.txt.gz"],
    "test": ["https://www.clips.uantwerpen.be/conll2000/chunking/test.txt.gz",
             "http://www.cnts.ua.ac.be/conll2000/chunking/test.txt.gz"],
}
OFFICIAL_MD5 = {"train": "6969c2903a1f19a83569db643e43dcc8", "test": "a916e1c2d83eb3004b38fc6fcd628939"}
# md5 of the uncompressed train.txt / test.txt (a re-compressed copy has another .gz md5)
OFFICIAL_TEXT_MD5 = {"train": "2e2f24e90e20fcb910ab2251b5ed8cd0", "test": "56944df34be553b72a2a634e539a0951"}
SENTENCES = {"train": 8936, "test": 2012}
# the sentence the book tags after every epoch
BOOK_SENTENCE = "The woman, after grabbing her umbrella, went to the bank to deposit her cash."


class Sentence(NamedTuple):
    words: list[str]
    tags: list[str]


def read_conll(path: str | Path, columns: tuple[int, ...] = (2, 3)) -> list[Sentence]:
    """The sentences of a CoNLL column file (plain or ``.gz``): ``word TAG [CHUNK ...]`` per
    line, whitespace-separated, blank lines between sentences. Every line of a file must have
    the same number of columns, one of ``columns``; anything else is a ``FodlError`` naming the
    file and line."""
    path = Path(path)
    text = read_text_file(path, "CoNLL file",
                          " (with data.download=true the official file is fetched)")
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    width = None
    for lineno, line in enumerate(text.split("\n"), 1):
        fields = line.split()
        if not fields:
            if words:
                sentences.append(Sentence(words, tags))
                words, tags = [], []
            continue
        if width is None:
            if len(fields) not in columns:
                raise FodlError(
                    f"{path}, line {lineno}: {line.strip()[:80]!r} has {len(fields)} column(s); a "
                    f"CoNLL-2000 file has {' or '.join(map(str, columns))} per line (word, POS tag"
                    "[, chunk tag]) and a blank line between sentences.")
            width = len(fields)
        elif len(fields) != width:
            raise FodlError(
                f"{path}, line {lineno}: {line.strip()[:80]!r} has {len(fields)} column(s) where "
                f"the lines before have {width} (word, POS tag[, chunk tag]). Fix or remove the "
                "line (a blank line separates sentences).")
        words.append(fields[0])
        tags.append(fields[1])
    if words:
        sentences.append(Sentence(words, tags))
    if not sentences:
        raise FodlError(f"{path} holds no sentences: it is empty or not a CoNLL column file.")
    return sentences


class CoNLLDataModule(InMemoryDataModule):
    """CoNLL-2000 POS tagging as windows of token features (see the module docstring).

    Args:
        data_dir, cache_dir: where the files are / parsed windows are cached.
        layout: ``pos`` (the book's 2-column copy) or ``official`` (3-column task files).
        download: fetch the official files when missing (``layout=official``).
        verify: ``content`` (columns of every line) or ``md5`` (the published md5 of the
            uncompressed official files; ``layout=official`` only).
        val_size: training sentences held out for validation (0: validate on test).
        split_seed: which sentences (fixed, independent of the run's seed).
        left, right: context words before / after the tagged word (book: 2, 0).
        suffix_lengths: suffix features (``[]``: words only, as the book).
        lowercase, normalize_digits: word normalisation for the word vocabulary.
        min_count: training words seen fewer times map to ``<unk>`` (so ``<unk>`` is trained
            on rare words and unknown test words get a trained vector).
        max_words, max_suffixes: vocabulary sizes at most (the net's embedding rows).
        vectors: a word2vec text/binary file, or a chapter 6 skip-gram checkpoint (``.ckpt``),
            to initialise the word embeddings; its most frequent words also fill the vocabulary up to
            ``max_words``, so test words absent from training keep their pretrained vector.
        vectors_limit: read at most this many entries of ``vectors``.
        batch_size, eval_batch_size, on_device, seed, ``**kwargs``: batching
            (:class:`~fodl.data.base.InMemoryDataModule`).
    """

    def __init__(self, data_dir: str | None = None, cache_dir: str | None = None,
                 layout: str = "pos", download: bool = True, verify: str = "content",
                 val_size: int = 500, split_seed: int = 0, left: int = 1, right: int = 1,
                 suffix_lengths: list[int] | None = None, lowercase: bool = True,
                 normalize_digits: bool = True, min_count: int = 2, max_words: int = 20000,
                 max_suffixes: int = 5000, vectors: str | None = None,
                 vectors_limit: int | None = 200000, batch_size: int = 100,
                 eval_batch_size: int = 5000, on_device: bool = True, seed: int = 0,
                 **kwargs) -> None:
        super().__init__(batch_size, eval_batch_size, seed, on_device, False, **kwargs)
        if layout not in ("pos", "official"):
            raise FodlError(f"data.layout={layout!r}: choose pos (the book's conll2000_pos/"
                            "pos.{train,test}.txt) or official (conll2000/{train,test}.txt.gz).")
        if verify not in ("content", "md5"):
            raise FodlError(f"data.verify={verify!r}: choose content or md5.")
        if val_size < 0:
            raise FodlError(f"data.val_size={val_size}: give a number of sentences >= 0.")
        self.root = resolve_data_dir(data_dir)
        self.cache_dir = cache_dir
        self.layout, self.download, self.verify = layout, download, verify
        self.val_size, self.split_seed = val_size, split_seed
        self.feature_opts = dict(left=left, right=right,
                                 suffix_lengths=list(suffix_lengths if suffix_lengths is not None else [1, 2, 3]),
                                 lowercase=lowercase, normalize_digits=normalize_digits,
                                 min_count=min_count, max_words=max_words, max_suffixes=max_suffixes)
        self.vectors, self.vectors_limit = vectors, vectors_limit
        self.featurizer: WindowFeaturizer | None = None
        self.tags: Vocabulary | None = None
        self.pretrained: tuple[torch.Tensor, torch.Tensor] | None = None  # (matrix, found)
        self.validation_is_test = val_size == 0

    # -- files ---------------------------------------------------------------------------
    def files(self) -> dict[str, Path]:
        """The train and test files, downloaded first when missing (``layout=official``)."""
        if self.layout == "pos":
            d = self.root / "conll2000_pos"
            out = {s: d / f"pos.{s}.txt" for s in ("train", "test")}
            missing = [str(p) for p in out.values() if not p.is_file()]
            if missing:
                raise FodlError(
                    f"The book's CoNLL-2000 copy is missing ({', '.join(missing)}). Put pos.train.txt "
                    f"and pos.test.txt in {d}, point paths.data_dir (env FODL_DATA_DIR) at a directory "
                    "with conll2000_pos/, or use data.layout=official (downloads the task's files).")
            return out
        d = self.root / "conll2000"
        out = {}
        for split in ("train", "test"):
            plain, gz = d / f"{split}.txt", d / f"{split}.txt.gz"
            if gz.is_file() or plain.is_file():
                out[split] = gz if gz.is_file() else plain
            elif self.download:
                out[split] = download(OFFICIAL_URLS[split], gz, md5=OFFICIAL_MD5[split])
            else:
                raise FodlError(f"{gz} is missing (data.download=false). Put the CoNLL-2000 "
                                f"{split}.txt.gz there, or set data.download=true to fetch it.")
        return out

    def prepare_data(self) -> None:
        self.files()

    def _read(self, split: str, path: Path) -> list[Sentence]:
        sentences = read_conll(path, (2,) if self.layout == "pos" else (3,))
        if self.verify == "md5" and self.layout == "official":
            raw = path.read_bytes()
            raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
            got = hashlib.md5(raw).hexdigest()
            if got != OFFICIAL_TEXT_MD5[split]:
                raise FodlError(f"{path}: md5 of its text is {got}, not the official "
                                f"{OFFICIAL_TEXT_MD5[split]}. Replace it with the official file, "
                                "or use data.verify=content.")
        if len(sentences) != SENTENCES[split]:
            log.warning("%s: %d sentences, not the official %d (a different or partial copy; "
                        "read as it is)", path, len(sentences), SENTENCES[split])
        return sentences

    def sentences(self) -> dict[str, list[Sentence]]:
        """``train`` / ``val`` / ``test`` sentences (validation drawn from the training file)."""
        files = self.files()
        train = self._read("train", files["train"])
        test = self._read("test", files["test"])
        if self.val_size >= len(train):
            raise FodlError(f"data.val_size={self.val_size} takes every one of the {len(train)} "
                            "training sentences; lower it.")
        g = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(train), generator=g).tolist()
        val_idx = sorted(order[: self.val_size])
        held = set(val_idx)
        return {"train": [s for i, s in enumerate(train) if i not in held],
                "val": [train[i] for i in val_idx] if self.val_size else test,
                "test": test}

    # -- setup ---------------------------------------------------------------------------
    def _build(self) -> dict:
        sents = self.sentences()
        extra: list[str] = []
        if self.vectors:
            extra, _ = self.read_vectors()
        o = self.feature_opts
        feat = WindowFeaturizer.build([s.words for s in sents["train"]], o["left"], o["right"],
                                      o["suffix_lengths"], o["lowercase"], o["normalize_digits"],
                                      o["min_count"], o["max_words"], o["max_suffixes"], extra,
                                      source=f"the CoNLL-2000 training split ({self.layout})")
        tag_counts: dict[str, int] = {}
        for s in sents["train"]:
            for t in s.tags:
                tag_counts[t] = tag_counts.get(t, 0) + 1
        tags = Vocabulary.from_counts(list(tag_counts), list(tag_counts.values()), specials=(),
                                      unk=None, source="the training tags")
        train_forms = {w for s in sents["train"] for w in s.words}
        out = {"vocabularies": {k: v.to_dict() for k, v in feat.vocabularies().items()},
               "tags": tags.to_dict(), "settings": feat.settings()}
        for split, ss in sents.items():
            y = tags.encode([t for s in ss for t in s.tags])
            if (y < 0).any():
                bad = sorted({t for s in ss for t in s.tags if t not in tags.index})
                log.warning("%s split: tag(s) %s never occur in training; those tokens count as "
                            "errors", split, bad)
                y = y.clamp_min(0)  # never predicted right: an honest error
                out[f"{split}_unseen_tag"] = torch.tensor([t not in tags.index for s in ss for t in s.tags])
            out[split] = (feat.windows([s.words for s in ss]), y,
                          torch.tensor([w not in train_forms for s in ss for w in s.words]))
        return out

    @staticmethod
    def batch_tokens(batch) -> int:
        """Tagged tokens in a training batch (one example per token; for tokens/s)."""
        return len(batch[1])

    def read_vectors(self) -> tuple[list[str], torch.Tensor]:
        """``(words, vectors)`` of ``data.vectors``: a word2vec text/binary file, or a chapter 6
        skip-gram checkpoint (``.ckpt``: its input embeddings and vocabulary, specials left
        out); the first ``vectors_limit`` entries (most frequent first)."""
        path = self._vectors_path()
        if path.suffix != ".ckpt":
            return read_word2vec(path, limit=self.vectors_limit)
        vectors, vocab = load_word_vectors(path)
        n, end = vocab.num_specials, None if self.vectors_limit is None else vocab.num_specials + self.vectors_limit
        return vocab.words[n:end], vectors[n:end]

    def _vectors_path(self) -> Path:
        p = Path(self.vectors).expanduser()
        return p if p.is_absolute() else self.root / p

    def setup(self, stage: str | None = None) -> None:
        if self.featurizer is not None:
            return
        files = self.files()
        sources = list(files.values()) + ([self._vectors_path()] if self.vectors else [])
        opts = repr(sorted({**self.feature_opts, "layout": self.layout, "val": self.val_size,
                            "split_seed": self.split_seed, "vectors": self.vectors,
                            "limit": self.vectors_limit}.items()))
        key = hashlib.sha1(opts.encode()).hexdigest()[:10]
        data = cached(self.cache_dir, f"conll2000-{self.layout}-{key}", sources, self._build)
        vocabs = {k: Vocabulary.from_dict(v) for k, v in data["vocabularies"].items()}
        self.featurizer = WindowFeaturizer.from_state(vocabs, data["settings"])
        self.tags = Vocabulary.from_dict(data["tags"])
        x, y, unknown = data["train"]
        self.splits = {"train": (x, y), "val": tuple(data["val"]), "test": tuple(data["test"])}
        self.train_tokens = len(y)
        if self.vectors:
            self.pretrained = self._align(*self.read_vectors())
        n = {k: len(v[1]) for k, v in self.splits.items()}
        log.info("CoNLL-2000 (%s): %s tokens; %d word types in the vocabulary, %d suffixes, %d "
                 "tags; %.1f%% of test tokens are unknown words", self.layout, n,
                 len(self.featurizer.words),
                 len(self.featurizer.suffixes) if self.featurizer.suffixes else 0, len(self.tags),
                 100 * float(data["test"][2].float().mean()))

    def _align(self, words: list[str], matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows for the word vocabulary, found): a vocabulary entry takes the vector of the
        first (most frequent) file word with its normalised form."""
        feat = self.featurizer
        first: dict[str, int] = {}
        for i, w in enumerate(words):
            first.setdefault(feat.key(w), i)
        dim = matrix.shape[1] if matrix.ndim == 2 else 0
        rows = torch.zeros(len(feat.words), dim)
        hit = torch.zeros(len(feat.words), dtype=torch.bool)
        for r, k in enumerate(feat.words.words):
            i = first.get(k)
            if i is not None:
                rows[r] = matrix[i]
                hit[r] = True
        log.info("pretrained vectors %s (dim %d): %d of %d vocabulary entries found",
                 self._vectors_path(), dim, int(hit.sum()), len(feat.words))
        return rows, hit
