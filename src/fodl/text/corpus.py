"""Corpus readers: a plain-text file, a folder of them, or an archive read in place.

Every reader yields documents, one per line of text (as gensim's ``LineSentence``; an IMDB
review is one line, text8 is one 100 MB line). Supported inputs:

- a plain-text file (any name), or one compressed with gzip (``.gz``: Multi30k's ``train.en.gz``);
- a folder: its files (recursively, in sorted order) whose relative path matches ``members``;
- a tar archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``), read member by
  member without extracting it (``aclImdb_labelled_50k.tar.gz``), or a ``.zip`` (``text8.zip``).

``members`` is a list of shell patterns (``fnmatch``, where ``*`` also matches ``/``) on the
path inside the folder or archive; None takes every regular file.

:func:`encode_corpus` turns a corpus into one int tensor of word ids in a single pass.
"""

from __future__ import annotations

import fnmatch
import gzip
import os
import tarfile
import zipfile
import zlib
from array import array
from pathlib import Path
from typing import Iterator, Sequence

import torch

from fodl.archive import reading_archive
from fodl.errors import FodlError
from fodl.text.tokenize import WORD_RE, tokenize

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
PIECE = 1 << 22  # a long line (text8) is tokenised 4 MB at a time, so memory stays bounded


def _wanted(name: str, members: Sequence[str] | None) -> bool:
    return members is None or any(fnmatch.fnmatchcase(name, p) for p in members)


def iter_sources(path: str | Path, members: Sequence[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, raw bytes)`` of each text source under ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FodlError(f"Corpus {path} does not exist. Give data.corpus a plain-text file, a "
                        "folder of text files or an archive of them (relative paths are taken "
                        "under paths.data_dir / $FODL_DATA_DIR).")
    found = False
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(root, name), path)
                if _wanted(rel, members):
                    found = True
                    yield str(path / rel), (path / rel).read_bytes()
    elif path.name.endswith(TAR_SUFFIXES):
        with reading_archive(path), tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.isfile() and _wanted(m.name, members):
                    found = True
                    yield f"{path}:{m.name}", tar.extractfile(m).read()
    elif path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if not info.is_dir() and _wanted(info.filename, members):
                        found = True
                        yield f"{path}:{info.filename}", z.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise FodlError(f"{path} is truncated or corrupt, so it cannot be read ({e}). "
                            "Delete it and download it again, or replace it with an intact copy.") from None
    elif path.suffix == ".gz":
        try:
            found = True
            yield str(path), gzip.decompress(path.read_bytes())
        except (gzip.BadGzipFile, zlib.error, EOFError) as e:
            raise FodlError(f"{path} is not a readable gzip file ({e}). Replace it with an intact "
                            "copy, or decompress it and point data.corpus at the plain text.") from None
    else:
        found = True
        yield str(path), path.read_bytes()
    if not found:
        raise FodlError(f"Corpus {path} has no file matching data.members={list(members or [])}. "
                        "Fix the patterns (shell patterns on the path inside the folder/archive) "
                        "or set data.members=null to read every file.")


def decode(name: str, data: bytes, encoding: str = "utf-8", errors: str = "strict") -> str:
    """``data`` as text, or a ``FodlError`` naming the file, line and byte that do not decode."""
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.start + 8]
        raise FodlError(
            f"{name}, line {line} (byte {e.start}): {bad!r} is not valid {encoding} ({e.reason}). "
            f"The corpus must be text in data.encoding={encoding}. Convert the file (e.g. "
            f"`iconv -f latin1 -t utf-8 in.txt > out.txt`), set data.encoding to the file's real "
            "encoding (latin-1 accepts every byte), or set data.encoding_errors=replace to turn "
            "undecodable bytes into U+FFFD."
        ) from None
    except LookupError:
        raise FodlError(f"data.encoding={encoding!r} is not an encoding Python knows "
                        "(e.g. utf-8, latin-1, cp1252).") from None


def read_text_file(path: str | Path, what: str, fix: str = "") -> str:
    """The UTF-8 text of a plain or ``.gz`` file; a ``FodlError`` names ``path`` (described as
    ``what``, e.g. "CoNLL file") when it is missing, not gzip, or not UTF-8. ``fix`` is added to
    the message of a damaged gzip file (e.g. how to fetch an intact copy)."""
    path = Path(path)
    if not path.is_file():
        raise FodlError(f"{what} {path} does not exist.")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise FodlError(f"{path} is not a readable gzip file ({e}). Replace it with an intact "
                            f"copy{fix}.") from None
    return decode(str(path), raw)


def iter_documents(path: str | Path, members: Sequence[str] | None = None, encoding: str = "utf-8",
                   errors: str = "strict", max_documents: int | None = None) -> Iterator[str]:
    """The non-empty lines of every source under ``path``, at most ``max_documents`` of them."""
    n = 0
    for name, data in iter_sources(path, members):
        for line in decode(name, data, encoding, errors).split("\n"):
            if line.strip():
                yield line
                n += 1
                if max_documents is not None and n >= max_documents:
                    return


def _pieces(line: str, size: int = PIECE) -> Iterator[str]:
    """``line`` cut into pieces of about ``size`` characters at whitespace (no word is split)."""
    start = 0
    while len(line) - start > size:
        cut = line.rfind(" ", start + size // 2, start + size)
        cut = start + size if cut < 0 else cut
        yield line[start:cut]
        start = cut
    yield line[start:]


def encode_corpus(path: str | Path, members: Sequence[str] | None = None, lowercase: bool = True,
                  strip_html: bool = False, encoding: str = "utf-8", errors: str = "strict",
                  max_documents: int | None = None) -> dict:
    """The whole corpus as one int tensor of word ids, in a single pass over the text.

    Returns plain data (cacheable, safe for ``torch.load(weights_only=True)``):
    ``ids`` (int32, one per token, id = rank by decreasing count), ``doc_lengths`` (int64, tokens
    per document), ``words`` (every word type, by decreasing count, ties in first-appearance
    order) and ``counts`` (int64). No word is dropped here: min_count / max_size are applied by
    :class:`~fodl.text.vocab.Vocabulary`.
    """
    index: dict[str, int] = {}
    setdefault = index.setdefault
    ids, doc_lengths = array("i"), array("q")
    plain = not strip_html  # the fast path: no markup to remove, one regex pass
    for line in iter_documents(path, members, encoding, errors, max_documents):
        start = len(ids)
        for piece in _pieces(line, PIECE):
            toks = WORD_RE.findall(piece.lower() if lowercase else piece) if plain else \
                tokenize(piece, lowercase, strip_html)
            ids.extend([setdefault(w, len(index)) for w in toks])
        if len(ids) > start:
            doc_lengths.append(len(ids) - start)
    first_seen = torch.frombuffer(ids, dtype=torch.int32).long() if ids else torch.zeros(0, dtype=torch.long)
    counts = torch.bincount(first_seen, minlength=len(index))
    order = torch.sort(counts, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    words = list(index)
    return {
        "ids": rank[first_seen].to(torch.int32),
        "doc_lengths": torch.tensor(doc_lengths, dtype=torch.long),
        "words": [words[i] for i in order.tolist()],
        "counts": counts[order],
    }
