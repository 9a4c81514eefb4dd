"""The run ledger: one small committed JSON per finished registry run,
``results/runs/<id>/seed<k>.json``, so that the results survive the loss of ``outputs/`` (a
fresh clone, another machine) and runs made elsewhere (a GPU machine) can join them.

A record holds what the report needs and what says where a number came from: the entry id,
seed, overrides and command, every metric of the run's ``metrics.json``, the wall time, the
hardware, fodl's commit, the start and end times (UTC), attempts, and the run directory it was
recorded from (``source``). The runner writes it when a run finishes
(:func:`record`); ``scripts/reproduce.py --import DIR`` records the finished runs of run
directories made elsewhere (:func:`import_runs`). A record of the same (entry, seed) is replaced
only by a run that finished later, or when it was made with other overrides (the registry
changed); the report reads the ledger together with whatever in ``outputs/reproduce`` it does
not hold yet, the later run of a seed winning (:func:`best`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fodl.errors import FodlError
from fodl.results.registry import Entry, Registry
from fodl.results.runs import RECORD, REPO, SeedRun, inspect_dir, read_json

LEDGER = REPO / "results" / "runs"
#: what a ledger record keeps of a run's reproduce.json (plus metrics, source and device)
_KEEP = ("id", "seed", "overrides", "command", "wall_s", "hardware", "commit", "started", "finished",
         "attempts", "resumed")


def path(ledger: str | Path, entry_id: str, seed: int) -> Path:
    return Path(ledger) / entry_id / f"seed{seed}.json"


def read(ledger: str | Path, entry: Entry, seed: int) -> SeedRun:
    """The ledger's run of (entry, seed): *finished* (recorded with this entry's overrides),
    *stale* (recorded with other overrides: the registry changed) or *missing*."""
    p = path(ledger, entry.runs_id, seed)
    rec = read_json(p)
    if not rec:
        return SeedRun(seed, p, "missing")
    if list(rec.get("overrides") or []) != list(entry.overrides) or rec.get("seed") != seed:
        return SeedRun(seed, p, "stale", record=rec)
    metrics = rec.get("metrics") or {}
    return SeedRun(seed, p, "finished", {k: float(v) for k, v in metrics.items()}, rec)


def _when(run: SeedRun) -> str:
    """When a finished run ended (ISO UTC, sortable as text; '' when unknown)."""
    return str(run.record.get("finished") or "")


def best(recorded: SeedRun, on_disk: SeedRun) -> SeedRun:
    """The run of a seed the report shows: the later finished one of the ledger's and the run
    directory's (the ledger's on a tie, or when the directory's did not finish); a run directory
    that is not finished (failed, interrupted, missing) when the ledger has nothing."""
    if recorded.state != "finished":
        return on_disk
    if on_disk.state == "finished" and _when(on_disk) > _when(recorded):
        return on_disk
    return recorded


def make_record(entry: Entry, run: SeedRun) -> dict[str, Any]:
    """The ledger record of a finished run directory (:func:`fodl.results.runs.inspect`)."""
    rec = {k: run.record.get(k) for k in _KEEP}
    rec["command"] = rec["command"] or entry.command(run.seed)
    rec["device"] = entry.device
    rec["metrics"] = dict(sorted(run.metrics.items()))
    rec["source"] = str(run.path)
    return rec


def write(ledger: str | Path, rec: dict[str, Any]) -> Path:
    p = path(ledger, str(rec["id"]), int(rec["seed"]))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.part")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    tmp.replace(p)
    return p


def record(ledger: str | Path, entry: Entry, run: SeedRun) -> str:
    """Put a finished run into the ledger: *added* (nothing recorded for its seed), *replaced*
    (the record was of other overrides, or of a run that finished earlier or at the same time,
    e.g. the same run with its commit filled in), *unchanged* (the same record is there
    already) or *kept* (the record is of a run that finished later)."""
    if run.state != "finished":
        raise ValueError(f"{run.path}: only finished runs are recorded ({run.state})")
    old = read(ledger, entry, run.seed)
    new = make_record(entry, run)
    if old.state == "finished":
        if old.record == new:
            return "unchanged"
        if _when(old) > _when(run):
            return "kept"
    write(ledger, new)
    return "added" if old.state == "missing" else "replaced"


@dataclass
class Imported:
    path: Path
    action: str  # added | replaced | unchanged | kept | skipped
    why: str = ""
    entry_id: str = ""
    seed: int | None = None


def import_runs(reg: Registry, source: str | Path, ledger: str | Path = LEDGER,
                commit: str | None = None) -> list[Imported]:
    """Record every finished registry run found under ``source`` (its ``reproduce.json`` files,
    at any depth: an ``outputs/reproduce`` tree, a GPU machine's run tree, one run directory).
    Runs of unknown entries, of other overrides than the registry's, smoke runs and runs that
    did not finish are skipped and said so. ``commit``: the fodl commit the runs were made
    from, recorded instead of the one they read themselves (a copy of the code on another
    machine says ``unknown``, or names a stale commit with ``+dirty``)."""
    source = Path(source)
    if not source.exists():
        raise FodlError(f"--import {source}: no such directory. Give the directory that holds the "
                        f"run directories (<id>/seed<k>/ with {RECORD} and metrics.json), e.g. "
                        "outputs/reproduce or an unpacked GPU run tree.")
    found = sorted(source.rglob(RECORD)) if source.is_dir() else []
    if not found:
        raise FodlError(f"--import {source}: no {RECORD} below it, so no run of "
                        "scripts/reproduce.py to import. Give the directory given to its --out.")
    known = {e.id: e for e in reg.entries if e.same_as is None}
    out = []
    for rec_file in found:
        d = rec_file.parent
        raw = read_json(rec_file)
        eid, seed = str(raw.get("id", "")), raw.get("seed")
        why = ""
        if raw.get("smoke"):
            why = "a smoke run (a few batches), not a result"
        elif eid not in known:
            alias = next((e for e in reg.entries if e.id == eid and e.same_as), None)
            why = (f"{eid} now reports {alias.same_as}'s runs (same_as); run or import those"
                   if alias else f"no registry entry {eid!r}")
        elif not isinstance(seed, int):
            why = f"no seed in its {RECORD}"
        if why:
            out.append(Imported(d, "skipped", why, eid, seed if isinstance(seed, int) else None))
            continue
        entry = known[eid]
        run = inspect_dir(d, entry, seed)
        if run.state != "finished":
            why = {"stale": "made with other overrides than the registry's now",
                   "failed": f"failed ({run.error})"}.get(run.state, f"{run.state}, not finished")
            out.append(Imported(d, "skipped", why, eid, seed))
            continue
        if commit:
            run.record = {**run.record, "commit": commit}
        out.append(Imported(d, record(ledger, entry, run), "", eid, seed))
    return out

