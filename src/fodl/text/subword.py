"""Byte-pair-encoding subwords on top of fodl's word tokens (``data.subword=bpe``).

The words come from fodl's own tokenizer (:func:`fodl.text.tokenize.word_tokenize`); BPE
(Sennrich et al. 2016, Hugging Face ``tokenizers``) then splits each word into pieces learned
from the training side of the corpus, a word-initial piece as is and every later piece with
the prefix ``##`` (``playing -> play ##ing``), so that :meth:`SubwordCodec.join` rebuilds the
words exactly. A piece never seen in training becomes ``<unk>``. The learned model is a JSON
string, kept in checkpoints with the vocabularies, so translating raw text needs only the
checkpoint.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from fodl.errors import FodlError

PREFIX = "##"
UNK = "<unk>"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise FodlError("data.subword=bpe needs the `tokenizers` package (Hugging Face): "
                        "pip install -e '.[subword]' (or pip install tokenizers), or set "
                        "data.subword=null for whole words.") from None
    return tokenizers


class SubwordCodec:
    """Words <-> BPE pieces. Build with :meth:`train` or :meth:`from_str`."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, sentences: Iterable[Sequence[str]], vocab_size: int,
              min_frequency: int = 2) -> "SubwordCodec":
        """Learn ``vocab_size`` pieces (at most) from tokenised training sentences."""
        if vocab_size < 2:
            raise FodlError(f"data.subword_vocab_size={vocab_size}: give the number of BPE "
                            "pieces per language, e.g. 8000.")
        tk = _tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE(unk_token=UNK, continuing_subword_prefix=PREFIX))
        tokenizer.pre_tokenizer = tk.pre_tokenizers.WhitespaceSplit()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                         special_tokens=[UNK], continuing_subword_prefix=PREFIX,
                                         show_progress=False)
        tokenizer.train_from_iterator((" ".join(s) for s in sentences), trainer)
        return cls(tokenizer)

    @classmethod
    def from_str(cls, state: str) -> "SubwordCodec":
        return cls(_tokenizers().Tokenizer.from_str(state))

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def split(self, words: Sequence[str]) -> list[str]:
        """The pieces of a tokenised sentence."""
        if not words:
            return []
        return self.tokenizer.encode(list(words), is_pretokenized=True).tokens

    def split_all(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        out = [[] for _ in sentences]
        todo = [i for i, s in enumerate(sentences) if s]
        encoded = self.tokenizer.encode_batch([list(sentences[i]) for i in todo],
                                              is_pretokenized=True)
        for i, e in zip(todo, encoded):
            out[i] = e.tokens
        return out

    @staticmethod
    def join(pieces: Sequence[str]) -> list[str]:
        """Pieces back to words: a ``##`` piece continues the word before it."""
        words: list[str] = []
        for p in pieces:
            if p.startswith(PREFIX) and words:
                words[-1] += p[len(PREFIX):]
            else:
                words.append(p[len(PREFIX):] if p.startswith(PREFIX) else p)
        return words


def codecs_from_settings(settings: dict) -> dict[str, SubwordCodec]:
    """The codecs a text model's settings hold (``settings["subword"]``: side -> JSON)."""
    return {side: SubwordCodec.from_str(state) for side, state in (settings.get("subword") or {}).items()}


__all__ = ["SubwordCodec", "codecs_from_settings"]
