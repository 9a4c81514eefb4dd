"""What a sweep produced: every job's status and final metrics, and mean +- std over seeds.

A sweep directory (``outputs/multiruns/<time>/``, ``outputs/hparams_search/<time>/``) holds one
directory per job with Hydra's ``.hydra/overrides.yaml``, fodl's ``metrics.json`` (the job's
final metrics) and ``job_status.json`` (written by :class:`fodl.sweep.SweepReport` when the
job ends: completed, or failed with its error). :func:`report` groups the completed jobs by the
overrides the sweep varied, other than ``seed``, and gives for every final metric its mean, its
sample standard deviation and ``n``; failed jobs are listed with their error, and jobs with no
result at all (killed, still running) as such. ``scripts/aggregate.py SWEEP_DIR`` prints it
and writes ``aggregate.md`` and ``aggregate.csv`` into the sweep directory; a sweep writes them
itself when it ends.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from fodl.errors import FodlError

STATUS_FILE = "job_status.json"
DEFAULT = "(default)"


@dataclass
class Job:
    path: Path
    num: int | None
    overrides: dict[str, str]
    status: str  # "completed" | "failed" | "unknown"
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def write_job_status(job_dir: str | Path, num: int | None, overrides: Iterable[str], status: str,
                     error: str | None = None) -> None:
    """Record how a sweep job ended (``status``: completed or failed, with its error)."""
    d = Path(job_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{STATUS_FILE}.part"
    tmp.write_text(json.dumps({"num": num, "overrides": list(overrides), "status": status,
                               "error": error}, indent=2))
    tmp.replace(d / STATUS_FILE)


def _parse_overrides(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for o in items:
        key, _, value = str(o).partition("=")
        out[key.lstrip("+")] = value
    return out


def _last_error_line(log_file: Path) -> str | None:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "ERROR" in line or "Error" in line:
            return line.strip()[:500]
    return None


def read_job(d: Path) -> Job:
    d = Path(d)
    status_file, metrics_file = d / STATUS_FILE, d / "metrics.json"
    info = {}
    if status_file.is_file():
        try:
            info = json.loads(status_file.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
    try:
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        overrides = info.get("overrides") or []
    metrics = {}
    if metrics_file.is_file():
        try:
            metrics = {k: float(v) for k, v in json.loads(metrics_file.read_text()).items()}
        except (OSError, json.JSONDecodeError, TypeError, ValueError):
            metrics = {}
    num = info.get("num")
    if num is None and (m := re.match(r"(\d+)", d.name)):
        num = int(m.group(1))
    status = info.get("status") or ("completed" if metrics else "unknown")
    error = info.get("error")
    if status == "completed" and not metrics:
        status, error = "failed", "the job ended without writing metrics.json"
    if status == "unknown":
        hint = _last_error_line(d / "train.log")
        error = "no result (the job was killed, is still running, or never started)" + (
            f"; last error in its train.log: {hint}" if hint else "")
    return Job(d, num, _parse_overrides(overrides), status, error, metrics if status == "completed" else {})


def read_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory (one with ``.hydra/overrides.yaml``) right under ``sweep_dir``."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FodlError(f"{root} is not a directory. Give the sweep's directory, e.g. "
                        "outputs/multiruns/<time>.")
    jobs = [read_job(p) for p in sorted(root.iterdir())
            if p.is_dir() and ((p / ".hydra" / "overrides.yaml").is_file() or (p / STATUS_FILE).is_file())]
    if not jobs:
        raise FodlError(f"{root} holds no sweep jobs (directories with .hydra/overrides.yaml). Give "
                        "the directory of a multirun, e.g. outputs/multiruns/<time>.")
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.path.name))


def swept_keys(jobs: list[Job], exclude: Iterable[str] = ("seed",)) -> list[str]:
    """Override keys whose value differs between jobs, in order of first appearance."""
    keys: list[str] = []
    for j in jobs:
        keys += [k for k in j.overrides if k not in keys]
    varied = [k for k in keys if len({j.overrides.get(k, DEFAULT) for j in jobs}) > 1]
    return [k for k in varied if k not in set(exclude)]


@dataclass
class Group:
    values: dict[str, str]
    jobs: list[Job]
    stats: dict[str, tuple[int, float, float]]  # metric -> (n, mean, sample std or nan)


def aggregate(jobs: list[Job], by: list[str]) -> list[Group]:
    """Completed jobs grouped by their values of ``by``, with per-metric n, mean and std."""
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        if j.status == "completed":
            groups.setdefault(tuple(j.overrides.get(k, DEFAULT) for k in by), []).append(j)
    out = []
    for values, members in groups.items():
        names = sorted({m for j in members for m in j.metrics})
        stats = {}
        for m in names:
            xs = [j.metrics[m] for j in members if m in j.metrics]
            std = statistics.stdev(xs) if len(xs) > 1 else math.nan
            stats[m] = (len(xs), statistics.fmean(xs), std)
        out.append(Group(dict(zip(by, values)), members, stats))
    return out


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"


def _cell(n: int, mean: float, std: float, group_n: int) -> str:
    s = _fmt(mean) if n < 2 else f"{_fmt(mean)} ± {_fmt(std)}"
    return s if n == group_n else f"{s} (n={n})"


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    by: list[str]
    groups: list[Group]

    def job_name(self, job: Job) -> str:
        """``#<num> key=value ...`` with the swept keys (all overrides when nothing varied)."""
        keys = [k for k in self.by if k in job.overrides] or list(job.overrides)
        num = job.num if job.num is not None else "?"
        return f"#{num} " + (" ".join(f"{k}={job.overrides[k]}" for k in keys) or job.path.name)

    @property
    def metrics(self) -> list[str]:
        return sorted({m for g in self.groups for m in g.stats})

    def summary_line(self) -> str:
        counts = {s: sum(j.status == s for j in self.jobs) for s in ("completed", "failed", "unknown")}
        extra = "".join(f", {counts[s]} {s if s == 'failed' else 'without a result'}"
                        for s in ("failed", "unknown") if counts[s])
        return f"sweep {self.sweep_dir}: {len(self.jobs)} jobs, {counts['completed']} completed{extra}"

    def markdown(self) -> str:
        lines = [f"# {self.summary_line()}", ""]
        if self.groups:
            by = self.by or ["jobs"]
            metrics = self.metrics
            lines.append("mean ± sample std over the jobs of each group (grouped by "
                         f"{', '.join(self.by) if self.by else 'nothing: one group'}; seeds pooled)")
            lines.append("")
            lines.append("| " + " | ".join([*by, "n", *metrics]) + " |")
            lines.append("|" + "---|" * (len(by) + 1 + len(metrics)))
            for g in self.groups:
                keys = [g.values[k] for k in self.by] if self.by else ["all"]
                cells = [_cell(*g.stats[m], len(g.jobs)) if m in g.stats else "" for m in metrics]
                lines.append("| " + " | ".join([*keys, str(len(g.jobs)), *cells]) + " |")
        else:
            lines.append("No job completed.")
        for status, title in (("failed", "Failed"), ("unknown", "Without a result")):
            bad = [j for j in self.jobs if j.status == status]
            if bad:
                lines += ["", f"## {title}", ""]
                lines += [f"- {self.job_name(j)}: {j.error} (log: {j.path / 'train.log'})"
                          for j in bad]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([*self.by, "metric", "n", "mean", "std"])
        for g in self.groups:
            for m, (n, mean, std) in sorted(g.stats.items()):
                w.writerow([*(g.values[k] for k in self.by), m, n, repr(mean),
                            "" if math.isnan(std) else repr(std)])
        return buf.getvalue()

    def write(self, out_dir: str | Path | None = None) -> tuple[Path, Path]:
        d = Path(out_dir) if out_dir else self.sweep_dir
        d.mkdir(parents=True, exist_ok=True)
        md, cs = d / "aggregate.md", d / "aggregate.csv"
        for path, text in ((md, self.markdown()), (cs, self.csv())):
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_text(text)
            tmp.replace(path)
        return md, cs


def report(sweep_dir: str | Path, exclude: Iterable[str] = ("seed",)) -> Report:
    """Read the sweep at ``sweep_dir`` and aggregate it (module docstring)."""
    jobs = read_jobs(sweep_dir)
    by = swept_keys(jobs, exclude)
    return Report(Path(sweep_dir), jobs, by, aggregate(jobs, by))
