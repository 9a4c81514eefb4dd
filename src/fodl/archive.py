"""Reading a (compressed) archive in place: one clear error for a truncated or corrupt file.

Below both the text toolkit (corpus archives) and the data layer (dataset archives), so every
reader of an archive says the same thing about a broken one.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

from fodl.errors import FodlError

# What reading a truncated or corrupt (compressed) tar archive raises.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


@contextlib.contextmanager
def reading_archive(archive: Path) -> Iterator[None]:
    """Turn the low-level errors of a truncated or corrupt archive (tarfile, EOFError, zlib,
    ...) raised inside the block into one ``FodlError`` naming the archive and the fix."""
    try:
        yield
    except ARCHIVE_ERRORS as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise FodlError(
            f"{archive} is truncated or corrupt, so it cannot be read ({type(e).__name__}: "
            f"{detail}). Delete it and download it again (with data.download=true the official "
            "archive is fetched and md5-verified), or replace it with an intact copy."
        ) from None
