"""The experiment registry, ``conf/reproduce.yaml``: one entry per reported result (see the
file's header for the fields). :func:`load` reads and checks it; :func:`select` picks entries
as ``scripts/reproduce.py``'s options ask."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from fodl.errors import FodlError

REPO = Path(__file__).resolve().parents[3]
REGISTRY = REPO / "conf" / "reproduce.yaml"
#: a run's best checkpoint (conf/callbacks/default.yaml's name for it), relative to its run directory
BEST_CHECKPOINT = "checkpoints/epoch*-best*.ckpt"
DEVICES = ("cpu", "gpu")
_FIELDS = {"id", "chapter", "section", "page", "model", "headline", "what", "overrides", "metrics",
           "book", "anchors", "seeds", "cost", "same_as", "script", "args", "checkpoints"}
_ANCHOR_FIELDS = {"name", "value", "source", "entry", "metric"}
_METRIC_FIELDS = {"key", "label", "scale", "digits", "unit"}


@dataclass(frozen=True)
class Metric:
    key: str            # the name in the run's metrics.json, e.g. test/acc
    label: str
    scale: float = 1.0  # 100: a fraction shown as a percentage
    digits: int = 4
    unit: str = ""

    def show(self, x: float) -> str:
        return f"{x * self.scale:.{self.digits}f}{self.unit}"


@dataclass(frozen=True)
class Entry:
    id: str
    chapter: int
    section: str
    page: str
    model: str
    what: str
    overrides: tuple[str, ...]  # a script entry: the script and its arguments
    metrics: tuple[Metric, ...]
    seeds: tuple[int, ...]
    device: str
    minutes: float | None
    book: str | None = None
    anchors: tuple[dict[str, str], ...] = ()
    headline: bool = False
    same_as: str | None = None  # another entry whose runs this row reports (the same config)
    script: bool = False        # run by a script of this repository (a peer, an analysis), not train.py
    #: a script entry's options that name other entries' best checkpoints, e.g. (("--ckpt", "id"),)
    checkpoints: tuple[tuple[str, str], ...] = ()

    @property
    def runs_id(self) -> str:
        """The id its runs are made and recorded under (``same_as``'s for a row of another's runs)."""
        return self.same_as or self.id

    def command(self, seed: int | None = None) -> str:
        """The ``scripts/train.py`` command of one seed (all seeds: ``seed=0,1,2`` with -m); a
        script entry's command with ``--seed``."""
        if self.script:
            seeds = ",".join(map(str, self.seeds)) if seed is None else str(seed)
            one = seed is not None or len(self.seeds) == 1
            s = seeds if one else "S"
            ckpts = "".join(f" {flag} outputs/reproduce/{eid}/seed{s}/{BEST_CHECKPOINT}"
                            for flag, eid in self.checkpoints)
            return f"python {' '.join(self.overrides)}{ckpts} --seed {s}" + ("" if one else f" (S in {seeds})")
        if seed is None:
            seeds = ",".join(map(str, self.seeds))
            return "python scripts/train.py -m " + " ".join([*self.overrides, f"seed={seeds}"])
        return "python scripts/train.py " + " ".join([*self.overrides, f"seed={seed}"])


