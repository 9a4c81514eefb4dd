"""Checkpoint files that survive a kill at any moment (Lightning's ``CheckpointIO`` plugin).

Lightning's ``TorchCheckpointIO`` serialises a checkpoint into memory and writes it through an
fsspec transaction, whose temporary file lives in the system's temporary directory. On a
cluster that is a node-local disk while ``outputs/`` is on a shared filesystem, so the final
move is a copy *into* ``last.ckpt``: a job killed during that copy (preemption, time limit,
``scancel``, out of memory) leaves a truncated ``last.ckpt`` and no way to resume, and the
temporary file stays behind on the node. Nothing is flushed to disk either, so a node that
loses power can leave an empty file under the checkpoint's name.

:class:`AtomicCheckpointIO` writes the checkpoint to a hidden temporary file in the
checkpoint's own directory, flushes and ``fsync``\\ s it, and renames it over the target with
``os.replace`` (atomic on POSIX filesystems), then syncs the directory. A reader therefore sees
the old complete checkpoint or the new complete one, never a part. It is wired in through the
trainer config (``trainer.plugins``), so every strategy (single device, DDP, multi-node) uses
it for ``last.ckpt``, the best checkpoints and Lightning's own SLURM (``hpc_ckpt_*``) saves.
Remote paths (``s3://`` ...) keep Lightning's own path.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are write-to-temporary, fsync, ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{socket.gethostname()}-"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half-written."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.parent / f"{_tmp_prefix(target)}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch reports a full disk as RuntimeError
            raise unwritable(target, e) from None
        raise
    _fsync_dir(target.parent)


def unwritable(target: Path, e: BaseException) -> Exception:
    """The ``FodlError`` for a file that could not be written (full disk, read-only or missing
    directory, no permission): what happened, that nothing already written was lost, and the fix."""
    import errno

    from fodl.errors import FodlError

    text = " ".join(str(e).split())
    chain = [e]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    code = next((c.errno for c in chain if getattr(c, "errno", None)), None)
    try:
        free = shutil.disk_usage(next(p for p in (target.parent, *target.parents) if p.exists())).free
    except (OSError, StopIteration):
        free = None
    if (code == errno.ENOSPC or any("No space left on device" in str(c) for c in chain)
            or (free is not None and free < 1 << 20)):  # torch's full-disk error names neither
        reason = "no space left on the device" + (f" ({free} bytes free)" if free is not None else "")
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM) or "Read-only file system" in text:
        reason = f"the directory is not writable ({os.strerror(code) if code else text[:200]})"
    else:
        reason = f"{type(e).__name__}: {text[:200]}"
    kept = (f"{target} still holds the previous complete checkpoint" if target.exists()
            else "no partial file was left behind")
    return FodlError(
        f"Could not write {target}: {reason}. Nothing already written was lost ({kept}; the "
        "run's other checkpoints and logs are untouched). Free space or make the directory "
        "writable (or give another one: hydra.run.dir=..., paths.log_dir=...), then continue "
        "the run with ckpt_path=auto.")


def _fsync_dir(d: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries of ``target`` left by killed processes of this host (a process id that
    no longer runs). Others' (another host on a shared filesystem, a live writer) are kept."""
    prefix = _tmp_prefix(target)
    try:
        names = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for p in names:
        pid = p.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except OSError:  # alive but not ours (PermissionError): keep
            pass
