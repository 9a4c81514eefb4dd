"""Pretrained word vectors in word2vec's formats.

word2vec (Mikolov's C tool) and gensim's ``KeyedVectors.save_word2vec_format`` write two
formats:

- **text**: a header line ``<count> <dim>``, then one line per word: the word and ``dim``
  numbers separated by spaces;
- **binary** (``.bin``; the Google News vectors the book used): the same header line, then
  per word the word's UTF-8 bytes, a space, ``dim`` little-endian float32s, and (as word2vec
  writes it) a newline.

A text file without the header (GloVe's ``.txt``) is read too. ``.gz`` files are read through
gzip. The format is told by :func:`read_word2vec`'s ``binary`` argument, else sniffed: a file
whose second line parses as a word and ``dim`` numbers is text.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO, Collection, Iterable

import numpy as np
import torch

from fodl.errors import FodlError


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _header(f: IO[bytes], path: Path) -> tuple[int | None, int | None, bytes]:
    """``(count, dim, first_line)``; count/dim None when the first line is a vector (GloVe)."""
    first = f.readline()
    parts = first.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        count, dim = int(parts[0]), int(parts[1])
        if dim < 1:
            raise FodlError(f"{path}, line 1: the header says dim={dim}; a word2vec file starts "
                            "with '<count> <dim>'.")
        return count, dim, b""
    if len(parts) < 2:
        raise FodlError(f"{path}, line 1: {first[:80]!r} is neither a word2vec header "
                        "('<count> <dim>') nor a word followed by numbers. Give a word2vec "
                        "text/binary file or a GloVe .txt file.")
    return None, None, first


def _sniff_binary(path: Path) -> bool:
    with _open(path) as f:
        count, dim, first = _header(f, path)
        if count is None:
            return False
        line = f.readline(1 << 20)
    try:
        parts = line.decode("utf-8").split()
        if len(parts) != dim + 1:
            return True
        [float(x) for x in parts[1:]]
        return False
    except (UnicodeDecodeError, ValueError):
        return True


def read_word2vec(path: str | Path, wanted: Collection[str] | None = None,
                  binary: bool | None = None, limit: int | None = None
                  ) -> tuple[list[str], torch.Tensor]:
    """``(words, vectors)`` of a word2vec text/binary file (or GloVe text file).

    ``wanted``: keep only these words (a 3-million-word file need not fit in memory);
    ``limit``: read only the first ``limit`` entries (word2vec files are sorted by decreasing
    frequency); ``binary``: the format (None: from the ``.bin`` suffix, else sniffed). A line
    or record that does not parse is a ``FodlError`` naming the file and the entry.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FodlError(f"Word vectors {path} do not exist. Give a word2vec text or binary file "
                        "(e.g. the chapter 6 skip-gram's export, or GoogleNews-vectors-negative300.bin).")
    if binary is None:
        binary = path.name.endswith((".bin", ".bin.gz")) or _sniff_binary(path)
    words: list[str] = []
    rows: list[np.ndarray] = []
    with _open(path) as f:
        count, dim, first = _header(f, path)
        if binary:
            if count is None:
                raise FodlError(f"{path}: a binary word2vec file starts with a '<count> <dim>' "
                                "header line. Is it a text file? Set binary=false.")
            _read_binary(f, path, count, dim, wanted, limit, words, rows)
        else:
            lines = f if not first else _chain([first], f)
            _read_text(lines, path, dim, wanted, limit, words, rows, 1 if first else 2)
    dim = dim if dim is not None else (len(rows[0]) if rows else 0)
    vectors = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, dim or 0)
    return words, vectors.float()


def _chain(first: list[bytes], rest: Iterable[bytes]):
    yield from first
    yield from rest


def _read_text(lines, path, dim, wanted, limit, words, rows, lineno) -> None:
    n = 0
    for lineno, raw in enumerate(lines, lineno):
        if limit is not None and n >= limit:
            break
        line = raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        parts = line.rstrip(" ").split(" ")
        if dim is None:
            dim = len(parts) - 1
        if len(parts) != dim + 1:
            raise FodlError(f"{path}, line {lineno}: expected a word and {dim} numbers, found "
                            f"{len(parts)} fields ({line[:60]!r}...). The file is truncated or "
                            "not in word2vec text format.")
        n += 1
        if wanted is not None and parts[0] not in wanted:
            continue
        try:
            rows.append(np.asarray(parts[1:], dtype=np.float32))
        except ValueError:
            raise FodlError(f"{path}, line {lineno}: the numbers of {parts[0]!r} do not parse "
                            "as floats.") from None
        words.append(parts[0])


def _read_binary(f, path, count, dim, wanted, limit, words, rows) -> None:
    size = 4 * dim
    n = count if limit is None else min(count, limit)
    for i in range(n):
        word = bytearray()
        while True:
            ch = f.read(1)
            if not ch:
                raise FodlError(f"{path}: the file ends in entry {i + 1} of the {count} its "
                                "header announces: it is truncated (or not a binary word2vec file).")
            if ch == b" ":
                break
            if ch != b"\n" or word:  # word2vec writes a newline after each vector
                word += ch
        data = f.read(size)
        if len(data) != size:
            raise FodlError(f"{path}: the vector of entry {i + 1} ({bytes(word[:40])!r}) is cut "
                            "short: the file is truncated.")
        w = word.decode("utf-8", "replace")
        if wanted is None or w in wanted:
            words.append(w)
            rows.append(np.frombuffer(data, dtype="<f4").copy())
