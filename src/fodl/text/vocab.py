"""A vocabulary: word <-> id, with counts, specials, and a plain-dict form for checkpoints."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch

from fodl.errors import FodlError
from fodl.text.pad import pad_ids

PAD, UNK = "<pad>", "<unk>"
# Reserved sentence boundaries: sequence models (seq2seq) mark a sentence's start and end; the
# window tagger pads a window that runs over a sentence's edge with them.
BOS, EOS = "<bos>", "<eos>"


class Vocabulary:
    """Words in id order: the specials first (e.g. ``<pad>`` = 0, ``<unk>`` = 1), then the kept
    words by decreasing count (ties in order of first appearance).

    Args:
        words: the words in id order (specials included).
        counts: how often each word occurs in the corpus it was built from (specials: the
            number of tokens they stand for, e.g. ``<unk>``'s count is the out-of-vocabulary
            tokens; 0 for ``<pad>``).
        specials: which of ``words`` are specials.
        unk: the word that unknown words map to (must be in ``words``), or None: then
            :meth:`encode` maps unknown words to -1 (for the caller to drop).

    Saved in checkpoints as :meth:`to_dict` (plain lists, loadable with
    ``torch.load(weights_only=True)``).
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int] | None = None,
                 specials: Sequence[str] = (), unk: str | None = None) -> None:
        self.words = list(words)
        self.counts = [0] * len(self.words) if counts is None else [int(c) for c in counts]
        if len(self.counts) != len(self.words):
            raise ValueError(f"{len(self.words)} words but {len(self.counts)} counts")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            dup = next(w for w, c in Counter(self.words).items() if c > 1)
            raise ValueError(f"word {dup!r} appears twice in the vocabulary")
        self.specials = list(specials)
        if unk is not None and unk not in self.index:
            raise ValueError(f"unk word {unk!r} is not in the vocabulary")
        self.unk = unk
        self.unk_id = -1 if unk is None else self.index[unk]

    # -- building ------------------------------------------------------------------------
    @classmethod
    def build(cls, tokens: Iterable[str] | Counter, min_count: int = 1, max_size: int | None = None,
              specials: Sequence[str] = (PAD, UNK), unk: str | None = UNK,
              source: str = "the corpus") -> Vocabulary:
        """From a token stream (or a ``Counter`` of one); see :meth:`from_counts`."""
        counter = tokens if isinstance(tokens, Counter) else Counter(tokens)
        return cls.from_counts(list(counter), list(counter.values()), min_count, max_size,
                               specials, unk, source)

    @classmethod
    def from_counts(cls, words: Sequence[str], counts: Sequence[int] | torch.Tensor,
                    min_count: int = 1, max_size: int | None = None,
                    specials: Sequence[str] = (PAD, UNK), unk: str | None = UNK,
                    source: str = "the corpus") -> Vocabulary:
        """Keep the words seen at least ``min_count`` times, the most frequent first, at most
        ``max_size`` entries in all (specials included). ``unk`` (one of ``specials``, or
        None) gets the count of every token left out.

        Raises ``FodlError`` when no word is left (an empty corpus, or ``min_count`` above
        every count), naming ``source``.
        """
        if min_count < 1:
            raise FodlError(f"min_count={min_count}: it must be at least 1.")
        if unk is not None and unk not in specials:
            raise ValueError(f"unk={unk!r} must be one of the specials {list(specials)}")
        counts = torch.as_tensor(counts, dtype=torch.long)
        if len(counts) == 0:
            raise FodlError(f"{source} holds no words, so there is no vocabulary to build. "
                            "Check that the path points at the text itself (a plain-text file, a "
                            "folder of .txt files or an archive of them) and that it is not empty.")
        # by decreasing count, ties in first-appearance order (a stable sort)
        order = torch.sort(counts, descending=True, stable=True).indices
        keep = order[counts[order] >= min_count]
        if max_size is not None:
            if max_size <= len(specials):
                raise FodlError(f"max_size={max_size} leaves no room for words next to the "
                                f"{len(specials)} specials {list(specials)}: raise it.")
            keep = keep[: max_size - len(specials)]
        if len(keep) == 0:
            raise FodlError(f"No word of {source} occurs at least min_count={min_count} times "
                            f"(the most frequent occurs {int(counts.max())} times), so the "
                            "vocabulary would be empty. Lower min_count or use a larger corpus.")
        kept_words = [words[i] for i in keep.tolist()]
        clash = set(kept_words) & set(specials)
        if clash:
            raise FodlError(f"{source} contains the word(s) {sorted(clash)}, which are reserved "
                            "as special tokens. Choose other specials.")
        left_out = int(counts.sum() - counts[keep].sum())
        special_counts = [left_out if s == unk else 0 for s in specials]
        return cls(list(specials) + kept_words, special_counts + counts[keep].tolist(),
                   specials, unk)

    # -- lookups -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> int:
        """The id of ``word`` (the unk id, or -1 without an unk word, when unknown)."""
        return self.index.get(word, self.unk_id)

    def encode(self, tokens: Iterable[str]) -> torch.Tensor:
        """Ids of ``tokens`` (int64); unknown words get the unk id, or -1 without one."""
        get, unk = self.index.get, self.unk_id
        return torch.tensor([get(t, unk) for t in tokens], dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.words[i] for i in ids]

    def special_id(self, token: str) -> int:
        """The id of a reserved token (``PAD``, ``UNK``, ``BOS``, ``EOS``), or a ``FodlError``
        saying the vocabulary was built without it."""
        if token not in self.index:
            raise FodlError(f"This vocabulary has no {token} token (its specials: {self.specials}); "
                            f"build it with specials that include {token!r}.")
        return self.index[token]

    @property
    def pad_id(self) -> int:
        return self.special_id(PAD)

    @property
    def bos_id(self) -> int:
        return self.special_id(BOS)

    @property
    def eos_id(self) -> int:
        return self.special_id(EOS)

    def encode_batch(self, sequences: Sequence[Sequence[str]], max_len: int | None = None,
                     bos: bool = False, eos: bool = False,
                     dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, torch.Tensor]:
        """Numericalise token lists into one padded ``(N, T)`` tensor and their lengths.

        Each sequence is encoded (unknown words -> unk), wrapped in ``BOS``/``EOS`` when asked,
        cut to its first ``max_len`` ids (the ``EOS`` stays last when it is added), and padded
        with ``PAD`` at the end; ``T`` is the longest length (at most ``max_len``). See
        :func:`fodl.text.pad.pad_ids` for the same on id tensors.
        """
        head = [self.bos_id] if bos else []
        tail = [self.eos_id] if eos else []
        get, unk = self.index.get, self.unk_id
        seqs = [head + [get(t, unk) for t in s] + tail for s in sequences]
        if max_len is not None and eos:
            seqs = [s if len(s) <= max_len else s[: max_len - 1] + tail for s in seqs]
        return pad_ids(seqs, self.pad_id if PAD in self.index else 0, max_len, dtype)

    @property
    def num_specials(self) -> int:
        return len(self.specials)

    # -- checkpoints ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain lists and strings: safe for ``torch.load(weights_only=True)``."""
        return {"words": list(self.words), "counts": list(self.counts),
                "specials": list(self.specials), "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        try:
            return cls(d["words"], d["counts"], d.get("specials", ()), d.get("unk"))
        except (KeyError, TypeError) as e:
            raise FodlError(f"The stored vocabulary is malformed ({type(e).__name__}: {e}); it "
                            "was not written by fodl's Vocabulary.to_dict.") from None

    def __repr__(self) -> str:
        head = ", ".join(self.words[:5])
        return f"Vocabulary({len(self)} words: {head}{', ...' if len(self) > 5 else ''})"