@dataclass
class Registry:
    path: Path
    entries: list[Entry] = field(default_factory=list)

    def get(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise FodlError(f"{entry_id!r} is not an entry of {self.path}. Known ids: "
                        f"{', '.join(e.id for e in self.entries)}.")


def _bad(path: Path, where: str, what: str) -> FodlError:
    return FodlError(f"{path}: {where}: {what}. Fix the entry (the file's header lists the fields).")


def _metric(path: Path, eid: str, m: Any) -> Metric:
    if not isinstance(m, dict) or "key" not in m or "label" not in m:
        raise _bad(path, f"entry {eid}", f"metric {m!r} needs at least key and label")
    unknown = set(m) - _METRIC_FIELDS
    if unknown:
        raise _bad(path, f"entry {eid}", f"unknown metric field(s) {', '.join(sorted(unknown))}")
    return Metric(str(m["key"]), str(m["label"]), float(m.get("scale", 1.0)), int(m.get("digits", 4)),
                  str(m.get("unit", "")))


def _shared(raw: dict, eid: str) -> dict[str, Any]:
    """The fields every kind of entry has (training, same_as, script)."""
    return dict(id=eid, chapter=int(raw["chapter"]), section=str(raw["section"]), page=str(raw["page"]),
                model=str(raw["model"]), what=str(raw["what"]), book=raw.get("book"),
                anchors=tuple(raw.get("anchors") or ()), headline=bool(raw.get("headline", False)))


def _entry(path: Path, raw: Any, default_seeds: list[int]) -> Entry:
    if not isinstance(raw, dict) or "id" not in raw:
        raise _bad(path, "entries", f"{raw!r} is not an entry with an id")
    eid = str(raw["id"])
    unknown = set(raw) - _FIELDS
    if unknown:
        raise _bad(path, f"entry {eid}", f"unknown field(s) {', '.join(sorted(unknown))}")
    same_as = raw.get("same_as")
    for need in ("chapter", "section", "page", "model", "what") + (() if same_as else ("cost",)):
        if need not in raw:
            raise _bad(path, f"entry {eid}", f"the field {need} is missing")
    if same_as:
        clash = sorted({"overrides", "seeds", "cost", "script", "args", "checkpoints"} & set(raw))
        if clash:
            raise _bad(path, f"entry {eid}", f"same_as: {same_as} takes its runs, so not "
                       f"{', '.join(clash)} (they are {same_as}'s)")
        if not raw.get("metrics"):
            raise _bad(path, f"entry {eid}", "an entry needs metrics")
        return Entry(**_shared(raw, eid), overrides=(),
                     metrics=tuple(_metric(path, eid, m) for m in raw["metrics"]), seeds=(),
                     device="cpu", minutes=None, same_as=str(same_as))
    cost = raw["cost"] or {}
    if "script" in raw:
        return _script_entry(path, raw, eid, cost, default_seeds)
    for only_scripts in ("args", "checkpoints"):
        if only_scripts in raw:
            raise _bad(path, f"entry {eid}", f"{only_scripts} goes with script (an entry run by a script, not train.py)")
    device = cost.get("device")
    if device not in DEVICES:
        raise _bad(path, f"entry {eid}", f"cost.device={device!r}; allowed: cpu or gpu")
    minutes = cost.get("minutes")
    if device == "cpu" and not isinstance(minutes, (int, float)):
        raise _bad(path, f"entry {eid}", "a cpu entry needs cost.minutes (a one-seed estimate)")
    overrides = tuple(str(o) for o in raw.get("overrides") or ())
    metrics = tuple(_metric(path, eid, m) for m in raw.get("metrics") or ())
    if not overrides or not metrics:
        raise _bad(path, f"entry {eid}", "a training entry needs overrides and metrics")
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+")
        if key in ("seed", "hydra.run.dir", "ckpt_path") or "=" not in o:
            raise _bad(path, f"entry {eid}", f"override {o!r} is not allowed here (seed, run "
                       "directory and resume are set by scripts/reproduce.py)")
    if device == "gpu" and "trainer=gpu" not in overrides:
        raise _bad(path, f"entry {eid}", "a gpu entry trains with trainer=gpu among its overrides")
    seeds = tuple(int(s) for s in (raw.get("seeds") or default_seeds))
    return Entry(**_shared(raw, eid), overrides=overrides, metrics=metrics, seeds=seeds, device=device,
                 minutes=float(minutes) if minutes is not None else None)


def _script_entry(path: Path, raw: dict, eid: str, cost: dict, default_seeds: list[int]) -> Entry:
    """An entry run by a script of this repository (``script: scripts/bench_pos.py``, ``args``,
    ``checkpoints``): a peer measured side by side or an analysis of trained nets. The pipeline
    runs ``python <script> <args> [<option> <best checkpoint> ...] --seed <k> --metrics-json
    <run dir>/metrics.json``."""
    script = str(raw["script"])
    if not (REPO / script).is_file() or not script.endswith(".py"):
        raise _bad(path, f"entry {eid}", f"script: {script} is not a Python script of this "
                   "repository (give its path from the repository root, e.g. scripts/bench_pos.py)")
    if "overrides" in raw:  # (same_as: refused before this)
        raise _bad(path, f"entry {eid}", "a script entry has args, not overrides")
    if cost.get("device") != "cpu" or not isinstance(cost.get("minutes"), (int, float)):
        raise _bad(path, f"entry {eid}", "a script entry needs cost: {device: cpu, minutes: N}")
    checkpoints = raw.get("checkpoints") or {}
    if not isinstance(checkpoints, dict) or not all(
            str(k).startswith("--") and isinstance(v, str) for k, v in checkpoints.items()):
        raise _bad(path, f"entry {eid}", "checkpoints maps the script's options to entry ids, "
                   "e.g. {--ckpt: ch3_mnist_mlp}")
    args = tuple(str(a) for a in raw.get("args") or ())
    set_here = ("--seed", "--metrics-json", *map(str, checkpoints))
    if any(a.split("=", 1)[0] in set_here for a in args):
        raise _bad(path, f"entry {eid}", f"{', '.join(set_here)} are set by scripts/reproduce.py "
                   "(--seed, --metrics-json, and checkpoints' options)")
    metrics = tuple(_metric(path, eid, m) for m in raw.get("metrics") or ())
    if not metrics:
        raise _bad(path, f"entry {eid}", "an entry needs metrics")
    return Entry(**_shared(raw, eid), overrides=(script, *args), metrics=metrics,
                 seeds=tuple(int(s) for s in (raw.get("seeds") or default_seeds)), device="cpu",
                 minutes=float(cost["minutes"]), script=True,
                 checkpoints=tuple((str(k), str(v)) for k, v in checkpoints.items()))


def _check_anchors(reg: Registry) -> None:
    """Anchors are ``{name, value, source}`` (a number from elsewhere) or ``{name, entry,
    metric}`` (a peer the pipeline measures: that entry's result is shown)."""
    by_id = {e.id: e for e in reg.entries}
    for e in reg.entries:
        for a in e.anchors:
            if not isinstance(a, dict) or "name" not in a:
                raise _bad(reg.path, f"entry {e.id}", f"anchor {a!r} needs a name")
            unknown = set(a) - _ANCHOR_FIELDS
            if unknown:
                raise _bad(reg.path, f"entry {e.id}", f"unknown anchor field(s) {', '.join(sorted(unknown))}")
            if "entry" not in a:
                continue
            peer = by_id.get(str(a["entry"]))
            if peer is None or peer is e:
                raise _bad(reg.path, f"entry {e.id}", f"anchor {a['name']!r}: entry {a['entry']!r} "
                           "must be another entry's id")
            if "metric" in a and a["metric"] not in {m.key for m in peer.metrics}:
                raise _bad(reg.path, f"entry {e.id}", f"anchor {a['name']!r}: {a['entry']} reports no "
                           f"metric {a['metric']!r} (its metrics: "
                           f"{', '.join(m.key for m in peer.metrics)})")


def _check_checkpoints(reg: Registry) -> None:
    """``checkpoints`` name earlier training entries (``--only`` runs entries in the registry's
    order, so their runs are made first) with every seed of this one."""
    seen: dict[str, Entry] = {}
    for e in reg.entries:
        for flag, eid in e.checkpoints:
            target = seen.get(eid)
            if target is None or target.script or target.same_as:
                raise _bad(reg.path, f"entry {e.id}", f"checkpoints: {flag} {eid} must name a training "
                           "entry above this one (its runs' best checkpoints are what the script reads)")
            if missing := sorted(set(e.seeds) - set(target.seeds)):
                raise _bad(reg.path, f"entry {e.id}", f"seed(s) {missing} are not seeds of {eid} "
                           "(the script reads that entry's run of each of its seeds)")
        seen[e.id] = e


def load(path: str | Path = REGISTRY) -> Registry:
    """Read and check the registry (unique ids, known fields, a cost per entry)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise FodlError(f"Cannot read the experiment registry {path}: {e}.") from None
    except yaml.YAMLError as e:
        raise FodlError(f"The experiment registry {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise FodlError(f"{path} has no `entries:` list. See conf/reproduce.yaml's header.")
    seeds = list((data.get("defaults") or {}).get("seeds") or [0, 1, 2])
    reg = Registry(path, [_entry(path, e, seeds) for e in data["entries"]])
    seen: set[str] = set()
    for e in reg.entries:
        if e.id in seen:
            raise _bad(path, f"entry {e.id}", "the id is used twice")
        seen.add(e.id)
    by_id = {e.id: e for e in reg.entries}
    for i, e in enumerate(reg.entries):
        if e.same_as is None:
            continue
        target = by_id.get(e.same_as)
        if target is None or target.same_as is not None:
            raise _bad(path, f"entry {e.id}", f"same_as: {e.same_as} must name a training entry "
                       "of its own runs")
        reg.entries[i] = replace(e, overrides=target.overrides, seeds=target.seeds,
                                 device=target.device, minutes=target.minutes, script=target.script)
    _check_anchors(reg)
    _check_checkpoints(reg)
    return reg


def try_load(path: str | Path = REGISTRY) -> tuple[Registry | None, str | None]:
    """:func:`load`, or ``(None, why)`` when the registry does not load (e.g. it is being edited
    while a long run ends: that run's report is then skipped, not its runs)."""
    try:
        return load(path), None
    except FodlError as e:
        return None, str(e)


def select(reg: Registry, only: Iterable[str] = (), chapters: Iterable[int] = (),
           cpu_minutes: float | None = None, gpu: bool = False) -> list[Entry]:
    """The training entries to run: ``only`` ids (all when empty), of ``chapters``; CPU entries
    estimated at most ``cpu_minutes`` a seed; GPU entries only with ``gpu``. An entry reporting
    another's runs (``same_as``) selects that one."""
    only, chapters = list(only), set(chapters)
    for i in only:
        reg.get(i)  # unknown ids are errors
    out: list[Entry] = []
    for e in reg.entries:
        if only and e.id not in only:
            continue
        if chapters and e.chapter not in chapters:
            continue
        e = reg.get(e.same_as) if e.same_as else e
        if e.device == "gpu" and not gpu:
            continue
        if e.device == "cpu" and cpu_minutes is not None and (e.minutes or 0) > cpu_minutes:
            continue
        if e not in out:
            out.append(e)
    return out
