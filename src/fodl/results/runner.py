"""Run what the registry is missing: every seed of every selected entry, each in its own run
directory, resumable across restarts (``scripts/reproduce.py``).

- a *finished* run (same overrides and seed, ``metrics.json`` present) is skipped;
- an *interrupted* one (started, no result) continues from its ``last.ckpt`` with
  the ``last.ckpt`` of its own run directory (given by path: ``ckpt_path=auto`` would take
  any run of the same overrides apart from ``trainer.max_epochs``, e.g. another entry's);
- a *failed* one is run again, and if it fails again it is reported while the others go on;
- a *stale* one (made with other overrides: the registry changed) is moved aside to
  ``seed<k>.stale-<n>`` and run afresh; nothing already written is deleted;
- a seed the run ledger (``results/runs/``, :mod:`fodl.results.ledger`) holds with the same
  overrides is finished too, even when its run directory is gone (a fresh clone); every run
  that finishes is recorded there. ``rerun=True`` runs the selected seeds again: finished run
  directories are moved aside to ``seed<k>.rerun-<n>``, and each new run replaces its record.

``smoke=True`` runs every selected entry's first seed for a few batches of one epoch under
``outputs/reproduce-smoke/`` (a check that each entry still runs end to end, not a result);
script entries (peers and analyses run by a script of this repository) are left out of it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fodl.errors import FodlError
from fodl.results import ledger
from fodl.results.registry import Entry
from fodl.results.runs import (
    RECORD,
    REPO,
    best_checkpoint,
    claim,
    git_commit,
    hardware,
    inspect,
    inspect_dir,
    last_checkpoint,
    last_error,
    read_json,
    release,
    run_dir,
    write_record,
)

TRAIN = REPO / "scripts" / "train.py"
LOG = "reproduce.log"
#: a few batches of one epoch (``++``: add the key, or replace it when the config has it)
SMOKE = ("trainer.max_epochs=1", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=2",
         "++trainer.limit_test_batches=2")


@dataclass
class Job:
    entry: Entry
    seed: int
    path: Path
    resume: bool


@dataclass
class Outcome:
    job: Job
    ok: bool
    wall_s: float
    error: str | None = None
    skipped: bool = False  # another live process is running this seed: left to it
    stopped: bool = False  # a signal stopped the pipeline: this seed continues next time


#: the training processes running now, and the signal that stopped the pipeline (if one did)
_live: set[subprocess.Popen] = set()
_live_lock = threading.RLock()  # reentrant: the handler runs on the main thread, maybe inside it
_stop: dict[str, int | None] = {"signal": None}
#: the signals that stop a pipeline run: kill / a batch system's notice, a closed terminal, Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def stopped_by() -> int | None:
    """The signal that stopped the last :func:`run_all`, or None."""
    return _stop["signal"]


def _on_stop_signal(signum, frame) -> None:
    _stop["signal"] = signum
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p.poll() is None:
            p.terminate()


@contextmanager
def _stoppable():
    """While running: SIGTERM, SIGHUP or Ctrl-C terminates the training processes in progress
    (each continues next time from its last epoch-end ``last.ckpt``) and starts no new run. A
    killed ``scripts/reproduce.py`` otherwise left its child training on, orphaned, in a run
    directory whose claim had died with it: the next pipeline would take the directory over
    and two processes would write one run."""
    _stop["signal"] = None
    if threading.current_thread() is not threading.main_thread():  # handlers only go there
        yield
        return
    old = {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _move_aside(d: Path, why: str) -> None:
    n = 1
    while (aside := d.with_name(f"{d.name}.{why}-{n}")).exists():
        n += 1
    d.rename(aside)


def plan(entries: Sequence[Entry], root: str | Path, smoke: bool = False,
         ledger_dir: str | Path | None = None, rerun: bool = False) -> tuple[list[Job], int]:
    """The runs still to make, and how many are already finished (in ``root`` or, with
    ``ledger_dir``, in the run ledger)."""
    jobs, done = [], 0
    for e in entries:
        if smoke and e.script:
            continue  # a script entry is not a training run: nothing to smoke-test here
        for seed in (e.seeds[:1] if smoke else e.seeds):
            if smoke:
                jobs.append(Job(e, seed, run_dir(root, e, seed), False))
                continue
            r = inspect(root, e, seed)
            if rerun and r.state == "finished":
                _move_aside(r.path, "rerun")
                r = inspect(root, e, seed)
            recorded = ledger_dir is not None and ledger.read(ledger_dir, e, seed).state == "finished"
            if not rerun and (r.state == "finished" or recorded):
                done += 1
                continue
            if r.state == "stale":
                _move_aside(r.path, "stale")
            resume = r.state in ("interrupted", "failed") and last_checkpoint(r.path) is not None
            jobs.append(Job(e, seed, r.path, resume))
    return jobs, done


def command(job: Job, smoke: bool = False) -> list[str]:
    if job.entry.script:  # a peer or an analysis: the script writes the metrics.json the pipeline reads
        script, *rest = job.entry.overrides
        for flag, eid in job.entry.checkpoints:  # other entries' runs of the same seed
            rest += [flag, str(scored_checkpoint(job, eid))]
        return [sys.executable, str(REPO / script), *rest, "--seed", str(job.seed),
                "--metrics-json", str(job.path / "metrics.json")]
    args = [*job.entry.overrides, f"seed={job.seed}", f"hydra.run.dir={job.path}"]
    if job.resume:  # its own last.ckpt, never another entry's (ckpt_path=auto ignores max_epochs)
        args.append(f"ckpt_path={last_checkpoint(job.path)}")
    if smoke:
        args += [*SMOKE, "logger=none"]
    return [sys.executable, str(TRAIN), *args]


def scored_checkpoint(job: Job, entry_id: str) -> Path:
    """The best checkpoint of ``entry_id``'s run of the job's seed (beside the job's own run,
    under the same root), for an entry whose script reads it (``checkpoints``); or
    ``FodlError`` saying how to make it."""
    other = job.path.parent.parent / entry_id / job.path.name
    found = best_checkpoint(other)
    if found is None:
        raise FodlError(f"{job.entry.id} seed {job.seed} reads the best checkpoint of {entry_id} "
                        f"seed {job.seed}, and {other} has no finished run with one (the ledger "
                        f"keeps results, not checkpoints). Run python scripts/reproduce.py --only "
                        f"{entry_id} --seeds {job.seed} --rerun first, then this entry again.")
    return found


def run_one(job: Job, smoke: bool = False, ledger_dir: str | Path | None = None) -> Outcome:
    """Run one seed of one entry to its end; record it in ``reproduce.json`` and, when it
    finished and ``ledger_dir`` is given, in the run ledger. A seed another live process is
    running (``runs.claim``) is left to it: skipped, not failed."""
    d = job.path
    if smoke and d.exists():
        import shutil

        shutil.rmtree(d)  # smoke runs are throw-away checks under outputs/reproduce-smoke/
    d.mkdir(parents=True, exist_ok=True)
    busy = claim(d)
    if busy is not None:  # two scripts/reproduce.py at once (two terminals, --only lists that meet)
        return Outcome(job, False, 0.0, busy, skipped=True)
    try:
        return _run_claimed(job, smoke, ledger_dir)
    finally:
        release(d)


def _run_claimed(job: Job, smoke: bool, ledger_dir: str | Path | None) -> Outcome:
    d = job.path
    old = read_json(d / RECORD)
    record = {"id": job.entry.id, "overrides": list(job.entry.overrides), "seed": job.seed,
              "command": job.entry.command(job.seed), "attempts": int(old.get("attempts", 0)) + 1}
    try:
        cmd = command(job, smoke)
    except FodlError as e:  # what it needs is not there: reported as this run's failure
        write_record(d, {**record, "status": "failed", "error": str(e)})
        return Outcome(job, False, 0.0, str(e))
    record.update(status="running", commit=git_commit(), hardware=hardware(job.entry.device), smoke=smoke,
                  started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), started_at=time.time())
    previous_wall = _previous_wall(old, d) if job.resume else 0.0
    record["wall_before"] = round(previous_wall, 1)
    write_record(d, record)
    t0 = time.monotonic()
    with open(d / LOG, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        rc = _run_child(cmd, log)
    wall = time.monotonic() - t0
    if stopped_by() is not None:  # left "running": inspect() calls it interrupted, to continue
        return Outcome(job, False, wall, "stopped", stopped=True)
    ok = rc == 0 and (d / "metrics.json").is_file()
    error = None
    if not ok:
        error = (f"exit status {rc}" + (", no metrics.json" if rc == 0 else "")
                 + (f": {msg}" if (msg := last_error(d / LOG)) else ""))
    record.update(status="completed" if ok else "failed", returncode=rc, error=error,
                  wall_s=round(previous_wall + wall, 1), resumed=job.resume,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_record(d, record)
    if ok and not smoke and ledger_dir is not None:
        ledger.record(ledger_dir, job.entry, inspect_dir(d, job.entry, job.seed))
    return Outcome(job, ok, wall, error)


def _run_child(cmd: list[str], log) -> int:
    """Run one training process to its end, terminable by :func:`_on_stop_signal`."""
    if stopped_by() is not None:
        return -int(stopped_by())
    with _live_lock:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _live.add(proc)
    try:
        if stopped_by() is not None:  # the signal came while it was starting
            proc.terminate()
        return proc.wait()
    finally:
        if proc.poll() is None:  # an exception here: never leave it running
            proc.kill()
            proc.wait()
        with _live_lock:
            _live.discard(proc)


def _previous_wall(old: dict, d: Path) -> float:
    """Wall time already spent on the work a resumed run keeps: the recorded time of attempts
    that ended, or, for one that was killed (no time recorded), the time from its start to its
    newest ``last.ckpt``."""
    if old.get("wall_s") is not None:
        return float(old["wall_s"])
    before = float(old.get("wall_before", 0.0))
    ckpt = last_checkpoint(d)
    if ckpt is not None and old.get("started_at"):
        before += max(0.0, ckpt.stat().st_mtime - float(old["started_at"]))
    return before


def _fmt_minutes(m: float) -> str:
    return f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def run_all(jobs: list[Job], done: int, smoke: bool = False, workers: int = 1,
            say: Callable[[str], None] = print, ledger_dir: str | Path | None = None) -> list[Outcome]:
    """Run ``jobs`` (``workers`` at a time), printing progress: which run, how many are left,
    and an estimate of the time left (the registry's minutes, scaled by how this machine has
    done so far against them)."""
    total, outcomes, lock = len(jobs), [], threading.Lock()
    spent = {"est": 0.0, "wall": 0.0}
    started = [0]

    def eta(remaining: list[Job]) -> str:
        est = sum(j.entry.minutes or 0.0 for j in remaining)
        if smoke:
            return "a few minutes"
        ratio = spent["wall"] / spent["est"] if spent["est"] else 1.0
        return f"~{_fmt_minutes(est * ratio / max(workers, 1))}" + ("" if spent["est"] else " (registry estimates)")

    def work(i: int) -> Outcome:
        job = jobs[i]
        if stopped_by() is not None:
            out = Outcome(job, False, 0.0, "not started", stopped=True)
            with lock:
                outcomes.append(out)
            return out
        with lock:
            started[0] += 1
            left = jobs[i:]
            say(f"[{started[0]}/{total}] {job.entry.id} seed {job.seed}"
                f"{' (resuming)' if job.resume else ''}: {len(left)} run(s) left, time left {eta(left)}"
                f" -> {job.path}")
        out = run_one(job, smoke, ledger_dir)
        with lock:
            outcomes.append(out)
            if out.ok and job.entry.minutes:
                spent["est"] += job.entry.minutes
                spent["wall"] += out.wall_s / 60
            status = ("done" if out.ok else f"skipped: {out.error}" if out.skipped
                      else "stopped (continues next time)" if out.stopped else f"FAILED ({out.error})")
            say(f"    {job.entry.id} seed {job.seed}: {status} in {out.wall_s / 60:.1f} min")
        return out

    if done:
        say(f"{done} run(s) already finished (skipped); {total} to run")
    with _stoppable():
        if workers <= 1:
            for i in range(total):
                work(i)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, range(total)))
    return outcomes
