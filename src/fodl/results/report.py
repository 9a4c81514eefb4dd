"""``docs/results.md`` and the generated tables of the chapter pages and the README, written
from the run ledger (``results/runs/``, :mod:`fodl.results.ledger`) and the registry's run
directories (``scripts/reproduce.py --report``).

Per entry and metric: mean ± sample standard deviation over the finished seeds and ``n``, the
book's and the anchors' numbers, the hardware, the wall time per run, fodl's commit and the
command. Entries with no finished seed say so and give the command; failed seeds are listed
with their error. Pages carry their tables between ``<!-- results:<name> -->`` and
``<!-- /results -->``: ``<name>`` is a page name (``ch05_cnn``: the entries whose ``page`` it
is) or ``headline`` (one row per book model, the entries marked ``headline``)."""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fodl.results import ledger
from fodl.results.registry import Entry, Metric, Registry
from fodl.results.runs import SeedRun, inspect

END = "<!-- /results -->"
_BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(" + re.escape(END) + ")", re.S)


@dataclass
class Stat:
    n: int
    mean: float
    std: float  # sample std; nan when n < 2


@dataclass
class Row:
    entry: Entry
    runs: list[SeedRun]

    @property
    def finished(self) -> list[SeedRun]:
        return [r for r in self.runs if r.state == "finished"]

    @property
    def failed(self) -> list[SeedRun]:
        return [r for r in self.runs if r.state == "failed"]

    def stat(self, metric: Metric) -> Stat | None:
        xs = [r.metrics[metric.key] for r in self.finished if metric.key in r.metrics]
        if not xs:
            return None
        return Stat(len(xs), statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan)

    def show(self, metric: Metric) -> str:
        s = self.stat(metric)
        if s is None:
            return "not run" if not self.failed else "failed"
        text = metric.show(s.mean)
        if s.n > 1:
            text += f" ± {metric.show(s.std)}"
        return f"{text} (n={s.n})"

    def per_seed(self, metric: Metric) -> str:
        """``seed: value`` for every finished seed, so a spread can be read run by run."""
        return ", ".join(f"{r.seed}: {metric.show(r.metrics[metric.key])}" for r in self.finished
                         if metric.key in r.metrics) or "—"

    def _unique(self, key: str) -> str:
        vals = []
        for r in self.finished:
            v = r.record.get(key)
            if v and v not in vals:
                vals.append(v)
        return "; ".join(vals) or "—"

    @property
    def hardware(self) -> str:
        return self._unique("hardware").replace(", 1 threads", ", 1 thread")  # older records

    @property
    def commit(self) -> str:
        return self._unique("commit")

    @property
    def wall(self) -> str:
        ws = [float(r.record["wall_s"]) for r in self.finished if r.record.get("wall_s") is not None]
        if not ws:
            return "—"
        m = statistics.fmean(ws) / 60
        return f"{m:.1f} min" if len(ws) == 1 else f"{m:.1f} min (range {min(ws) / 60:.1f}-{max(ws) / 60:.1f})"


def collect(reg: Registry, root: str | Path, ledger_dir: str | Path | None = None) -> list[Row]:
    """Every entry's runs: the run ledger's records (``ledger_dir``) and the run directories
    under ``root``, the later finished run of a seed winning (:func:`fodl.results.ledger.best`)."""
    def run(e: Entry, s: int) -> SeedRun:
        on_disk = inspect(root, e, s)
        return on_disk if ledger_dir is None else ledger.best(ledger.read(ledger_dir, e, s), on_disk)
    return [Row(e, [run(e, s) for s in e.seeds]) for e in reg.entries]


def _anchors(e: Entry, rows: list[Row]) -> str:
    """The anchors' cells: a number from elsewhere as given, a peer the pipeline measures
    (``entry``) as that entry's result now (mean ± std, n), or how to make it."""
    out = []
    for a in e.anchors:
        row = next((r for r in rows if r.entry.id == a.get("entry")), None)
        if row is not None:
            key = a.get("metric") or row.entry.metrics[0].key
            metric = next(m for m in row.entry.metrics if m.key == key)
            shown = (row.show(metric) if row.stat(metric) is not None
                     else f"not run: `python scripts/reproduce.py --only {row.entry.id}`")
            out.append(f"{a.get('name')}: {shown}")
        else:
            out.append(f"{a.get('name')}: {a.get('value') or 'the ' + str(a.get('entry')) + ' row'}")
    return "; ".join(out) or "—"


def _cmd(e: Entry) -> str:
    return f"`{e.command()}`"


def _esc(text: str) -> str:
    return str(text).replace("|", "\\|")


def _metric_rows(row: Row) -> list[tuple[Metric, str]]:
    return [(m, row.show(m)) for m in row.entry.metrics]


