"""A text corpus for skip-gram (book chapter 6): one int tensor of word ids, blocks of centers.

The corpus (any plain-text file, folder or archive; see :mod:`fodl.text.corpus`) is tokenised
once and cached as one int32 tensor. Every epoch, with tensor operations only:

1. subsampling of frequent words (word2vec's rule: a word of corpus frequency ``f`` is kept with
   probability ``(sqrt(f / t) + 1) * t / f``, ``t = data.subsample``; 0 keeps every token);
2. the kept stream is cut into blocks of ``block_size`` consecutive center words; the blocks are
   shuffled and ``blocks_per_batch`` of them make a minibatch;
3. for each block, the ``block_size + 2 * window`` words around it and a (center, word) mask of
   the skip-gram pairs: word2vec's dynamic window (each center's window drawn uniformly from
   1..window, as gensim and the C tool do), the full window, or the book's ``num_skips``
   contexts drawn without replacement from the ``2 * window`` around each center; pairs never
   cross a document boundary (a line) unless ``respect_documents=false``;
4. ``noise_samples`` noise words per block from the unigram distribution raised to
   ``noise_power`` (0.75), shared by the block's centers (as TensorFlow's ``nce_loss`` in the
   book shares its samples across a batch).

A batch is a :class:`SkipGramBatch`; :func:`fodl.data.corpus.block_pairs` lists its pairs.
Validation and test batches are the Google analogy questions encoded against the vocabulary.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import torch

from fodl.data.base import resolve_data_dir
from fodl.data.download import cached, download
from fodl.data.loader import MinibatchDataModule, MinibatchLoader
from fodl.errors import FodlError
from fodl.metrics.analogy import AnalogySet, encode_analogies, read_analogies
from fodl.text.corpus import encode_corpus
from fodl.text.vocab import UNK, Vocabulary

log = logging.getLogger(__name__)

QUESTIONS_URL = "https://raw.githubusercontent.com/tmikolov/word2vec/master/questions-words.txt"
QUESTIONS_MD5 = "8b7461cbf7ecc0aec9b32eb626821105"  # also gensim's test_data copy


class SkipGramBatch(NamedTuple):
    """One minibatch of N blocks of T centers, window W, M noise words per block.

    ``words`` (N, T + 2W) int64: the words around each block; its centers are
    ``words[:, W:W + T]``. ``positive`` (N, T, T + 2W) bool: (center, word) is a skip-gram pair.
    ``negatives`` (N, M) int64: noise words. ``log_noise`` (V,): log of the noise
    distribution (for NCE's correction), the same tensor in every batch.
    """

    words: torch.Tensor
    positive: torch.Tensor
    negatives: torch.Tensor
    log_noise: torch.Tensor


def block_positive_mask(docs: torch.Tensor, block: int, window: int, num_skips: int | None = None,
                        reduced_window: bool = True,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The (N, T, T + 2W) skip-gram pair mask of N blocks.

    ``docs`` (N, T + 2W): the document index of each word position, negative for positions
    outside the stream (padding). Center ``i`` (position ``W + i``) pairs with word ``j`` when
    ``1 <= |j - W - i| <= w_i`` and both are in the same document, where ``w_i = window``, or
    drawn uniformly from ``1..window`` (``reduced_window``, word2vec's dynamic window), or, with
    ``num_skips``, ``num_skips`` of those positions are drawn without replacement (the book's
    ``generate_batch``; fewer where fewer exist, at document edges).
    """
    n, c = docs.shape
    dev = docs.device
    off = (torch.arange(c, device=dev).view(1, -1) - window - torch.arange(block, device=dev).view(-1, 1)).abs()
    center_doc = docs[:, window : window + block].unsqueeze(2)
    mask = (docs.unsqueeze(1) == center_doc) & (center_doc >= 0) & (off >= 1) & (off <= window)
    if num_skips is not None:
        if num_skips < 2 * window:
            keys = torch.rand(mask.shape, generator=generator, device=dev).masked_fill_(~mask, 2.0)
            chosen = keys.topk(num_skips, dim=2, largest=False).indices
            mask &= torch.zeros_like(mask).scatter_(2, chosen, True)
    elif reduced_window:
        w = torch.randint(1, window + 1, (n, block, 1), generator=generator, device=dev)
        mask &= off <= w
    return mask


def block_pairs(batch: SkipGramBatch) -> torch.Tensor:
    """(P, 2) (center, context) word ids of every pair in ``batch``, block by block."""
    block = batch.positive.shape[1]
    window = (batch.words.shape[1] - block) // 2
    n, i, j = batch.positive.nonzero(as_tuple=True)
    return torch.stack([batch.words[n, window + i], batch.words[n, j]], dim=1)


def keep_probabilities(counts: torch.Tensor, sample: float) -> torch.Tensor | None:
    """Per word, the probability that subsampling keeps a token of it (None when off)."""
    if not sample:
        return None
    f = counts.double() / counts.sum()
    return ((f / sample).sqrt() + 1).mul(sample / f.clamp_min(1e-30)).clamp(max=1.0).float()


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """One random stream per (seed, epoch): a resumed run replays the same epoch."""
    from numpy.random import SeedSequence

    state = SeedSequence([seed % 2**64, epoch, 0x5C1B]).generate_state(1, "uint64")[0]
    return torch.Generator(device=device).manual_seed(int(state))


class SkipGramLoader(MinibatchLoader):
    """Minibatches of skip-gram blocks drawn from a stream of word ids (see the module docstring).

    Every epoch has the same number of minibatches, the one an epoch of the expected size has
    (sum of the keep probabilities): subsampling makes the kept stream a few tokens longer or
    shorter from epoch to epoch, so the last blocks of the shuffled order are left out, or a
    few random blocks taken twice (some 1e-4 of an epoch). Without subsampling, every block is
    used exactly once. Under DDP each process takes every ``world_size``-th block.
    """

    def __init__(self, stream: torch.Tensor, docs: torch.Tensor | None, keep: torch.Tensor | None,
                 noise_cdf: torch.Tensor, log_noise: torch.Tensor, *, block: int,
                 blocks_per_batch: int, window: int, num_skips: int | None, reduced_window: bool,
                 noise_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch_fn: Callable[[], int] | None = None) -> None:
        self.stream, self.docs, self.keep = stream, docs, keep
        self.noise_cdf, self.log_noise = noise_cdf, log_noise
        self.block, self.blocks_per_batch, self.window = block, blocks_per_batch, window
        self.num_skips, self.reduced_window, self.noise_samples = num_skips, reduced_window, noise_samples
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch_fn, self.epoch = epoch_fn, 0
        expected = float(keep[stream.long()].sum()) if keep is not None else len(stream)
        self.blocks = max(1, math.ceil(round(expected) / block))  # per epoch, all processes
        self._span = torch.arange(-window, block + window, device=stream.device)

    def num_batches(self) -> int:
        """Minibatches per epoch (per process)."""
        n = math.ceil(math.ceil(self.blocks / self.world_size) / self.blocks_per_batch)
        return n if self.max_batches is None else min(n, max(int(self.max_batches), 0))

    def _epoch_blocks(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """This epoch's kept stream, its documents, and this process's block order."""
        stream, docs = self.stream, self.docs
        if self.keep is not None:
            kept = torch.rand(len(stream), generator=g, device=stream.device) < self.keep[stream.long()]
            stream = stream[kept]
            docs = docs[kept] if docs is not None else None
        have = max(1, math.ceil(len(stream) / self.block))
        order = torch.randperm(have, generator=g, device=stream.device)
        per_rank = math.ceil(self.blocks / self.world_size)
        need = per_rank * self.world_size
        if need > have:
            extra = torch.randint(have, (need - have,), generator=g, device=stream.device)
            order = torch.cat([order, extra])
        return stream, docs, order[:need][self.rank :: self.world_size]

    def _batches(self) -> Iterator[SkipGramBatch]:
        if self.epoch_fn is not None:
            self.epoch = int(self.epoch_fn())
        g = _epoch_generator(self.seed, self.epoch, self.stream.device)
        stream, docs, order = self._epoch_blocks(g)
        n_tok = len(stream)
        bpb, m = self.blocks_per_batch, self.noise_samples
        for b in range(self.num_batches()):
            pos = (order[b * bpb : (b + 1) * bpb] * self.block).unsqueeze(1) + self._span
            inside = (pos >= 0) & (pos < n_tok)
            pos = pos.clamp_(0, max(n_tok - 1, 0))
            words = stream[pos].long()
            doc = docs[pos].long() if docs is not None else torch.zeros_like(words)
            doc.masked_fill_(~inside, -1)
            positive = block_positive_mask(doc, self.block, self.window, self.num_skips,
                                           self.reduced_window, g)
            u = torch.rand(len(pos) * m, generator=g, device=pos.device)
            negatives = torch.searchsorted(self.noise_cdf, u).clamp_(max=len(self.noise_cdf) - 1)
            yield SkipGramBatch(words, positive, negatives.view(len(pos), m), self.log_noise)


class AnalogyLoader:
    """The encoded analogy questions in chunks: ``(questions, section, candidates, canon)``
    (see :class:`~fodl.metrics.analogy.AnalogySet`); under DDP each process takes every
    ``world_size``-th question."""

    def __init__(self, aset: AnalogySet, batch_size: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        q, s = aset.questions[rank::world_size], aset.section[rank::world_size]
        self.batches = [(qc, sc) for qc, sc in zip(q.split(batch_size), s.split(batch_size))]
        self.candidates, self.canon = aset.candidates, aset.canon
        if device is not None:
            self.candidates, self.canon = self.candidates.to(device), self.canon.to(device)
            self.batches = [(qc.to(device), sc.to(device)) for qc, sc in self.batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for qc, sc in self.batches:
            yield qc, sc, self.candidates, self.canon


class CorpusDataModule(MinibatchDataModule):
    """Skip-gram training data from a text corpus; the analogy questions for validation/test.

    Args:
        corpus: a plain-text file, a folder or an archive (see :mod:`fodl.text.corpus`);
            relative to ``data_dir`` unless absolute.
        data_dir, cache_dir: where data is found / the encoded corpus is cached.
        members: shell patterns of the files to read inside a folder or archive (None: all).
        url, sha1, size: where to download ``corpus`` when it is missing (``download=true``)
            and its published SHA-1 / size in bytes (text8: ``conf/data/text8.yaml``).
        lowercase, strip_html, encoding, encoding_errors: tokenisation
            (:func:`fodl.text.tokenize`) and decoding (``strict``: an undecodable byte is an
            error naming the file and line; ``replace``).
        max_documents: read only the first documents (lines) of the corpus (None: all).
        min_count, max_size: the vocabulary: words seen at least ``min_count`` times, the
            ``max_size`` most frequent (specials included). The net needs at least
            ``max_size`` rows (``model.net.vocab_size`` follows it).
        unk: map out-of-vocabulary words to ``<unk>`` (the book: its 10,000 words include
            UNK) instead of removing them from the stream (word2vec, gensim).
        subsample: word2vec's ``sample`` threshold (1e-3 for gensim's default; 0: off, the book).
        window: the book's ``skip_window``: context words on each side.
        num_skips: the book's ``num_skips`` contexts drawn per center, or None for every context
            in the (dynamic, with ``reduced_window``) window as word2vec does.
        reduced_window: word2vec's dynamic window (only without ``num_skips``).
        respect_documents: no pair across a document (line) boundary, as gensim (text8 is one).
        batch_size: (center, context) pairs per minibatch: ``batch_size / num_skips`` centers
            (``/ (window + 1)``, the mean, with the dynamic window, ``/ (2 window)`` with the
            full one), rounded to whole blocks.
        block_size: consecutive centers that share their noise words (one bmm per block).
        noise_samples: noise words drawn per block (the book's ``num_sampled`` 64, which TF
            shares across its batch of 32 pairs).
        noise_power: the noise distribution is unigram ** noise_power (word2vec: 0.75).
        analogies: the Google analogy questions (word2vec's ``questions-words.txt``), relative
            to ``data_dir`` unless absolute; downloaded when missing; None: no analogy
            evaluation (then monitor ``train/loss``).
        analogy_restrict: candidate answers are the most frequent words (30,000).
        eval_batch_size: analogy questions per evaluation batch.
        seed: the data seed (subsampling, windows, block order, noise words).
        ``**kwargs``: how minibatches reach the trainer (:class:`~fodl.data.loader.MinibatchDataModule`).
    """

    def __init__(self, corpus: str, data_dir: str | None = None, cache_dir: str | None = None,
                 members: Sequence[str] | None = None, url: str | None = None,
                 sha1: str | None = None, size: int | None = None, download: bool = True,
                 lowercase: bool = True, strip_html: bool = False, encoding: str = "utf-8",
                 encoding_errors: str = "strict", max_documents: int | None = None,
                 min_count: int = 5, max_size: int | None = 30000, unk: bool = False,
                 subsample: float = 1e-3, window: int = 5, num_skips: int | None = None,
                 reduced_window: bool = True, respect_documents: bool = True,
                 batch_size: int = 32, block_size: int = 32, noise_samples: int = 64,
                 noise_power: float = 0.75,
                 analogies: str | None = "word2vec/questions-words.txt",
                 analogy_restrict: int = 30000, eval_batch_size: int = 4096,
                 on_device: bool = True, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if window < 1:
            raise FodlError(f"data.window={window}: it must be at least 1.")
        if num_skips is not None and not 1 <= num_skips <= 2 * window:
            raise FodlError(f"data.num_skips={num_skips} must be between 1 and 2 * window = "
                            f"{2 * window} (the context positions around a center), or null.")
        if subsample < 0:
            raise FodlError(f"data.subsample={subsample}: use 0 (off) or a threshold like 1e-3.")
        for name, v in (("batch_size", batch_size), ("block_size", block_size),
                        ("noise_samples", noise_samples), ("eval_batch_size", eval_batch_size)):
            if v < 1:
                raise FodlError(f"data.{name}={v}: it must be at least 1.")
        self.root = resolve_data_dir(data_dir)
        self.corpus = corpus
        self.cache_dir = cache_dir
        self.members = list(members) if members is not None else None
        self.url, self.sha1, self.size, self.download = url, sha1, size, download
        self.read_opts = dict(lowercase=lowercase, strip_html=strip_html, encoding=encoding,
                              errors=encoding_errors, max_documents=max_documents)
        self.min_count, self.max_size, self.unk = min_count, max_size, unk
        self.subsample, self.window, self.num_skips = subsample, window, num_skips
        self.reduced_window, self.respect_documents = reduced_window, respect_documents
        self.batch_size, self.noise_samples, self.noise_power = batch_size, noise_samples, noise_power
        pairs_per_center = num_skips or (window + 1 if reduced_window else 2 * window)
        centers = max(1, round(batch_size / pairs_per_center))
        self.block_size = min(block_size, centers)
        self.blocks_per_batch = max(1, round(centers / self.block_size))
        self.analogies = analogies
        self.analogy_restrict = analogy_restrict
        self.eval_batch_size = eval_batch_size
        self.on_device = on_device
        self.seed = seed
        self.vocab: Vocabulary | None = None
        self.analogy: AnalogySet | None = None

    # -- files ---------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.root / p

    def corpus_path(self) -> Path:
        """The corpus on disk, downloaded (and verified) first when it is missing."""
        path = self._path(self.corpus)
        if path.exists():
            if self.size is not None and path.is_file() and path.stat().st_size != self.size:
                log.warning("%s has %d bytes, not the published %d: a different or re-packed "
                            "copy (read as it is)", path, path.stat().st_size, self.size)
            return path
        if not (self.url and self.download):
            raise FodlError(f"Corpus {path} does not exist{' (data.download=false)' if self.url else ''}. "
                            "Put the file there, give data.corpus another plain-text file, folder "
                            "or archive, or point paths.data_dir (env FODL_DATA_DIR) at a directory "
                            "that has it.")
        try:
            return download([self.url], path, sha1=self.sha1)
        except FodlError as e:
            raise FodlError(f"Corpus {path} is missing and could not be downloaded ({e}). Put the "
                            "file there, or give data.corpus a local plain-text file.") from None

    def questions_path(self) -> Path | None:
        if not self.analogies:
            return None
        path = self._path(self.analogies)
        if not path.exists() and self.download and path.name == "questions-words.txt":
            try:
                download([QUESTIONS_URL], path, md5=QUESTIONS_MD5)
            except FodlError as e:
                raise FodlError(f"The analogy questions are not at {path} and could not be "
                                f"downloaded ({e}). Put word2vec's questions-words.txt there, or set "
                                "data.analogies=null (and monitor=train/loss monitor_mode=min) to "
                                "train without the analogy evaluation.") from None
        return path

    def prepare_data(self) -> None:
        self.corpus_path()
        self.questions_path()

    def _encoded(self) -> dict:
        path = self.corpus_path()
        opts = repr(sorted({**self.read_opts, "members": self.members}.items()))
        key = hashlib.sha1(opts.encode()).hexdigest()[:10]
        return cached(self.cache_dir, f"corpus-{path.name}-{key}", [path],
                      lambda: encode_corpus(path, self.members, **self.read_opts))

    # -- setup ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        raw = self._encoded()
        path = self.corpus_path()
        specials = (UNK,) if self.unk else ()
        self.vocab = Vocabulary.from_counts(raw["words"], raw["counts"], self.min_count, self.max_size,
                                            specials, UNK if self.unk else None, source=f"Corpus {path}")
        kept = len(self.vocab) - self.vocab.num_specials
        remap = torch.full((len(raw["words"]),), self.vocab.unk_id, dtype=torch.int32)
        remap[:kept] = torch.arange(kept, dtype=torch.int32) + self.vocab.num_specials
        ids = remap[raw["ids"].long()]
        docs = None
        if self.respect_documents and len(raw["doc_lengths"]) > 1:
            docs = torch.repeat_interleave(torch.arange(len(raw["doc_lengths"]), dtype=torch.int32),
                                           raw["doc_lengths"])
        if not self.unk:  # word2vec: out-of-vocabulary tokens leave the stream
            inside = ids >= 0
            ids = ids[inside]
            docs = docs[inside] if docs is not None else None
        self.stream, self.docs = ids, docs
        self.corpus_tokens = len(raw["ids"])  # out-of-vocabulary tokens included, as gensim counts
        counts = torch.tensor(self.vocab.counts, dtype=torch.float64)
        self.keep = keep_probabilities(counts, self.subsample)
        noise = counts.pow(self.noise_power)
        noise = noise / noise.sum()
        self.noise_cdf = noise.cumsum(0).float()
        self.log_noise = noise.clamp_min(1e-30).log().float()
        n_docs = len(raw["doc_lengths"])
        log.info("corpus %s: %d documents, %d tokens, %d word types; vocabulary %d (min_count=%d, "
                 "max_size=%s), %d tokens in the stream%s", path, n_docs, len(raw["ids"]),
                 len(raw["words"]), len(self.vocab), self.min_count, self.max_size, len(ids),
                 f", {float(self.keep[ids.long()].sum()):.0f} kept per epoch by subsampling"
                 if self.keep is not None else "")
        qpath = self.questions_path()
        if qpath is not None:
            self.analogy = encode_analogies(read_analogies(qpath), self.vocab.words,
                                            self.analogy_restrict, skip=self.vocab.num_specials)
            log.info("analogy questions %s: %d of %d have all four words among the %d most "
                     "frequent", qpath, len(self.analogy.questions), sum(self.analogy.asked),
                     len(self.analogy.candidates))

    # -- loaders -------------------------------------------------------------------------
    def _device(self) -> torch.device:
        t = self.trainer
        if self.on_device and t is not None:
            return t.strategy.root_device
        return torch.device("cpu")

    def _dist(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self) -> SkipGramLoader:
        if self.vocab is None:
            self.setup("fit")
        dev = self._device()
        if self.stream.device != dev:
            self.stream = self.stream.to(dev)
            self.docs = self.docs.to(dev) if self.docs is not None else None
            self.keep = self.keep.to(dev) if self.keep is not None else None
            self.noise_cdf, self.log_noise = self.noise_cdf.to(dev), self.log_noise.to(dev)
        rank, world = self._dist()
        t = self.trainer
        loader = SkipGramLoader(
            self.stream, self.docs, self.keep, self.noise_cdf, self.log_noise,
            block=self.block_size, blocks_per_batch=self.blocks_per_batch, window=self.window,
            num_skips=self.num_skips, reduced_window=self.reduced_window,
            noise_samples=self.noise_samples, seed=self.seed, rank=rank, world_size=world,
            epoch_fn=(lambda: t.current_epoch) if t is not None else None)
        return self.training_loader(loader)

    def _analogy_loader(self) -> AnalogyLoader | list:
        if self.vocab is None:
            self.setup("validate")
        if self.analogy is None:
            return []
        rank, world = self._dist()
        return AnalogyLoader(self.analogy, self.eval_batch_size, rank, world, self._device())

    def val_dataloader(self):
        return self._analogy_loader()

    @staticmethod
    def batch_tokens(batch: SkipGramBatch) -> int:
        """Center words (stream tokens with at least one pair) in a training batch, for the
        tokens/s of ``scripts/benchmark.py``."""
        return int(batch.positive.any(-1).sum())

    def test_dataloader(self):
        return self._analogy_loader()
