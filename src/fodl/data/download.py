"""Verified downloads, atomic writes, safe archive extraction and a processed-tensor cache."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import torch

from fodl.archive import (
    reading_archive,  # also the readers' import (fodl.data.download.reading_archive)
)
from fodl.errors import FodlError

log = logging.getLogger(__name__)

# What a failed transfer raises: URLError/HTTPError, a dropped or short connection
# (http.client.IncompleteRead and RemoteDisconnected are HTTPExceptions, not OSErrors),
# ConnectionError, timeouts, and any other OSError of the socket or the local file.
TRANSFER_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError, OSError)
# Written last into a folder that ``extract_tar_atomically`` completed.
EXTRACTED_MARK = ".fodl-extracted"


def file_digest(path: str | Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(urls: Sequence[str], dest: Path, md5: str | None = None, timeout: float = 60,
             sha1: str | None = None) -> Path:
    """Download the first mirror that answers to ``dest``, verify its published checksum (md5
    or sha1), move it in atomically.

    A partial or corrupt download never appears under ``dest``'s name. A mirror that fails in
    any way (refused, HTTP error, connection dropped mid-transfer, timeout, wrong checksum) is
    skipped for the next one; ``FodlError`` names every mirror tried and what went wrong when
    none gives a file with the published checksum.
    """
    dest = Path(dest)
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            log.info("downloading %s", url)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                while block := r.read(1 << 20):
                    out.write(block)
            bad = [f"{name} {got}, published {want}" for name, want in (("md5", md5), ("sha1", sha1))
                   if want is not None and (got := file_digest(tmp, name)) != want]
            if bad:
                problems.append(f"{url}: the download fails its checksum ({'; '.join(bad)})")
                continue
            os.replace(tmp, dest)
            return dest
        except TRANSFER_ERRORS as e:
            problems.append(f"{url}: {type(e).__name__}: {' '.join(str(e).split()) or repr(e)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    for d in created:  # a mistyped paths.data_dir is not left behind as empty directories
        try:
            d.rmdir()
        except OSError:
            break
    raise FodlError(
        f"Could not download {dest.name} (" + "; ".join(problems) + "). "
        f"Put the file at {dest} yourself, or point paths.data_dir (env FODL_DATA_DIR) at a "
        "directory that has it."
    )


def check_tar_members(archive: Path, members: Sequence[tarfile.TarInfo]) -> None:
    """Refuse (``FodlError``) an archive with a member that is not a plain file or folder, or
    whose name is absolute or climbs with ``..``: what ``safe_extract_tar`` refuses to
    extract, for readers that take members out of an archive in place."""
    for m in members:
        parts = m.name.replace("\\", "/").split("/")
        if not (m.isfile() or m.isdir()) or m.name.startswith(("/", "\\")) or ".." in parts \
                or (len(m.name) > 1 and m.name[1] == ":"):
            raise FodlError(f"{archive} holds an unsafe member {m.name!r} (an absolute path, '..', "
                            "a link or a device); refusing to read it. Use the official archive.")


def safe_extract_tar(archive: Path, dest: Path) -> None:
    """Extract a tar archive refusing absolute paths, '..', links and devices.

    A truncated or corrupt archive raises ``FodlError`` (see ``reading_archive``)."""
    dest = Path(dest).resolve()
    with reading_archive(archive), tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()) or not str(target).startswith(str(dest) + os.sep):
                raise FodlError(f"{archive} holds an unsafe member {m.name!r}; refusing to extract it.")
        tar.extractall(dest, members=members, filter="data")


def extract_tar_atomically(archive: Path, top: str) -> Path:
    """Extract ``archive``, whose members all lie under the folder ``top``, next to it, so that
    ``archive.parent / top`` appears complete or not at all.

    Extraction goes into a temporary sibling folder (``.<top>.partial-*``), ``EXTRACTED_MARK``
    is written into ``top`` last, and only then is ``top`` renamed into place; an interrupted
    or failed extraction removes the temporary folder (a killed process leaves only that
    hidden folder, which no reader looks at). Returns ``archive.parent / top``.
    """
    archive = Path(archive)
    final = archive.parent / top
    tmp = Path(tempfile.mkdtemp(dir=archive.parent, prefix=f".{top}.partial-"))
    try:
        safe_extract_tar(archive, tmp)
        if not (tmp / top).is_dir() or any(p.name != top for p in tmp.iterdir()):
            raise FodlError(f"{archive} does not hold a single top folder {top}/: not the "
                            "expected archive. Delete it and download it again.")
        (tmp / top / EXTRACTED_MARK).write_text(f"extracted completely from {archive.name}\n")
        try:
            os.rename(tmp / top, final)
        except OSError:
            if not (final / EXTRACTED_MARK).is_file():  # not a concurrent run that won the race
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    """A cache key that changes when any source file changes (name, size, mtime).

    A directory stands for every file under it: their relative names, sizes and mtimes all
    enter the key (one ``stat`` per file, no reading), so an edit anywhere in the tree counts.
    """
    h = hashlib.sha1()
    for p in paths:
        p = Path(p)
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                rel = os.path.relpath(dirpath, p)
                for name in sorted(filenames):
                    fst = os.stat(os.path.join(dirpath, name))
                    h.update(f"\n{rel}/{name}|{fst.st_size}|{fst.st_mtime_ns}".encode())
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
