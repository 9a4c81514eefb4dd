"""bAbI question answering (Weston et al. 2015), as the DNC paper feeds it (Graves et al. 2016).

The standard task files ``qa<N>_<name>_{train,test}.txt`` are read from a ``.tar.gz`` in place
or from a folder (any layout: files are found by name). Each line is ``<id> <text>``; ``id`` 1
starts a new story; a question line is ``<id> <question>?<TAB><answer><TAB><supporting ids>``,
the answer a word or a comma-separated list (``apple,football``, ``n,s``).

A story becomes one sequence of words (lowercase, :func:`fodl.text.tokenize`): each statement
followed by ``.``, each question by ``?`` and then one ``-`` per answer word; the net must
output the answer words at the ``-`` steps (the paper's encoding). Every question of a story is
answered where it is asked, so the net sees the story once. A question is answered correctly
when every one of its answer words is; errors are reported per task (the paper's table).

``unit=sentence`` feeds a story one sentence per step instead of one word per step (the
memory networks' encoding, Sukhbaatar et al. 2015): a step is a statement with its ``.``, a
question with its ``?``, or one ``-`` answer step; its words arrive together as a row of word
ids (padded with 0) and the net sums their embeddings with the position encoding
(:func:`fodl.nets.dnc.position_encoding`). A qa1 story is then ~20 steps instead of ~87, and
who went where arrives in one step, so the controller no longer has to hold the person until
the place comes (the slow part of learning the task word by word).

``permute`` lists groups of interchangeable words (the task's names of people, of places):
every training story draws its own permutation of each group and renames consistently,
answers included. The stories then cannot be learnt by heart, only the rule can (without it,
the qa1 DNC recipe learns the training stories by heart and stays near chance on the
validation stories: docs/ch08_dnc.md).

Stories are stored as one flat token stream per split (no padding); a batch gathers its
stories padded to the longest of them. Training batches are bucketed: stories are shuffled
(per seed and epoch), sorted by length within windows of ``bucket`` batches, and the batches
shuffled again, so little of a batch is padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from fodl.data.base import InMemoryDataModule, resolve_data_dir
from fodl.data.download import cached, download
from fodl.data.loader import TensorLoader, derive_seed
from fodl.errors import FodlError
from fodl.text.corpus import decode, iter_sources
from fodl.text.tokenize import WORD_RE
from fodl.text.vocab import PAD, UNK, Vocabulary

log = logging.getLogger(__name__)

STOP, QUESTION, ANSWER = ".", "?", "-"
UNITS = ("word", "sentence")
SPECIALS = (PAD, UNK, STOP, QUESTION, ANSWER)  # ids 0..4
FILE_RE = re.compile(r"(?:^|/)qa(\d+)_([\w-]+)_(train|test)\.txt$")
TASK_NAMES = {
    1: "single-supporting-fact", 2: "two-supporting-facts", 3: "three-supporting-facts",
    4: "two-arg-relations", 5: "three-arg-relations", 6: "yes-no-questions", 7: "counting",
    8: "lists-sets", 9: "simple-negation", 10: "indefinite-knowledge", 11: "basic-coreference",
    12: "conjunction", 13: "compound-coreference", 14: "time-reasoning", 15: "basic-deduction",
    16: "basic-induction", 17: "positional-reasoning", 18: "size-reasoning", 19: "path-finding",
    20: "agents-motivations",
}


# -- reading ------------------------------------------------------------------------------
class Line(NamedTuple):
    """One line of a story: a statement (``answers`` empty) or a question."""

    id: int
    words: list[str]
    answers: list[str]
    supporting: list[int]


def parse_babi(text: str, source: str = "<text>") -> list[list[Line]]:
    """The stories of one bAbI file, each a list of :class:`Line`. A malformed line raises a
    ``FodlError`` naming ``source`` and the line number."""
    stories: list[list[Line]] = []
    words = WORD_RE.findall  # fodl.text.tokenize's words, on text lowercased once per file
    for n, raw in enumerate(text.lower().splitlines(), 1):
        if not raw.strip():
            continue
        head, _, rest = raw.strip().partition(" ")
        if not head.isdigit():
            raise FodlError(f"{source}, line {n}: {raw[:80]!r} does not start with a line number; "
                            "not a bAbI task file (lines are '<id> <sentence>').")
        ident = int(head)
        if ident == 1 or not stories:
            stories.append([])
        if "\t" in rest:
            parts = rest.split("\t")
            answers = words(parts[1].replace(",", " ")) if len(parts) > 1 else []
            if not answers:
                raise FodlError(f"{source}, line {n}: the question {parts[0].strip()!r} has no answer "
                                "after its tab; not a bAbI task file.")
            supporting = [int(s) for s in (parts[2].split() if len(parts) > 2 else []) if s.isdigit()]
            stories[-1].append(Line(ident, words(parts[0]), answers, supporting))
        else:
            stories[-1].append(Line(ident, words(rest), [], []))
    return stories


def story_tokens(story: Sequence[Line]) -> tuple[list[str], list[str | None]]:
    """The input words of a story and, aligned with them, the target word of each answer
    step (None elsewhere): statements end with ``.``, questions with ``?`` and one ``-`` per
    answer word."""
    words: list[str] = []
    targets: list[str | None] = []
    for line in story:
        if line.answers:
            words += line.words + [QUESTION] + [ANSWER] * len(line.answers)
            targets += [None] * (len(line.words) + 1) + list(line.answers)
        else:
            words += line.words + [STOP]
            targets += [None] * (len(line.words) + 1)
    return words, targets


def find_task_files(path: Path, members: Sequence[str] | None = None) -> dict[tuple[int, str], tuple[str, bytes]]:
    """``{(task, 'train'|'test'): (name, bytes)}`` of the bAbI files under ``path`` (a folder
    or an archive). Two files for the same task and split is an error naming both."""
    found: dict[tuple[int, str], tuple[str, bytes]] = {}
    for name, data in iter_sources(path, members):
        m = FILE_RE.search(name)
        if not m:
            continue
        key = (int(m.group(1)), m.group(3))
        if key in found:
            raise FodlError(f"{path} holds two files for bAbI task {key[0]} ({key[1]}): "
                            f"{found[key][0]} and {name}. Choose one set with data.members, e.g. "
                            "data.members=['*/en-10k/*'] for the official archive's 10k English set.")
        found[key] = (name, data)
    return found


# -- batches ------------------------------------------------------------------------------
class StoryBatch(NamedTuple):
    """Stories padded to the longest in the batch."""

    inputs: torch.Tensor  # (B, T) long word ids (PAD = 0 after the story's end); (B, T, L) with unit=sentence
    targets: torch.Tensor  # (B, T) long: the answer word at answer steps, 0 elsewhere
    answer: torch.Tensor  # (B, T) bool: the answer steps
    question: torch.Tensor  # (B, T) long: which question of its story an answer step belongs to
    task: torch.Tensor  # (B,) long: bAbI task number


def gather_stories(tokens: torch.Tensor, answers: torch.Tensor, start: torch.Tensor,
                   length: torch.Tensor, task: torch.Tensor) -> StoryBatch:
    """The :class:`StoryBatch` of the stories at ``start`` (B,) with ``length`` (B,) in the
    flat streams ``tokens`` / ``answers``."""
    steps = int(length.max())
    offsets = torch.arange(steps, device=start.device)
    valid = offsets.unsqueeze(0) < length.unsqueeze(1)
    pos = (start.unsqueeze(1) + offsets).clamp(max=len(tokens) - 1)
    x = tokens[pos].long()
    x = torch.where(valid.view(valid.shape + (1,) * (x.dim() - 2)), x, 0)
    y = torch.where(valid, answers[pos].long(), 0)
    if x.dim() == 2:  # one word per step
        answer = x == SPECIALS.index(ANSWER)
        asks = x == SPECIALS.index(QUESTION)
    else:  # one sentence per step (a row of word ids)
        answer = x[..., 0] == SPECIALS.index(ANSWER)
        asks = (x == SPECIALS.index(QUESTION)).any(-1)
    question = torch.cumsum(asks.long(), 1) - 1
    return StoryBatch(x, y, answer, question, task.long())


def sentence_units(tokens: torch.Tensor, answers: torch.Tensor, start: torch.Tensor,
                   length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A split's flat word streams regrouped into steps of one sentence: a statement with its
    ``.``, a question with its ``?``, or one ``-``. Returns the steps' word ids (S, L) padded
    with 0, their targets (S,) (the answer word of a ``-`` step, else 0) and each story's
    first step and number of steps. Every story ends with ``.`` or ``-`` (story_tokens), so
    no step crosses two stories."""
    ends = torch.isin(tokens, torch.tensor([SPECIALS.index(t) for t in (STOP, QUESTION, ANSWER)],
                                           dtype=tokens.dtype, device=tokens.device))
    if len(tokens) and not bool(ends[-1]):
        raise FodlError("bAbI: the token stream does not end a sentence; the cached split is "
                        "corrupt (delete paths.cache_dir's babi-* files).")
    ends_i = ends.long()
    unit = torch.cumsum(ends_i, 0) - ends_i  # the step each word belongs to
    n_units = int(ends_i.sum())
    first = torch.zeros(n_units, dtype=torch.long, device=tokens.device)
    first[1:] = ends.nonzero().flatten()[:-1] + 1  # the word each step starts at
    pos = torch.arange(len(tokens), device=tokens.device) - first[unit]
    width = int(pos.max()) + 1 if len(tokens) else 1
    rows = torch.zeros(n_units, width, dtype=tokens.dtype, device=tokens.device)
    rows[unit, pos] = tokens
    targets = answers[ends]
    u_start = unit[start] if len(start) else start
    u_length = unit[start + length - 1] - u_start + 1 if len(start) else length
    return rows, targets, u_start, u_length


