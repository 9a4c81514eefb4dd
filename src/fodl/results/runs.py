"""One registry run on disk: ``outputs/reproduce/<id>/seed<k>/``, a Hydra run directory of
``scripts/train.py`` plus this package's ``reproduce.json`` (which overrides and seed it ran,
how it ended, its wall time over all attempts, the git commit, the hardware and the command)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fodl.results.registry import BEST_CHECKPOINT, REPO, Entry

RECORD = "reproduce.json"
#: which process is running the directory's run now (removed when it ends)
OWNER = ".reproduce.owner"
#: the pipeline's own files: changing them does not change what a run computes
_OWN = (":(exclude)src/fodl/results", ":(exclude)scripts/reproduce.py", ":(exclude)conf/reproduce.yaml")


def run_dir(root: str | Path, entry: Entry, seed: int) -> Path:
    return Path(root) / entry.runs_id / f"seed{seed}"


@dataclass
class SeedRun:
    """What is on disk for one (entry, seed)."""
    seed: int
    path: Path
    state: str  # finished | failed | interrupted | stale | missing
    metrics: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.record.get("error")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def inspect(root: str | Path, entry: Entry, seed: int) -> SeedRun:
    """The state of one run directory. *finished*: ``metrics.json`` present and the run was made
    with this entry's overrides and seed; *stale*: made with other overrides (the registry
    changed); *interrupted*: started, no result yet (a ``last.ckpt`` lets it continue);
    *failed*: the last attempt ended with an error; *missing*: never started."""
    return inspect_dir(run_dir(root, entry, seed), entry, seed)


def inspect_dir(d: Path, entry: Entry, seed: int) -> SeedRun:
    """:func:`inspect` of a run directory ``d`` wherever it is (e.g. one made on another machine)."""
    record = read_json(d / RECORD)
    if not d.is_dir() or not record:
        return SeedRun(seed, d, "missing")
    if list(record.get("overrides") or []) != list(entry.overrides) or record.get("seed") != seed:
        return SeedRun(seed, d, "stale", record=record)
    raw = read_json(d / "metrics.json")
    try:
        metrics = {k: float(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        metrics = {}
    if metrics and record.get("status") == "completed":
        return SeedRun(seed, d, "finished", metrics, record)
    if record.get("status") == "failed":
        return SeedRun(seed, d, "failed", record=record)
    return SeedRun(seed, d, "interrupted", record=record)


def last_checkpoint(d: Path) -> Path | None:
    found = sorted(d.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def best_checkpoint(d: Path) -> Path | None:
    """The best checkpoint of a finished run in ``d`` (the newest, if a resumed run left more
    than one); ``None`` when the run has not finished or its checkpoints are gone."""
    if read_json(d / RECORD).get("status") != "completed":
        return None
    found = sorted(d.glob(BEST_CHECKPOINT), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def claim(d: Path) -> str | None:
    """Take run directory ``d`` for this process (``OWNER``: pid, host, since); ``None`` when
    taken, else why not: another process that is still alive runs it. A file left by a process
    that is gone (killed, machine restarted) is taken over."""
    f = d / OWNER
    me = {"pid": os.getpid(), "host": platform.node(),
          "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for _ in range(3):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = read_json(f)
            if _alive(holder):
                return (f"being run by process {holder.get('pid')} on {holder.get('host')} since "
                        f"{holder.get('since')}; if no such process runs, delete {f}")
            f.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(fd, "w") as out:
            json.dump(me, out)
        return None
    return f"{f} keeps coming back: another scripts/reproduce.py is taking this run"


def running(d: Path) -> bool:
    """Whether a live process runs ``d``'s run now (it holds the directory: :func:`claim`)."""
    f = d / OWNER
    return f.is_file() and _alive(read_json(f))


def release(d: Path) -> None:
    f = d / OWNER
    if read_json(f).get("pid") == os.getpid():
        f.unlink(missing_ok=True)


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the process named by an ``OWNER`` file still runs (one on another machine, e.g.
    a cluster's shared disk, cannot be checked from here: assumed alive)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != platform.node():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def write_record(d: Path, record: dict[str, Any]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{RECORD}.part"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(d / RECORD)


def git_commit() -> str:
    """fodl's commit (short), with ``+dirty`` when what a training run executes (src/, conf/,
    scripts/ except this pipeline's own files) has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "conf", "scripts", *_OWN],
                               cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first GPU's name (nvidia-smi, else torch)."""
    out = ""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
    if out:
        return out.splitlines()[0].strip()
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a name is a nicety; no GPU name is not an error
        return None


def hardware(device: str) -> str:
    """``<CPU model>, <threads> threads`` (``OMP_NUM_THREADS`` when set, else the CPU count), and
    the GPU's name for a gpu run."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or "?")
    text = f"{cpu_model()}, {threads} thread{'' if threads == '1' else 's'}"
    if device == "gpu":
        text = f"{gpu_name() or 'GPU (name unknown)'}; host {text}"
    return text


def last_error(log_file: Path) -> str | None:
    """The last line of a log that names an error (a FodlError paragraph or a traceback's end)."""
    try:
        lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        if "error" in line.lower() or "exception" in line.lower() or "killed" in line.lower():
            return line[:400]
    return lines[-1][:400] if lines else None
