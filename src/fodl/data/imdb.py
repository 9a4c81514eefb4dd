"""IMDB Large Movie Review Dataset (Maas et al. 2011) for the chapter 7 sentiment LSTM.

Accepted under ``data_dir`` (or ``source``, a path): the ``aclImdb`` folder
(``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``), the official ``aclImdb_v1.tar.gz``,
or any tar archive with that layout (e.g. ``imdb/aclImdb_labelled_50k.tar.gz``). Archives are
read in place, member by member, without extracting their 100,000 small files; a member whose
name is absolute or climbs with ``..`` (or a link / device) makes the archive refused, as
extraction would refuse it. When nothing is found and ``download=true``, the official archive is
downloaded from Stanford and md5-verified (``fodl.data.download``).

The reviews are tokenised (``fodl.text``: ``words`` keeps punctuation, numbers and
contractions, removes ``<br />``) and numericalised once; the result is cached, keyed by the
source files and the tokenisation settings. The vocabulary (``max_size`` most frequent words of
the training reviews, ``<pad>`` = 0 and ``<unk>`` = 1 included: the book's 30,000) and the cut
to ``max_len`` tokens (the book's 500, keeping the beginning) are applied at setup, so changing
them does not re-tokenise. 25,000 training reviews (``val_size`` of them held out for
validation, drawn with ``split_seed``) and 25,000 test reviews; label 1 = positive.

Batches are ``(tokens, lengths, labels)`` from :class:`~fodl.data.buckets.LengthBucketLoader`:
sorted into length buckets and cut to their longest review, so they are dense.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
from array import array
from pathlib import Path
from typing import Any, Iterator

import torch

from fodl.data.base import InMemoryDataModule, resolve_data_dir
from fodl.data.buckets import LengthBucketLoader
from fodl.data.download import cached, check_tar_members, download, reading_archive
from fodl.errors import FodlError
from fodl.text.corpus import TAR_SUFFIXES, decode
from fodl.text.tokenize import get_tokenizer
from fodl.text.vocab import PAD, UNK, Vocabulary

log = logging.getLogger(__name__)

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
LABELS = ("neg", "pos")
REVIEW_RE = re.compile(r"(?:^|/)(train|test)/(pos|neg)/[^/]+\.txt$")
ARCHIVES = ("aclImdb_v1.tar.gz", "aclImdb_labelled_50k.tar.gz")
VAL_SPLITS = ("random", "films")


def find_source(root: Path) -> Path | None:
    """The first of ``root/imdb/aclImdb/``, ``root/aclImdb/``, ``root/imdb/<archive>`` that exists."""
    for p in (root / "imdb" / "aclImdb", root / "aclImdb"):
        if (p / "train").is_dir() and (p / "test").is_dir():
            return p
    for name in ARCHIVES:
        if (root / "imdb" / name).is_file():
            return root / "imdb" / name
    return None


def iter_reviews(source: str | Path) -> Iterator[tuple[str, str, int, str]]:
    """``(split, name, label, text)`` of every review under an aclImdb folder or archive, in
    sorted order of their paths (files other than ``{train,test}/{pos,neg}/*.txt`` skipped)."""
    source = Path(source)
    if source.is_dir():
        found = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), source).replace(os.sep, "/")
                m = REVIEW_RE.search(rel)
                if m:
                    found.append((rel, m))
        for rel, m in sorted(found, key=lambda t: t[0]):
            path = source / rel
            yield m.group(1), rel, LABELS.index(m.group(2)), decode(str(path), path.read_bytes())
    elif source.name.endswith(TAR_SUFFIXES):
        with reading_archive(source), tarfile.open(source, "r:*") as tar:
            members = tar.getmembers()
            check_tar_members(source, members)
            wanted = [(m, REVIEW_RE.search(m.name)) for m in members if m.isfile()]
            for m, match in sorted(((m, x) for m, x in wanted if x), key=lambda t: t[0].name):
                data = tar.extractfile(m).read()
                yield match.group(1), m.name, LABELS.index(match.group(2)), decode(f"{source}:{m.name}", data)
    else:
        raise FodlError(f"IMDB source {source} is neither an aclImdb folder nor a tar archive "
                        f"({', '.join(TAR_SUFFIXES)}).")


URLS_RE = re.compile(r"(?:^|/)train/urls_(pos|neg)\.txt$")
FILM_RE = re.compile(r"/title/(tt\d+)")


def train_films(source: str | Path) -> list[str]:
    """The film (IMDb title id, ``tt...``) of every training review, in the order
    :func:`iter_reviews` yields them: line ``i`` of ``train/urls_{pos,neg}.txt`` is the page of
    the film that review ``train/{pos,neg}/<i>_<rating>.txt`` is about (aclImdb's README).
    Reads names and the two url lists only, not the reviews."""
    source = Path(source)
    names: list[str] = []
    urls: dict[str, list[str]] = {}
    if source.is_dir():
        for root, dirs, files in os.walk(source):
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), source).replace(os.sep, "/")
                if (m := REVIEW_RE.search(rel)) and m.group(1) == "train":
                    names.append(rel)
                elif m := URLS_RE.search(rel):
                    urls[m.group(1)] = (source / rel).read_text(encoding="utf-8").splitlines()
    else:
        with reading_archive(source), tarfile.open(source, "r:*") as tar:
            members = tar.getmembers()
            check_tar_members(source, members)
            for member in members:
                if not member.isfile():
                    continue
                if (m := REVIEW_RE.search(member.name)) and m.group(1) == "train":
                    names.append(member.name)
                elif m := URLS_RE.search(member.name):
                    urls[m.group(1)] = tar.extractfile(member).read().decode("utf-8").splitlines()
    films = []
    for name in sorted(names):
        label, file = name.rsplit("/", 2)[-2:]
        lines = urls.get(label)
        i = int(file.split("_", 1)[0]) if file.split("_", 1)[0].isdigit() else -1
        film = FILM_RE.search(lines[i]) if lines is not None and 0 <= i < len(lines) else None
        if film is None:
            raise FodlError(
                f"data.val_split=films needs the film of every training review, and {source} "
                + (f"has no train/urls_{label}.txt" if lines is None else
                   f"gives none for {name} (line {i + 1} of train/urls_{label}.txt)")
                + ": aclImdb's url lists are needed. Use the full aclImdb archive, or "
                "data.val_split=random.")
        films.append(film.group(1))
    return films


def encode_reviews(source: Path, tokenizer: str = "words", lowercase: bool = True) -> dict:
    """Every review tokenised into one flat int32 tensor of word ranks (plain data, cacheable).

    ``words``: every word type, the training reviews' by decreasing count (ties: first seen)
    then those only in test; ``counts``: their counts in the training reviews; ``ids``: the
    rank of each token; ``lengths``, ``labels``, ``split`` (0 train, 1 test) per review;
    ``train_types``: how many of ``words`` occur in training.
    """
    tok = get_tokenizer(tokenizer)
    kwargs: dict[str, Any] = {} if tokenizer == "treebank" else {"lowercase": lowercase,
                                                                  "strip_html": True}
    reviews = {"train": [], "test": []}
    for split, _name, label, text in iter_reviews(source):
        reviews[split].append((label, text))
    for split, rs in reviews.items():
        if not rs:
            raise FodlError(f"{source} has no {split} reviews ({split}/pos/*.txt, {split}/neg/*.txt): "
                            "not the aclImdb layout.")
        if len({label for label, _ in rs}) < 2:
            raise FodlError(f"{source}: the {split} reviews are all of one class; both {split}/pos "
                            f"and {split}/neg are needed.")
    index: dict[str, int] = {}
    setdefault = index.setdefault
    ids, lengths, labels, splits = array("i"), [], [], []
    train_tokens = 0
    for s, split in enumerate(("train", "test")):
        for label, text in reviews[split]:
            toks = tok(text, **kwargs)
            ids.extend([setdefault(w, len(index)) for w in toks])
            lengths.append(len(toks))
            labels.append(label)
            splits.append(s)
        if split == "train":
            train_types, train_tokens = len(index), len(ids)
    first_seen = torch.frombuffer(ids, dtype=torch.int32).long() if ids else torch.zeros(0, dtype=torch.long)
    counts = torch.bincount(first_seen[:train_tokens], minlength=len(index))
    # training types by decreasing count (stable: ties in first-seen order), then test-only types
    order = torch.cat([torch.sort(counts[:train_types], descending=True, stable=True).indices,
                       torch.arange(train_types, len(index))])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    words = list(index)
    return {"words": [words[i] for i in order.tolist()], "counts": counts[order],
            "train_types": train_types, "ids": rank[first_seen].to(torch.int32),
            "lengths": torch.tensor(lengths, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "split": torch.tensor(splits, dtype=torch.int8)}


def cut_and_pad(ids: torch.Tensor, lengths: torch.Tensor, max_len: int,
                unk_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (N, L) int32, lengths)``: each sequence of the flat ``ids`` (consecutive, of
    ``lengths``) cut to its first ``max_len`` ids and padded with 0; ``L`` = the longest cut
    length. An empty sequence becomes one ``unk_id`` (a review with no word still has a length)."""
    starts = torch.cumsum(lengths, 0) - lengths
    cut = lengths.clamp(max=max_len)
    width = max(int(cut.max()) if len(cut) else 1, 1)
    pos = torch.arange(width)
    real = pos.unsqueeze(0) < cut.unsqueeze(1)
    where = (starts.unsqueeze(1) + pos).clamp(max=max(len(ids) - 1, 0))
    tokens = torch.where(real, ids[where] if len(ids) else torch.zeros_like(where, dtype=ids.dtype),
                         torch.zeros((), dtype=ids.dtype)).to(torch.int32)
    empty = cut == 0
    if empty.any():
        tokens[empty, 0] = unk_id
        cut = cut.clamp_min(1)
    return tokens, cut


class IMDBDataModule(InMemoryDataModule):
    """IMDB sentiment (see the module docstring).

    Args:
        data_dir, cache_dir: where the data is found / the tokenised reviews are cached.
        source: an aclImdb folder or archive (relative to ``data_dir`` unless absolute); None:
            the first of ``aclImdb/``, ``imdb/aclImdb/``, ``imdb/aclImdb_v1.tar.gz``,
            ``imdb/aclImdb_labelled_50k.tar.gz``, else the official archive is downloaded
            (``download=true``) to ``data_dir/imdb/aclImdb_v1.tar.gz``.
        tokenizer, lowercase: ``fodl.text`` tokenizer name (``words``, ``letters``, ``treebank``).
        max_len: keep the first ``max_len`` tokens of a review (book: 500).
        max_size, min_count: the vocabulary (book: 30,000 words, specials included).
        val_size, split_seed: training reviews held out for validation.
        val_split: ``random`` (any ``val_size`` training reviews) or ``films``: whole films
            held out, drawn until they hold ``val_size`` reviews or more (:func:`train_films`):
            the reviews of one film share its names and plot words, so a random split
            validates on films the model has read about, which the test set (other films)
            never does.
        bucket_batches: training batches per length-sorted pool (0: no bucketing).
        batch_size (book: 32), eval_batch_size, on_device, seed, ``**kwargs``: batching
            (:class:`~fodl.data.base.InMemoryDataModule`).
    """

    def __init__(self, data_dir: str | None = None, cache_dir: str | None = None,
                 source: str | None = None, download: bool = True, tokenizer: str = "words",
                 lowercase: bool = True, max_len: int = 500, max_size: int = 30000,
                 min_count: int = 1, val_size: int = 2500, split_seed: int = 0,
                 val_split: str = "random",
                 bucket_batches: int = 50, batch_size: int = 32, eval_batch_size: int = 256,
                 on_device: bool = True, seed: int = 0, **kwargs) -> None:
        super().__init__(batch_size, eval_batch_size, seed, on_device, False, **kwargs)
        get_tokenizer(tokenizer)  # an unknown name fails here, before any reading
        if max_len < 1:
            raise FodlError(f"data.max_len={max_len}: keep at least 1 token per review.")
        if val_size < 0:
            raise FodlError(f"data.val_size={val_size}: give a number of reviews >= 0.")
        self.root = resolve_data_dir(data_dir)
        self.cache_dir, self.source, self.download = cache_dir, source, download
        self.tokenizer, self.lowercase = tokenizer, lowercase
        self.max_len, self.max_size, self.min_count = max_len, max_size, min_count
        if val_split not in VAL_SPLITS:
            raise FodlError(f"data.val_split={val_split!r}: choose one of {', '.join(VAL_SPLITS)}.")
        self.val_size, self.split_seed, self.val_split = val_size, split_seed, val_split
        self.bucket_batches = bucket_batches
        self.vocab: Vocabulary | None = None
        self.validation_is_test = val_size == 0

    # -- files ---------------------------------------------------------------------------
    def source_path(self) -> Path:
        if self.source:
            p = Path(self.source).expanduser()
            p = p if p.is_absolute() else self.root / p
            if not p.exists():
                raise FodlError(f"data.source={self.source}: {p} does not exist. Give an aclImdb "
                                "folder or archive, or data.source=null to look in data_dir/imdb.")
            return p
        found = find_source(self.root)
        if found is not None:
            return found
        dest = self.root / "imdb" / ARCHIVES[0]
        if not self.download:
            raise FodlError(f"No IMDB data under {self.root} (looked for imdb/aclImdb/, aclImdb/, "
                            f"imdb/{ARCHIVES[0]}, imdb/{ARCHIVES[1]}; data.download=false). Put "
                            "one there or set data.download=true.")
        return download([URL], dest, md5=MD5)

    def prepare_data(self) -> None:
        self.source_path()

    # -- setup ---------------------------------------------------------------------------
    def text_settings(self) -> dict[str, Any]:
        """What inference needs to treat raw text as training did (stored in checkpoints)."""
        return {"tokenizer": self.tokenizer, "lowercase": self.lowercase, "max_len": self.max_len,
                "labels": list(LABELS)}

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        path = self.source_path()
        key = hashlib.sha1(repr((self.tokenizer, self.lowercase)).encode()).hexdigest()[:10]
        raw = cached(self.cache_dir, f"imdb-{path.name}-{key}", [path],
                     lambda: encode_reviews(path, self.tokenizer, self.lowercase))
        t = raw["train_types"]
        self.vocab = Vocabulary.from_counts(raw["words"][:t], raw["counts"][:t], self.min_count,
                                            self.max_size, (PAD, UNK), UNK,
                                            source=f"the IMDB training reviews ({path})")
        kept = len(self.vocab) - self.vocab.num_specials
        remap = torch.full((len(raw["words"]),), self.vocab.unk_id, dtype=torch.int32)
        remap[:kept] = torch.arange(kept, dtype=torch.int32) + self.vocab.num_specials
        ids = remap[raw["ids"].long()]
        tokens, lengths = cut_and_pad(ids, raw["lengths"], self.max_len, self.vocab.unk_id)
        labels, split = raw["labels"], raw["split"]
        train = (split == 0).nonzero().squeeze(1)
        test = (split == 1).nonzero().squeeze(1)
        if self.val_size >= len(train):
            raise FodlError(f"data.val_size={self.val_size} takes every one of the {len(train)} "
                            "training reviews; lower it.")
        g = torch.Generator().manual_seed(self.split_seed)
        if self.val_split == "films" and self.val_size:
            val, train = self._film_split(path, train, g)
        else:
            perm = train[torch.randperm(len(train), generator=g)]
            val, train = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values

        def take(idx):
            lens = lengths[idx]
            return (tokens[idx, : max(int(lens.max()), 1)].contiguous(), lens, labels[idx])

        self.splits = {"train": take(train), "val": take(val) if self.val_size else take(test),
                       "test": take(test)}
        self._raw = raw
        self.split_index = {"train": train, "val": val if self.val_size else test, "test": test}
        self.train_tokens = int(self.splits["train"][1].sum())
        n = {k: len(v[2]) for k, v in self.splits.items()}
        log.info("IMDB %s: %s reviews; vocabulary %d (max_size=%s) of %d training word types; "
                 "%d training tokens after the cut to %d (%.1f%% of reviews cut); %.2f%% of test "
                 "tokens unknown", path, n, len(self.vocab), self.max_size, t, self.train_tokens,
                 self.max_len, 100 * float((raw["lengths"] > self.max_len).float().mean()),
                 100 * float((self.splits["test"][0] == self.vocab.unk_id).sum()) /
                 max(int(self.splits["test"][1].sum()), 1))

    def _film_split(self, path: Path, train: torch.Tensor,
                    g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(val, train)`` indices: films in random order, each with all its reviews, until
        ``val_size`` reviews are held out."""
        films = train_films(path)
        if len(films) != len(train):
            raise FodlError(f"{path}: {len(films)} training reviews have a film, {len(train)} were "
                            "read; the archive changed while reading it? Run again.")
        names = sorted(set(films))
        number = {n: i for i, n in enumerate(names)}
        film_of = torch.tensor([number[f] for f in films])
        sizes = torch.bincount(film_of, minlength=len(names))
        order = torch.randperm(len(names), generator=g)
        taken = int((torch.cumsum(sizes[order], 0) < self.val_size).sum()) + 1
        if taken >= len(names):
            raise FodlError(f"data.val_size={self.val_size} with data.val_split=films takes every one "
                            f"of the {len(names)} films of the training reviews; lower it.")
        held = torch.zeros(len(names), dtype=torch.bool)
        held[order[:taken]] = True
        out = held[film_of]
        return train[out], train[~out]

    def reviews(self) -> dict[str, tuple[list[list[str]], torch.Tensor]]:
        """Each split's reviews as ``(token lists, labels)``: the same reviews as
        :attr:`splits`, tokenised the same way, but whole (no cut to ``max_len``) and with every
        word (no vocabulary): what a bag-of-n-grams baseline reads
        (``scripts/bench_sentiment.py``)."""
        self.setup()
        raw = self._raw
        words, ids, lengths = raw["words"], raw["ids"].tolist(), raw["lengths"].tolist()
        starts = [0] * len(lengths)
        for i in range(1, len(lengths)):
            starts[i] = starts[i - 1] + lengths[i - 1]
        out = {}
        for name, idx in self.split_index.items():
            seqs = [[words[w] for w in ids[starts[j] : starts[j] + lengths[j]]] for j in idx.tolist()]
            out[name] = (seqs, raw["labels"][idx])
        return out

    # -- loaders -------------------------------------------------------------------------
    @staticmethod
    def batch_tokens(batch) -> int:
        """Review tokens (padding excluded) in a training batch (for tokens/s)."""
        return int(batch[1].sum())

    def benchmark_loader(self, device: torch.device) -> LengthBucketLoader:
        """The training batches for ``fodl.benchmark``'s plain loop: the same bucketed loader
        over the training split, on ``device``, one process."""
        tensors = tuple(t.to(device) for t in self.splits["train"])
        return LengthBucketLoader(tensors, self.batch_size, bucket_batches=self.bucket_batches,
                                  shuffle=True, seed=self.seed)