class StoryLoader(TensorLoader):
    """A :class:`TensorLoader` over stories (``(start, length, task)`` per story) that yields
    :class:`StoryBatch` es, bucketed by length when training (module docstring)."""

    def __init__(self, tensors, batch_size: int, streams: tuple[torch.Tensor, torch.Tensor],
                 bucket: int = 0, **kwargs) -> None:
        super().__init__(tensors, batch_size, **kwargs)
        self.streams = streams
        self.bucket = bucket

    def _indices(self) -> torch.Tensor | None:
        idx = super()._indices()
        if idx is None or not self.shuffle or self.bucket <= 1:
            return idx
        lengths = self.tensors[1].index_select(0, idx).cpu()
        idx = idx.cpu()
        window = self.bucket * self.batch_size
        parts = [idx[i : i + window][torch.sort(lengths[i : i + window], stable=True).indices]
                 for i in range(0, len(idx), window)]
        idx = torch.cat(parts)
        n_batches = -(-len(idx) // self.batch_size)
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 1 + self.rank))
        order = torch.randperm(n_batches, generator=g)
        idx = torch.cat([idx[b * self.batch_size : (b + 1) * self.batch_size] for b in order.tolist()])
        return idx.to(self.tensors[0].device)

    def _batches(self):
        for start, length, task in super()._batches():
            yield gather_stories(*self.streams, start, length, task)


