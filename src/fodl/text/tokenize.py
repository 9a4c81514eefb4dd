"""Tokenisation shared by every text model: lowercase, words are runs of letters.

This is text8's normalisation (Mahoney's ``wikifil.pl``: lowercase, every character that is not
a letter separates words) except that letters outside a-z are kept as letters (``café`` stays
one word) and digits separate words instead of being spelled out. On text8 itself it is the
identity: text8 is already lowercase a-z words separated by single spaces. It differs from
gensim's ``simple_preprocess`` only in keeping one-letter words (``a``, ``i``) and words longer
than 15 letters. Apostrophes separate too, as in text8 (``don't`` -> ``don``, ``t``).
"""

from __future__ import annotations

import re

WORD_RE = re.compile(r"[^\W\d_]+")  # a maximal run of (Unicode) letters
HTML_TAG_RE = re.compile(r"<[^>]{0,200}>")  # e.g. IMDB's <br />


def tokenize(text: str, lowercase: bool = True, strip_html: bool = False) -> list[str]:
    """The words of ``text``: maximal runs of letters, lowercased by default.

    ``strip_html`` first replaces markup tags (``<br />``) by spaces, so they do not leave
    words such as ``br`` behind.
    """
    if strip_html:
        text = HTML_TAG_RE.sub(" ", text)
    if lowercase:
        text = text.lower()
    return WORD_RE.findall(text)


# -- tokenizers that keep punctuation and numbers (sentiment, tagging, seq2seq) -------------
# A word: letters with inner apostrophes or hyphens (don't, well-known, o'clock); a number:
# digits with inner . , : / (3.5, 1,000, 10/10, 9:30); anything else that is not a space is a
# token of its own (! ? . , " ( ...).
_WORD_PUNCT_RE = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*|\d+(?:[.,:/]\d+)*|[^\w\s]|_+")


def word_tokenize(text: str, lowercase: bool = True, strip_html: bool = True) -> list[str]:
    """Words, numbers and punctuation marks of ``text`` (the sentiment model's tokenizer).

    Unlike :func:`tokenize` it keeps ``!``, ``?`` and ratings such as ``10/10`` (sentiment
    cues) and keeps contractions whole (``don't``, ``isn't``); ``strip_html`` removes markup
    such as IMDB's ``<br />`` first. Lowercased by default.
    """
    if strip_html:
        text = HTML_TAG_RE.sub(" ", text)
    if lowercase:
        text = text.lower()
    return _WORD_PUNCT_RE.findall(text)


# Penn Treebank conventions, as in the WSJ text of CoNLL-2000: clitics split off ("do n't",
# "John 's", "we 're"), punctuation separate, but abbreviations with inner periods (U.S., Corp.
# at the end of a token followed by more text), numbers (3.5, 1,000) and hyphenated words kept.
_TB_CLITICS = re.compile(r"(?i)(n't|'s|'re|'ve|'ll|'d|'m)$")
_TB_TOKEN = re.compile(
    r"(?:[A-Za-z]\.){2,}"                       # U.S. , p.m.
    r"|\d+(?:[.,:/]\d+)*"                       # 3.5 1,000 9:30
    r"|[^\W\d_]+(?:[\-'’][^\W\d_]+)*(?:n't)?"   # words, well-known, don't (clitic split below)
    r"|'(?:s|re|ve|ll|d|m)\b"                   # a clitic after a number or punctuation
    r"|\.\.\.|--|``|''|[^\w\s]", re.IGNORECASE)
_TB_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "co", "corp", "inc", "ltd", "vs", "jan",
              "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}


def treebank_tokenize(text: str) -> list[str]:
    """Split a raw English sentence the way the Penn Treebank (and so CoNLL-2000) is split,
    case kept: ``"The woman, after grabbing her umbrella, went ..."`` -> ``The woman , after
    ...``; ``don't`` -> ``do n't``; ``John's`` -> ``John 's``; ``Corp.`` and ``U.S.`` keep
    their period; double quotes become the Treebank's `````` / ``''``. A simple regex
    version of the Treebank rules: enough for tagging a sentence typed on the command line."""
    text = re.sub(r'^"|(?<=[\s(\[{])"', " `` ", text)
    text = text.replace('"', " '' ")
    out: list[str] = []
    tokens = _TB_TOKEN.findall(text)
    for i, tok in enumerate(tokens):
        m = _TB_CLITICS.search(tok)
        if m and m.start() > 0:
            out += [tok[: m.start()], tok[m.start():]]
        elif tok == "." and out and out[-1].lower() in _TB_ABBREV and i + 1 < len(tokens):
            out[-1] += "."  # Corp. / Mr. in mid-sentence
        else:
            out.append(tok)
    return out


TOKENIZERS = {"letters": tokenize, "words": word_tokenize, "treebank": treebank_tokenize}


def get_tokenizer(name: str):
    """The tokenizer called ``name`` (``letters``: :func:`tokenize`; ``words``:
    :func:`word_tokenize`; ``treebank``: :func:`treebank_tokenize`)."""
    try:
        return TOKENIZERS[name]
    except KeyError:
        from fodl.errors import FodlError

        raise FodlError(f"Unknown tokenizer {name!r}: choose one of {sorted(TOKENIZERS)}.") from None
