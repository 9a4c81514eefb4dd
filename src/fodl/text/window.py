"""Fixed-size windows of token features: the input of the neural n-gram tagger (chapter 7).

Every token gets a row of integer features:

- column 0: its word id in a :class:`~fodl.text.vocab.Vocabulary` of normalised word forms
  (lowercased and digits mapped to ``0`` by default, so ``1987`` and ``2001`` share ``0000``);
  words not in it get ``<unk>``;
- column 1: its *shape* (:data:`SHAPES`: lowercase, Capitalised, UPPER, number, punctuation
  ...), which keeps the case information that lowercasing drops;
- columns 2...: its suffixes of the lengths in ``suffix_lengths`` (e.g. ``-s``, ``-ed``,
  ``-ing``), ids in a second vocabulary: what a word's tag mostly depends on when the word
  itself is unknown.

The window of token ``i`` is the rows of tokens ``i - left .. i + right`` of **its own
sentence**: positions before the sentence's start are the ``<bos>`` row, positions after its
end the ``<eos>`` row, never tokens of the neighbouring sentence. The book's tagger is
``left=2, right=0`` (the word and the two before it) with word features only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

import torch

from fodl.text.vocab import BOS, EOS, PAD, UNK, Vocabulary

SPECIALS = (PAD, UNK, BOS, EOS)
SHAPES = (PAD, BOS, EOS, "lower", "Title", "UPPER", "mixed", "number", "has_digit", "punct",
          "other")
_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}


def word_shape(word: str) -> str:
    """One of :data:`SHAPES` for a raw word form."""
    if not word:
        return "other"
    if any(c.isdigit() for c in word):
        return "number" if all(c.isdigit() or c in ".,:/-%" for c in word) else "has_digit"
    if not any(c.isalnum() for c in word):
        return "punct"
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return "other"
    if all(c.islower() for c in letters):
        return "lower"
    if all(c.isupper() for c in letters):
        return "UPPER" if len(letters) > 1 else "Title"
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return "Title"
    return "mixed"


class WindowFeaturizer:
    """Word / shape / suffix features of tokens and their sentence-bounded windows.

    Args:
        words: vocabulary of normalised word forms (specials ``<pad> <unk> <bos> <eos>``).
        suffixes: vocabulary of ``"<length>:<suffix>"`` keys (same specials), or None when
            ``suffix_lengths`` is empty.
        left, right: context words before / after the tagged word.
        suffix_lengths: suffix features, e.g. ``(1, 2, 3)``; ``()`` for none.
        lowercase, normalize_digits: how a word form is normalised for the word vocabulary.
    """

    def __init__(self, words: Vocabulary, suffixes: Vocabulary | None, left: int = 1,
                 right: int = 1, suffix_lengths: Sequence[int] = (1, 2, 3),
                 lowercase: bool = True, normalize_digits: bool = True) -> None:
        if left < 0 or right < 0:
            raise ValueError(f"window sides must be >= 0, got left={left}, right={right}")
        self.words, self.suffixes = words, suffixes
        self.left, self.right = int(left), int(right)
        self.suffix_lengths = [int(n) for n in suffix_lengths]
        if self.suffix_lengths and suffixes is None:
            raise ValueError("suffix_lengths given but no suffix vocabulary")
        self.lowercase, self.normalize_digits = lowercase, normalize_digits
        self._digits = str.maketrans("0123456789", "0000000000")
        pad_suffix = [suffixes.special_id(s) for s in (BOS, EOS)] if self.suffix_lengths else [0, 0]
        self._bos_row = [words.bos_id, _SHAPE_ID[BOS]] + [pad_suffix[0]] * len(self.suffix_lengths)
        self._eos_row = [words.eos_id, _SHAPE_ID[EOS]] + [pad_suffix[1]] * len(self.suffix_lengths)

    @property
    def width(self) -> int:
        """Words per window."""
        return self.left + 1 + self.right

    @property
    def num_features(self) -> int:
        """Features per word: word id, shape, one per suffix length."""
        return 2 + len(self.suffix_lengths)

    # -- building ------------------------------------------------------------------------
    def key(self, word: str) -> str:
        """The normalised form looked up in the word vocabulary."""
        if self.lowercase:
            word = word.lower()
        return word.translate(self._digits) if self.normalize_digits else word

    @staticmethod
    def suffix_keys(key: str, lengths: Sequence[int]) -> list[str]:
        return [f"{n}:{key[-n:]}" for n in lengths]

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], left: int = 1, right: int = 1,
              suffix_lengths: Sequence[int] = (1, 2, 3), lowercase: bool = True,
              normalize_digits: bool = True, min_count: int = 1, max_words: int | None = None,
              max_suffixes: int | None = None, extra_words: Sequence[str] = (),
              source: str = "the training split") -> WindowFeaturizer:
        """Vocabularies from the (training) ``sentences``: word forms seen ``min_count`` times,
        at most ``max_words`` entries; then ``extra_words`` (e.g. the words of pretrained
        vectors, most frequent first) fill the room left, so their vectors are used for words
        the training split does not have."""
        probe = cls(Vocabulary(list(SPECIALS), specials=SPECIALS, unk=UNK), None, left, right, (),
                    lowercase, normalize_digits)
        keys = Counter(probe.key(w) for s in sentences for w in s)
        words = Vocabulary.build(keys, min_count, max_words, SPECIALS, UNK, source)
        if extra_words:
            room = (max_words or 10**12) - len(words)
            seen = set(words.words)
            extra: list[str] = []
            for w in extra_words:
                if len(extra) >= room:
                    break
                k = probe.key(w)
                if k not in seen:
                    seen.add(k)
                    extra.append(k)
            words = Vocabulary(words.words + extra, words.counts + [0] * len(extra), SPECIALS, UNK)
        suffixes = None
        if suffix_lengths:
            sc: Counter = Counter()  # suffix counts in tokens
            for k, c in keys.items():
                for s in cls.suffix_keys(k, suffix_lengths):
                    sc[s] += c
            suffixes = Vocabulary.build(sc, 1, max_suffixes, SPECIALS, UNK, source)
        return cls(words, suffixes, left, right, suffix_lengths, lowercase, normalize_digits)

    # -- features ------------------------------------------------------------------------
    def token_rows(self, sentence: Sequence[str]) -> list[list[int]]:
        """One feature row per word of ``sentence``."""
        wget, wunk = self.words.index.get, self.words.unk_id
        rows = []
        for w in sentence:
            k = self.key(w)
            row = [wget(k, wunk), _SHAPE_ID[word_shape(w)]]
            if self.suffix_lengths:
                sget, sunk = self.suffixes.index.get, self.suffixes.unk_id
                row += [sget(s, sunk) for s in self.suffix_keys(k, self.suffix_lengths)]
            rows.append(row)
        return rows

    def windows(self, sentences: Sequence[Sequence[str]]) -> torch.Tensor:
        """``(tokens, width, num_features)`` int64: the window of every token of every
        sentence, in order (sentence edges padded with the ``<bos>`` / ``<eos>`` rows)."""
        stream: list[list[int]] = []
        positions: list[int] = []
        for s in sentences:
            stream += [self._bos_row] * self.left
            start = len(stream)
            stream += self.token_rows(s)
            positions.extend(range(start, start + len(s)))
            stream += [self._eos_row] * self.right
        if not positions:
            return torch.zeros(0, self.width, self.num_features, dtype=torch.long)
        table = torch.tensor(stream, dtype=torch.long)
        pos = torch.tensor(positions, dtype=torch.long)
        offsets = torch.arange(-self.left, self.right + 1)
        return table[pos.unsqueeze(1) + offsets]

    # -- checkpoints ---------------------------------------------------------------------
    def vocabularies(self) -> dict[str, Vocabulary]:
        out = {"words": self.words}
        if self.suffixes is not None:
            out["suffixes"] = self.suffixes
        return out

    def settings(self) -> dict[str, Any]:
        return {"left": self.left, "right": self.right, "suffix_lengths": list(self.suffix_lengths),
                "lowercase": self.lowercase, "normalize_digits": self.normalize_digits}

    @classmethod
    def from_state(cls, vocabularies: dict[str, Vocabulary], settings: dict[str, Any]) -> WindowFeaturizer:
        return cls(vocabularies["words"], vocabularies.get("suffixes"), settings["left"],
                   settings["right"], settings["suffix_lengths"], settings["lowercase"],
                   settings["normalize_digits"])