def permute_words(batch: StoryBatch, groups: Sequence[torch.Tensor],
                  generator: torch.Generator, size: int | None = None) -> StoryBatch:
    """``batch`` with each story's words renamed by its own random permutation within each
    group of word ids (inputs and targets alike, so the answers follow). ``size``: the
    vocabulary size (ids below it); None reads it off the batch (a device sync)."""
    x, y = batch.inputs, batch.targets
    b, device = len(x), x.device
    if size is None:
        size = int(max(int(x.max()), int(y.max()), *(int(g.max()) for g in groups))) + 1
    table = torch.arange(size, device=device).repeat(b, 1)
    for g in groups:
        g = g.to(device)
        order = torch.rand(b, len(g), generator=generator, device=generator.device).argsort(1)
        table[:, g] = g[order.to(device)]
    rename = lambda t: torch.gather(table, 1, t.reshape(b, -1)).reshape(t.shape)  # noqa: E731
    return batch._replace(inputs=rename(x), targets=rename(y))


# -- the DataModule ------------------------------------------------------------------------
class BabiDataModule(InMemoryDataModule):
    """bAbI tasks (module docstring) for the DNC and its LSTM baseline.

    Args:
        data_dir: where ``path`` is looked up (``paths.data_dir``).
        path: the bAbI files: an archive (``babi-en-10k.tar.gz``) or a folder, relative to
            ``data_dir`` unless absolute.
        members: shell patterns selecting files inside ``path`` (e.g. ``['*/en-10k/*']`` for
            the official ``tasks_1-20_v1-2.tar.gz``); null: every file.
        url, md5: where to download ``path`` when it is missing, and its published md5 (both
            needed; the download is verified and atomic). Null: no download.
        tasks: task numbers (1-20) to train and test on; one number or a list ("joint" training
            is the list 1..20).
        missing: ``error`` (default): a task without its train or test file stops the run
            with a message naming it; ``skip``: such a task is left out of that split (e.g. the
            shared copy lacks qa3's training file) and a warning names it.
        val_fraction: the fraction of each task's training stories held out for validation.
        max_size: rows of the net's word tables (``model.net`` follows it): the vocabulary
            (5 specials + the training words) must fit, else an error says by how much.
        bucket: training batches sorted by length within windows of this many batches (0/1:
            plain shuffling).
        unit: ``word`` (the paper's: one word per step) or ``sentence`` (one statement,
            question or answer step per step; module docstring).
        permute: groups of interchangeable words, e.g. ``[[mary, john, daniel, sandra],
            [bathroom, hallway, kitchen, office, garden, bedroom]]``: each training story is
            renamed by its own random permutation within each group (seeded per seed, epoch
            and process; validation and test stories are left alone). Null: off.
        cache_dir: the encoded splits are cached here, keyed by the source file and settings.

    ``vocab`` (a :class:`fodl.text.Vocabulary`, saved in checkpoints by the module) and
    ``tasks_in`` (``{split: task numbers}``) are set by ``setup``.
    """

    def __init__(self, data_dir: str | None = None, path: str = "babi-en-10k.tar.gz",
                 members: list[str] | None = None, url: str | None = None, md5: str | None = None,
                 tasks: int | list[int] = 1, missing: str = "error", val_fraction: float = 0.1,
                 max_size: int = 200, bucket: int = 8, cache_dir: str | None = None,
                 batch_size: int = 32, eval_batch_size: int = 100, seed: int | None = 0,
                 on_device: bool = True, drop_last: bool = False, unit: str = "word",
                 permute: Sequence[Sequence[str]] | None = None) -> None:
        super().__init__(batch_size, eval_batch_size, 0 if seed is None else seed, on_device,
                         drop_last)
        tasks = [tasks] if isinstance(tasks, int) else list(tasks)
        bad = [t for t in tasks if not isinstance(t, int) or not 1 <= t <= 20]
        if not tasks or bad or len(set(tasks)) != len(tasks):
            raise FodlError(f"data.tasks={tasks}: give bAbI task numbers 1-20, each once (e.g. "
                            "data.tasks=1, or data.tasks=[1,2,3] for joint training).")
        if missing not in ("error", "skip"):
            raise FodlError(f"data.missing={missing!r}: choose error or skip.")
        if not 0.0 <= val_fraction < 1.0:
            raise FodlError(f"data.val_fraction={val_fraction}: a fraction in [0, 1).")
        if unit not in UNITS:
            raise FodlError(f"data.unit={unit!r}: choose one of {UNITS} (one word or one sentence "
                            "per time step).")
        groups = [list(g) for g in (permute or [])]
        flat = [w for g in groups for w in g]
        if any(len(g) < 2 for g in groups) or len(set(flat)) != len(flat):
            raise FodlError(f"data.permute={groups}: give groups of two or more interchangeable "
                            "words, no word in two groups, e.g. [[mary,john,daniel,sandra],"
                            "[kitchen,garden,office]].")
        if (url is None) != (md5 is None):
            raise FodlError("data.url and data.md5 go together: a download is kept only when it "
                            "matches its published md5. Give both, or neither.")
        self.data_dir = data_dir
        self.path = path
        self.members = list(members) if members else None
        self.url, self.md5 = url, md5
        self.tasks = sorted(tasks)
        self.missing = missing
        self.val_fraction = val_fraction
        self.max_size = max_size
        self.bucket = bucket
        self.unit = unit
        self.permute = groups
        self._permute_ids: list[torch.Tensor] = []
        self.cache_dir = cache_dir
        self.vocab: Vocabulary | None = None
        self.tasks_in: dict[str, list[int]] = {}
        self.streams: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- files ------------------------------------------------------------------------------
    def source(self) -> Path:
        p = Path(self.path).expanduser()
        if not p.is_absolute():
            p = resolve_data_dir(self.data_dir) / p
        if p.exists():
            return p
        if self.url:
            return download([self.url], p, md5=self.md5)
        raise FodlError(
            f"bAbI data not found: {p} does not exist. Put babi-en-10k.tar.gz (or a folder of "
            "qa<N>_<name>_train.txt / _test.txt files) there, point paths.data_dir (env "
            "FODL_DATA_DIR) at the directory that has it, or set data.path; data.url + data.md5 "
            "download it.")

    def _read(self, src: Path) -> dict:
        files = find_task_files(src, self.members)
        absent = [(t, s) for t in self.tasks for s in ("train", "test") if (t, s) not in files]
        if absent:
            names = ", ".join(f"qa{t}_{TASK_NAMES[t]}_{s}.txt" for t, s in absent)
            if self.missing == "error":
                keep = [t for t in self.tasks if all(a[0] != t for a in absent)]
                raise FodlError(
                    f"bAbI: {src} has no {names} (task file{'s' if len(absent) > 1 else ''} of "
                    f"data.tasks={self.tasks}). The shared copy of en-10k lacks "
                    "qa3_three-supporting-facts_train.txt (../shared/data/SOURCES.md). Drop the "
                    f"task (data.tasks={keep}), add the file, or set data.missing=skip to train "
                    "without it (its test questions are still scored when the test file exists).")
            log.warning("bAbI: %s has no %s; with data.missing=skip those splits go without them",
                        src, names)
        stories: dict[str, list[tuple[int, list[Line]]]] = {"train": [], "test": []}
        for (t, split), (name, data) in sorted(files.items()):
            if t in self.tasks:
                stories[split] += [(t, s) for s in parse_babi(decode(name, data), name)]
        # validation: a seeded fraction of each task's training stories
        g = torch.Generator().manual_seed(derive_seed(self.seed, 7))
        train, val = [], []
        for t in self.tasks:
            own = [s for s in stories["train"] if s[0] == t]
            n_val = int(round(len(own) * self.val_fraction))
            perm = torch.randperm(len(own), generator=g).tolist()
            val += [own[i] for i in sorted(perm[:n_val])]
            train += [own[i] for i in sorted(perm[n_val:])]
        counts = Counter(w for _, s in train for line in s for w in line.words + line.answers)
        if not counts:
            raise FodlError(f"bAbI: no training story for data.tasks={self.tasks} in {src}.")
        vocab = Vocabulary.build(counts, specials=SPECIALS, unk=UNK, source=str(src))
        out: dict = {"vocab": vocab.to_dict()}
        for split, items in (("train", train), ("val", val), ("test", stories["test"])):
            words: list[str] = []
            targets: list[str] = []
            lengths, task_ids = [], []
            for t, story in items:
                w, y = story_tokens(story)
                words += w
                targets += [PAD if a is None else a for a in y]
                lengths.append(len(w))
                task_ids.append(t)
            lengths_t = torch.tensor(lengths, dtype=torch.long)
            out[split] = {
                "tokens": vocab.encode(words).to(torch.int32),
                "answers": vocab.encode(targets).to(torch.int32),
                "start": torch.cumsum(lengths_t, 0) - lengths_t,
                "length": lengths_t,
                "task": torch.tensor(task_ids, dtype=torch.long),
            }
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        src = self.source()
        settings = json.dumps([self.members, self.tasks, self.missing, self.val_fraction, self.seed])
        name = "babi-" + hashlib.sha1(settings.encode()).hexdigest()[:8]
        data = cached(self.cache_dir, name, [src], lambda: self._read(src))
        self.vocab = Vocabulary.from_dict(data["vocab"])
        if len(self.vocab) > self.max_size:
            raise FodlError(f"The bAbI vocabulary of data.tasks={self.tasks} has {len(self.vocab)} "
                            f"entries (5 specials included) but the net has data.max_size="
                            f"{self.max_size} rows: set data.max_size={len(self.vocab)} or more.")
        missing = [w for g in self.permute for w in g if w not in self.vocab]
        if missing:
            raise FodlError(f"data.permute names {missing}, which the training stories of "
                            f"data.tasks={self.tasks} never use: check the spelling (bAbI words are "
                            "lowercase) or drop them.")
        self._permute_ids = [torch.tensor([self.vocab[w] for w in g]) for g in self.permute]
        for split in ("train", "val", "test"):
            d = data[split]
            start, length, tokens, answers = d["start"], d["length"], d["tokens"], d["answers"]
            if self.unit == "sentence":
                tokens, answers, start, length = sentence_units(tokens, answers, start, length)
            self.splits[split] = (start, length, d["task"])
            self.streams[split] = (tokens, answers)
            self.tasks_in[split] = sorted(set(d["task"].tolist()))
        if not len(self.splits["val"][0]):  # val_fraction=0: validate on the test stories
            self.splits["val"], self.streams["val"] = self.splits["test"], self.streams["test"]
            self.tasks_in["val"] = self.tasks_in["test"]
            self.validation_is_test = True
        log.info("bAbI tasks %s: %d / %d / %d stories (train / val / test), vocabulary %d",
                 self.tasks, *(len(self.splits[s][0]) for s in ("train", "val", "test")), len(self.vocab))

    # -- augmentation -------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not self.permute or self.trainer is None or not self.trainer.training:
            return batch
        return permute_words(batch, self._permute_ids, self.augmentation_generator(batch.inputs.device),
                             size=len(self.vocab))

    def _loader(self, split: str, train: bool) -> StoryLoader:
        rank, world = self._dist()
        tensors = self._device_tensors(split)
        streams = self.streams[split]
        if streams[0].device != tensors[0].device:
            streams = self.streams[split] = tuple(s.to(tensors[0].device) for s in streams)
        return StoryLoader(
            tensors, self.batch_size if train else self.eval_batch_size, streams,
            bucket=self.bucket if train else 0, shuffle=train, drop_last=self.drop_last and train,
            seed=self.seed, rank=rank, world_size=world,
            epoch_fn=(lambda: self.trainer.current_epoch) if (train and self.trainer) else None)
