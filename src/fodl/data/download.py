"""Verified downloads, atomic writes, safe archive extraction and a processed-tensor cache."""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import torch

from fodl.errors import FodlError

log = logging.getLogger(__name__)


def file_digest(path: str | Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(urls: Sequence[str], dest: Path, md5: str | None = None, timeout: float = 60) -> Path:
    """Download the first mirror that answers to ``dest``, verify its md5, move it in atomically.

    A partial or corrupt download never appears under ``dest``'s name. Raises ``FodlError``
    naming every mirror tried when none gives a file with the published checksum.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            log.info("downloading %s", url)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                while block := r.read(1 << 20):
                    out.write(block)
            if md5 is not None and (got := file_digest(tmp, "md5")) != md5:
                problems.append(f"{url}: md5 {got} != published {md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            problems.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise FodlError(
        f"Could not download {dest.name} (" + "; ".join(problems) + "). "
        f"Put the file at {dest} yourself, or point paths.data_dir (env FODL_DATA_DIR) at a "
        "directory that has it."
    )


def safe_extract_tar(archive: Path, dest: Path) -> None:
    """Extract a tar archive refusing absolute paths, '..', links and devices."""
    dest = Path(dest).resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()) or not str(target).startswith(str(dest) + os.sep):
                raise FodlError(f"{archive} holds an unsafe member {m.name!r}; refusing to extract it.")
        tar.extractall(dest, members=members, filter="data")


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def source_key(paths: Sequence[Path]) -> str:
    """A cache key that changes when any source file changes (name, size, mtime)."""
    h = hashlib.sha1()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached(cache_dir: str | Path | None, name: str, sources: Sequence[Path], build):
    """Return ``build()``'s result, cached under ``cache_dir`` keyed by the sources' identity.

    A cache file that cannot be read is rebuilt (and replaced atomically), never trusted.
    """
    if not cache_dir:
        return build()
    path = Path(cache_dir) / f"{name}-{source_key(sources)}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # corrupt / truncated cache: rebuild it
            log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, e)
    obj = build()
    try:
        atomic_torch_save(obj, path)
    except OSError as e:
        log.warning("could not write cache %s (%s); continuing without it", path, e)
    return obj