def results_markdown(reg: Registry, rows: list[Row], now: str | None = None) -> str:
    now = now or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    own = [r for r in rows if r.entry.same_as is None]  # same_as: counted once
    n_fin = sum(len(r.finished) for r in own)
    n_all = sum(len(r.entry.seeds) for r in own)
    lines = [
        "# Results",
        "",
        "<!-- generated by `python scripts/reproduce.py --report`: do not edit by hand -->",
        f"Generated {now} from the run ledger `results/runs/` (one committed record per finished "
        "run, with its metrics, hardware and commit) and any finished run under "
        f"`outputs/reproduce/` it does not hold yet ({n_fin} of {n_all} registered runs "
        "finished). Registry: `conf/reproduce.yaml`. Each number is the mean ± sample standard "
        "deviation over the finished seeds, with `n` the number of seeds; a row without "
        "finished seeds gives the command that makes it (`python scripts/reproduce.py --only <id>` "
        "runs every seed of it and rewrites this page). Wall time is per run (one seed), on the "
        "hardware named, which was shared with other work: compare times with care.",
        "",
        "## Headline: one row per book model",
        "",
        headline_table(rows, link_prefix=""),
    ]
    for ch in sorted({r.entry.chapter for r in rows}):
        lines += ["", f"## Chapter {ch}", "",
                  "| model | id | setup | metric | fodl | per seed | book | anchor | hardware | wall time / run | commit | command |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in (r for r in rows if r.entry.chapter == ch):
            e = row.entry
            for i, (m, value) in enumerate(_metric_rows(row)):
                first = i == 0  # a further metric of the same runs: only its own cells
                lines.append("| " + " | ".join(_esc(x) for x in [
                    e.model, e.id, e.what if first else "", m.label, value,
                    row.per_seed(m), (e.book or "—") if first else "", _anchors(e, rows) if first else "",
                    row.hardware if first else "", row.wall if first else "",
                    row.commit if first else ""]) + (f" | {_cmd(e)} |" if first else " | |"))
        failed = [(row, r) for row in rows if row.entry.chapter == ch for r in row.failed]
        if failed:
            lines += ["", "Failed runs (the next `scripts/reproduce.py` run tries them again):", ""]
            lines += [f"- `{row.entry.id}` seed {r.seed}: {r.error} (log: `{r.path / 'reproduce.log'}`)"
                      for row, r in failed]
    return "\n".join(lines) + "\n"


def headline_table(rows: list[Row], link_prefix: str = "docs/") -> str:
    out = ["| model | chapter | setup | result (mean ± std over seeds) | book | anchor |",
           "|---|---|---|---|---|---|"]
    for row in rows:
        e = row.entry
        if not e.headline:
            continue
        if row.finished:
            shown = "; ".join(f"{m.label} {row.show(m)}" for m in e.metrics)
        else:
            shown = (f"{'failed' if row.failed else 'not run'}: "
                     f"`python scripts/reproduce.py --only {e.id}`")
        out.append("| " + " | ".join(_esc(x) for x in [
            f"[`{e.model}`]({link_prefix}{e.page}.md)", e.section, e.what, shown, e.book or "—",
            _anchors(e, rows)]) + " |")
    return "\n".join(out)


def page_table(rows: Iterable[Row], every: list[Row] | None = None) -> str:
    """The table of ``rows`` (``every``: all rows, for the anchors that name a peer entry)."""
    rows = list(rows)
    every = rows if every is None else every
    out = ["| setup | metric | fodl (mean ± std, n seeds) | book | anchor | command |",
           "|---|---|---|---|---|---|"]
    for row in rows:
        e = row.entry
        for i, (m, value) in enumerate(_metric_rows(row)):
            first = i == 0
            out.append("| " + " | ".join(_esc(x) for x in [
                e.what if first else "", m.label, value, (e.book or "—") if first else "",
                _anchors(e, every) if first else ""]) + (f" | {_cmd(e)} |" if first else " | |"))
    out.append("")
    out.append("Hardware, wall time per run and commit of each row: [results.md](results.md).")
    return "\n".join(out)


def fill(text: str, rows: list[Row], link_prefix: str) -> str:
    """Replace every ``<!-- results:<name> -->`` block of ``text`` with its generated table."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name == "headline":
            body = headline_table(rows, link_prefix)
        else:
            body = page_table([r for r in rows if r.entry.page == name], rows)
        return f"{m.group(1)}{body}\n{m.group(4)}"
    return _BLOCK.sub(sub, text)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    tmp.replace(path)


def write(reg: Registry, root: str | Path, docs: str | Path, readme: str | Path | None = None,
          ledger_dir: str | Path | None = None, now: str | None = None) -> list[Path]:
    """Write ``docs/results.md`` and refresh the generated blocks of ``docs/*.md`` and the README,
    from the run ledger ``ledger_dir`` and the run directories under ``root``."""
    docs = Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    rows = collect(reg, root, ledger_dir)
    written = [docs / "results.md"]
    _write(written[0], results_markdown(reg, rows, now))
    pages = [(p, "") for p in sorted(docs.glob("*.md")) if p.name != "results.md"]
    if readme is not None and Path(readme).is_file():
        pages.append((Path(readme), "docs/"))
    for page, prefix in pages:
        text = page.read_text()
        new = fill(text, rows, prefix)
        if new != text:
            _write(page, new)
            written.append(page)
    return written
