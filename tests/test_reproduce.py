"""The results pipeline: registry (conf/reproduce.yaml), runner (scripts/reproduce.py) and the
generated report (docs/results.md, chapter-page and README blocks)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from conftest import ROOT, make_mnist_like, run_script
from fodl.config import CONF_DIR
from fodl.errors import FodlError
from fodl.results import ledger, registry, report, runner
from fodl.results.runs import inspect, run_dir, write_record


# ------------------------------------------------------------------ the registry itself
def test_every_entry_composes_and_every_model_has_a_row():
    reg = registry.load()
    models = {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    assert models <= {e.model for e in reg.entries}, "every conf/model/*.yaml needs a registry row"
    headline = [e.model for e in reg.entries if e.headline]
    assert set(headline) == models and len(headline) == len(models), "one headline row per model"
    bad = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for e in reg.entries:
            if e.script:  # a peer's or an analysis script: its path is checked by registry.load
                continue
            try:
                cfg = compose("train", overrides=[*e.overrides, "seed=0"], return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as err:  # an override that does not exist
                bad.append(f"{e.id}: {err}")
                continue
            if cfg.hydra.runtime.choices.model != e.model:
                bad.append(f"{e.id}: trains model={cfg.hydra.runtime.choices.model}, not {e.model}")
    GlobalHydra.instance().clear()
    assert not bad, "\n".join(bad)
    assert {e.page for e in reg.entries} <= {p.stem for p in (ROOT / "docs").glob("ch*.md")}


def _write_registry(path: Path, entries: str) -> Path:
    path.write_text("defaults:\n  seeds: [0, 1, 2]\nentries:\n" + textwrap.indent(textwrap.dedent(entries), "  "))
    return path


ENTRIES = """\
- id: a
  chapter: 3
  section: "3, a"
  page: ch03_x
  model: logreg
  headline: true
  what: "setup a"
  overrides: [model=logreg]
  metrics: [{key: test/acc, label: test accuracy, scale: 100, digits: 2, unit: "%"}]
  book: "91.94%"
  anchors: [{name: ref, value: "90%", source: paper}]
  cost: {device: cpu, minutes: 1}
- id: b
  chapter: 3
  section: "3, b"
  page: ch03_x
  model: mnist_mlp
  what: "setup b"
  overrides: [model=mnist_mlp]
  metrics: [{key: test/acc, label: test accuracy, scale: 100, digits: 2, unit: "%"}]
  seeds: [0, 1]
  cost: {device: cpu, minutes: 20}
- id: g
  chapter: 5
  section: "5, g"
  page: ch05_y
  model: cifar_cnn
  what: "setup g"
  overrides: [model=cifar_cnn, trainer=gpu]
  metrics: [{key: test/acc, label: test accuracy}]
  cost: {device: gpu, minutes: null}
"""


def _fake_run(root: Path, entry, seed: int, metrics: dict | None, status: str = "completed",
              error: str | None = None, overrides=None, finished: str = "2026-12-04T10:00:00Z",
              commit: str = "abc1234", d: Path | None = None, smoke: bool = False) -> Path:
    d = d or run_dir(root, entry, seed)
    write_record(d, {"id": entry.id, "overrides": list(overrides or entry.overrides), "seed": seed,
                     "status": status, "error": error, "wall_s": 60.0 * (seed + 1),
                     "commit": commit, "hardware": "Test CPU, 2 threads", "finished": finished,
                     "command": entry.command(seed), "smoke": smoke})
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_registry_errors_name_the_entry_and_the_fix(tmp_path):
    p = _write_registry(tmp_path / "r.yaml", ENTRIES.replace("minutes: 20", "minutes: null"))
    with pytest.raises(FodlError, match=r"entry b.*cost.minutes"):
        registry.load(p)
    p = _write_registry(tmp_path / "r.yaml", ENTRIES.replace("overrides: [model=logreg]",
                                                             "overrides: [model=logreg, seed=3]"))
    with pytest.raises(FodlError, match=r"entry a.*seed=3"):
        registry.load(p)
    with pytest.raises(FodlError, match="not an entry"):
        registry.select(registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES)), only=["zz"])


def test_selection(tmp_path):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    ids = lambda es: [e.id for e in es]  # noqa: E731
    assert ids(registry.select(reg)) == ["a", "b"]                  # GPU entries only with --gpu
    assert ids(registry.select(reg, cpu_minutes=10)) == ["a"]
    assert ids(registry.select(reg, gpu=True, cpu_minutes=0)) == ["g"]
    assert ids(registry.select(reg, chapters=[5], gpu=True)) == ["g"]
    assert ids(registry.select(reg, only=["b"])) == ["b"]


# ------------------------------------------------------------------ the report
def test_report_mean_std_n_missing_and_failed_rows(tmp_path):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    a, b, _ = reg.entries
    root = tmp_path / "runs"
    for seed, acc in ((0, 0.90), (1, 0.92), (2, 0.94)):
        _fake_run(root, a, seed, {"test/acc": acc, "val/acc": 0.5})
    _fake_run(root, b, 0, None, status="failed", error="exit status 2: data.batch_size=0 ...")
    _fake_run(root, b, 1, {"test/acc": 0.1}, overrides=["model=mnist_mlp", "optimizer=adam"])  # stale
    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "ch03_x.md"
    page.write_text("# ch3\n\nprose\n\n<!-- results:ch03_x -->\nold table\n<!-- /results -->\n\nmore prose\n")
    readme = tmp_path / "README.md"
    readme.write_text("# fodl\n<!-- results:headline -->\n<!-- /results -->\nend\n")

    report.write(reg, root, docs, readme)
    md = (docs / "results.md").read_text()
    row_a = next(ln for ln in md.splitlines() if ln.startswith("| logreg | a |"))
    assert "92.00% ± 2.00% (n=3) | 0: 90.00%, 1: 92.00%, 2: 94.00% |" in row_a  # mean, sample std, seeds
    assert "91.94%" in row_a and "ref: 90%" in row_a and "Test CPU, 2 threads" in row_a
    assert "2.0 min (range 1.0-3.0)" in row_a and "abc1234" in row_a
    assert "`python scripts/train.py -m model=logreg seed=0,1,2`" in row_a
    row_b = next(ln for ln in md.splitlines() if ln.startswith("| mnist_mlp | b |"))
    assert "| failed |" in row_b and "seed=0,1`" in row_b
    assert "`b` seed 0: exit status 2: data.batch_size=0" in md
    row_g = next(ln for ln in md.splitlines() if ln.startswith("| cifar_cnn | g |"))
    assert "not run" in row_g and "trainer=gpu" in row_g

    text = page.read_text()
    assert "old table" not in text and text.startswith("# ch3\n\nprose\n") and text.endswith("more prose\n")
    assert "92.00% ± 2.00% (n=3)" in text and "setup b" in text and "setup g" not in text
    head = readme.read_text()
    assert "[`logreg`](docs/ch03_x.md)" in head and "mnist_mlp" not in head  # headline rows only
    report.write(reg, root, docs, readme)                      # idempotent: blocks stay blocks
    assert page.read_text() == text and readme.read_text() == head


# ------------------------------------------------------------------ the run ledger
def _report(reg, root, ledger_dir, tmp: Path) -> str:
    docs = tmp / "docs"
    docs.mkdir(parents=True)
    report.write(reg, root, docs, None, ledger_dir, now="NOW")
    return (docs / "results.md").read_text()


def test_report_from_the_ledger_alone_equals_the_report_from_the_run_directories(tmp_path):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    a, b, _ = reg.entries
    root = tmp_path / "outputs" / "reproduce"
    for seed, acc in ((0, 0.90), (1, 0.92), (2, 0.94)):
        _fake_run(root, a, seed, {"test/acc": acc, "val/acc": 0.5 + seed / 100})
    _fake_run(root, b, 1, {"test/acc": 0.97})
    from_dirs = _report(reg, root, None, tmp_path / "dirs")
    assert "92.00% ± 2.00% (n=3)" in from_dirs and "97.00% (n=1)" in from_dirs

    led = tmp_path / "results" / "runs"
    done = ledger.import_runs(reg, root, led)
    assert sorted((i.entry_id, i.seed, i.action) for i in done) == [
        ("a", 0, "added"), ("a", 1, "added"), ("a", 2, "added"), ("b", 1, "added")]
    rec = json.loads((led / "a" / "seed1.json").read_text())
    assert rec["metrics"] == {"test/acc": 0.92, "val/acc": 0.51} and rec["commit"] == "abc1234"
    assert rec["hardware"] == "Test CPU, 2 threads" and rec["wall_s"] == 120.0 and rec["device"] == "cpu"
    assert rec["command"] == "python scripts/train.py model=logreg seed=1" and rec["overrides"] == ["model=logreg"]

    import shutil

    shutil.rmtree(tmp_path / "outputs")                               # outputs/ lost: a fresh clone
    assert _report(reg, root, led, tmp_path / "ledger") == from_dirs


def test_import_skips_what_is_not_a_result_and_fills_in_the_commit(tmp_path):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    a, b, g = reg.entries
    gpu = tmp_path / "gpu" / "fodl-runs" / "reproduce"             # another machine's --out tree
    _fake_run(gpu, g, 0, {"test/acc": 0.8}, commit="5c9ac85+dirty")           # the machine's stale copy
    _fake_run(gpu, g, 1, None, status="failed", error="exit status 1: CUDA out of memory")
    _fake_run(gpu, g, 2, {"test/acc": 0.1}, overrides=["model=cifar_cnn"])         # other overrides
    _fake_run(gpu, a, 0, {"test/acc": 0.5}, smoke=True)
    _fake_run(gpu, a, 1, {"test/acc": 0.5}, d=gpu / "zz" / "seed1")                 # any directory name
    write_record(gpu / "gone" / "seed0", {"id": "gone", "seed": 0, "overrides": [], "status": "completed"})
    led = tmp_path / "ledger"
    done = {(i.entry_id, i.seed): i for i in ledger.import_runs(reg, tmp_path / "gpu", led, commit="f00d123")}
    assert {k: v.action for k, v in done.items()} == {
        ("g", 0): "added", ("g", 1): "skipped", ("g", 2): "skipped", ("a", 0): "skipped",
        ("a", 1): "added", ("gone", 0): "skipped"}
    assert "CUDA out of memory" in done[("g", 1)].why and "other overrides" in done[("g", 2)].why
    assert "smoke" in done[("a", 0)].why and "no registry entry 'gone'" in done[("gone", 0)].why
    assert json.loads((led / "g" / "seed0.json").read_text())["commit"] == "f00d123"
    assert [i.action for i in ledger.import_runs(reg, tmp_path / "gpu", led, commit="f00d123")
            if i.action != "skipped"] == ["unchanged", "unchanged"]
    with pytest.raises(FodlError, match="no reproduce.json below it"):
        ledger.import_runs(reg, tmp_path / "ledger", led)


def test_a_rerun_of_a_seed_replaces_its_record_and_an_older_run_does_not(tmp_path):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    a = reg.entries[0]
    led = tmp_path / "ledger"
    first = tmp_path / "first"
    _fake_run(first, a, 0, {"test/acc": 0.90}, finished="2026-12-04T10:00:00Z")
    assert [i.action for i in ledger.import_runs(reg, first, led)] == ["added"]
    later = tmp_path / "later"
    _fake_run(later, a, 0, {"test/acc": 0.95}, finished="2026-12-04T12:00:00Z")
    assert [i.action for i in ledger.import_runs(reg, later, led)] == ["replaced"]
    assert [i.action for i in ledger.import_runs(reg, first, led)] == ["kept"]   # older: kept out
    assert ledger.read(led, a, 0).metrics["test/acc"] == 0.95
    # the report: the later of the ledger's and the run directory's run of a seed
    rows = report.collect(reg, first, led)
    assert rows[0].runs[0].metrics["test/acc"] == 0.95
    _fake_run(first, a, 0, {"test/acc": 0.99}, finished="2026-12-04T13:00:00Z")  # re-run here, not recorded
    assert report.collect(reg, first, led)[0].runs[0].metrics["test/acc"] == 0.99
    # the registry changes the entry's overrides: its records are stale, not shown, replaced
    reg2 = registry.load(_write_registry(tmp_path / "r2.yaml", ENTRIES.replace(
        "overrides: [model=logreg]", "overrides: [model=logreg, optimizer=adam]")))
    a2 = reg2.entries[0]
    assert ledger.read(led, a2, 0).state == "stale"
    assert report.collect(reg2, tmp_path / "none", led)[0].runs[0].state == "missing"
    new = tmp_path / "new"
    _fake_run(new, a2, 0, {"test/acc": 0.5}, finished="2026-12-04T09:00:00Z")
    assert [i.action for i in ledger.import_runs(reg2, new, led)] == ["replaced"]
    assert ledger.read(led, a2, 0).state == "finished"


# ------------------------------------------------------------------ the runner
FAKE_TRAIN = """\
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:])
d = args["hydra.run.dir"]
os.makedirs(d, exist_ok=True)
with open(os.path.join(os.environ["CALLS"], "calls.txt"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if args.get("model") == "mnist_mlp" and args["seed"] == "1":
    print("Error: this seed breaks (on purpose)")
    sys.exit(1)
json.dump({"test/acc": 0.5 + int(args["seed"]) / 100}, open(os.path.join(d, "metrics.json"), "w"))
"""


def test_runner_skips_finished_resumes_interrupted_reports_failed(tmp_path, monkeypatch):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    a, b, _ = reg.entries
    root = tmp_path / "runs"
    _fake_run(root, a, 0, {"test/acc": 0.9})                            # finished: skipped
    d1 = _fake_run(root, a, 1, None, status="running")                  # interrupted, has a checkpoint
    (d1 / "checkpoints").mkdir()
    (d1 / "checkpoints" / "last.ckpt").write_bytes(b"x")
    d2 = _fake_run(root, a, 2, {"test/acc": 0.1}, overrides=["model=logreg", "optimizer=adam"])  # stale
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    monkeypatch.setattr(runner, "TRAIN", fake)
    monkeypatch.setenv("CALLS", str(tmp_path))

    jobs, done = runner.plan(registry.select(reg), root)
    assert done == 1 and [(j.entry.id, j.seed, j.resume) for j in jobs] == [
        ("a", 1, True), ("a", 2, False), ("b", 0, False), ("b", 1, False)]
    assert (d2.parent / "seed2.stale-1" / "metrics.json").is_file()     # moved aside, not deleted
    said = []
    outcomes = runner.run_all(jobs, done, say=said.append)
    assert [o.ok for o in outcomes] == [True, True, True, False]        # the failure did not stop the rest
    assert any("[1/4] a seed 1 (resuming): 4 run(s) left, time left ~" in s for s in said)
    assert any("b seed 1: FAILED" in s and "breaks (on purpose)" in s for s in said)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert f"ckpt_path={d1 / 'checkpoints' / 'last.ckpt'}" in calls[0]   # its own, by path
    assert all("ckpt_path" not in c for c in calls[1:])
    assert [inspect(root, a, s).state for s in a.seeds] == ["finished"] * 3
    assert inspect(root, b, 1).state == "failed" and "on purpose" in inspect(root, b, 1).error

    jobs, done = runner.plan(registry.select(reg), root)                # a second pass: only the failure
    assert done == 4 and [(j.entry.id, j.seed) for j in jobs] == [("b", 1)]


def test_a_seed_another_live_process_runs_is_left_to_it(tmp_path, monkeypatch):
    """Two scripts/reproduce.py at once (two terminals, --only lists that meet) must not train
    into the same run directory: the second skips a seed the first holds; a holder that is gone
    (killed) is taken over; the claim is released when the run ends."""
    import os
    import subprocess
    import sys

    from fodl.results.runs import OWNER, claim, running

    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    a = reg.get("a")
    root = tmp_path / "runs"
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    monkeypatch.setattr(runner, "TRAIN", fake)
    monkeypatch.setenv("CALLS", str(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        d0 = run_dir(root, a, 0)
        d0.mkdir(parents=True)
        holder = {"pid": other.pid, "host": os.uname().nodename, "since": "2026-12-05T01:00:00Z"}
        (d0 / OWNER).write_text(json.dumps(holder))
        jobs, done = runner.plan([a], root)
        said = []
        outcomes = runner.run_all(jobs, done, say=said.append)
        assert [(o.ok, o.skipped) for o in outcomes] == [(False, True), (True, False), (True, False)]
        assert any(f"a seed 0: skipped: being run by process {other.pid}" in s for s in said)
        assert (tmp_path / "calls.txt").read_text().count("seed=0") == 0     # not trained here
        assert not (run_dir(root, a, 1) / OWNER).exists()                    # released
        assert claim(d0) is not None and running(d0)                         # still held (--list: running)
    finally:
        other.kill()
        other.wait()
    outcomes = runner.run_all(*runner.plan([a], root), say=lambda _: None)   # the holder is gone
    assert [o.ok for o in outcomes] == [True] and inspect(root, a, 0).state == "finished"
    assert not (d0 / OWNER).exists() and not running(d0)


SLEEPY_TRAIN = """\
import os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
os.makedirs(args["hydra.run.dir"], exist_ok=True)
open(os.path.join(os.environ["CALLS"], "pid-" + args["seed"]), "w").write(str(os.getpid()))
time.sleep(120)
"""

DRIVER = """\
import runpy, sys
from pathlib import Path
from fodl.results import runner
runner.TRAIN = Path(sys.argv[1])
sys.argv = ["reproduce.py", *sys.argv[2:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("sig,jobs", [("SIGTERM", 1), ("SIGHUP", 1), ("SIGTERM", 2)])
def test_a_killed_pipeline_stops_its_training_processes_and_continues_next_time(tmp_path, sig, jobs):
    """kill (a batch system's notice) or a closed terminal: scripts/reproduce.py used to die
    alone, leaving its training process running, orphaned, in a run directory whose claim died
    with it, so the next pipeline took the directory over while the orphan still wrote to it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fodl.results.runs import running

    reg_path = _write_registry(tmp_path / "r.yaml", ENTRIES)
    a = registry.load(reg_path).get("a")
    root = tmp_path / "runs"
    (tmp_path / "fake_train.py").write_text(SLEEPY_TRAIN)
    (tmp_path / "driver.py").write_text(DRIVER.format(script=str(ROOT / "scripts" / "reproduce.py")))
    env = {**os.environ, "CALLS": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "fake_train.py"),
         "--registry", str(reg_path), "--only", "a", "--out", str(root), "--ledger", "",
         "--docs", str(tmp_path / "docs"), "--readme", "", "--jobs", str(jobs)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_files, deadline = [tmp_path / f"pid-{k}" for k in range(jobs)], time.monotonic() + 60
    while not all(f.is_file() and f.read_text() for f in pid_files) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    children = [int(f.read_text()) for f in pid_files]
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, sig), (out, err)
    assert f"stopped by {sig}" in err and "Traceback" not in err
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)                                            # not left training
    assert not (tmp_path / f"pid-{jobs}").exists()                      # no new run started
    for k in range(jobs):                                               # each continues next time
        assert inspect(root, a, k).state == "interrupted" and not running(run_dir(root, a, k))
    assert "FAILED" not in out


def test_smoke_two_cheap_entries_end_to_end(tmp_path):
    """scripts/reproduce.py --smoke on two real registry entries (tiny MNIST-format data)."""
    data = make_mnist_like(tmp_path / "data", n_train=6000, n_test=200)
    out = tmp_path / "outputs" / "reproduce"
    r = run_script("reproduce.py", ["--smoke", "--only", "ch3_logreg,ch3_mnist_mlp_fast", "--jobs", "2",
                                    "--out", str(out), "--docs", str(tmp_path / "docs")],
                   cwd=tmp_path, env={"FODL_DATA_DIR": str(data), "PYTHONPATH": str(ROOT / "src")},
                   timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 run(s) finished, 0 failed" in r.stdout
    for eid in ("ch3_logreg", "ch3_mnist_mlp_fast"):
        d = tmp_path / "outputs" / "reproduce-smoke" / eid / "seed0"
        assert 0.0 <= json.loads((d / "metrics.json").read_text())["test/acc"] <= 1.0
        assert json.loads((d / "reproduce.json").read_text())["status"] == "completed"
    assert not out.exists() and not (tmp_path / "docs").exists()       # smoke runs are not results


def test_bad_options_are_one_paragraph(tmp_path):
    r = run_script("reproduce.py", ["--only", "nope", "--list"], cwd=tmp_path,
                   env={"PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: 'nope' is not an entry")
    assert "Traceback" not in r.stderr


def test_runner_records_finished_runs_and_skips_recorded_seeds(tmp_path, monkeypatch):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    a = reg.entries[0]
    root, led = tmp_path / "outputs" / "reproduce", tmp_path / "results" / "runs"
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    monkeypatch.setattr(runner, "TRAIN", fake)
    monkeypatch.setenv("CALLS", str(tmp_path))
    jobs, done = runner.plan([a], root, ledger_dir=led)
    assert done == 0 and len(jobs) == 3
    assert all(o.ok for o in runner.run_all(jobs, done, say=lambda s: None, ledger_dir=led))
    rec = json.loads((led / "a" / "seed2.json").read_text())
    assert rec["metrics"] == {"test/acc": 0.52} and rec["finished"] and rec["source"] == str(run_dir(root, a, 2))

    import shutil

    shutil.rmtree(root)                                                # outputs/ lost
    jobs, done = runner.plan([a], root, ledger_dir=led)
    assert done == 3 and jobs == []                                    # the ledger holds them
    jobs, done = runner.plan([a], root)                                # without the ledger: all again
    assert done == 0 and len(jobs) == 3
    (tmp_path / "calls.txt").unlink()
    runner.run_all(jobs[:1], 0, say=lambda s: None)                    # seed 0 made again, not recorded
    jobs, done = runner.plan([a], root, ledger_dir=led, rerun=True)    # --rerun: every seed again
    assert done == 0 and [j.seed for j in jobs] == [0, 1, 2]
    assert (root / "a" / "seed0.rerun-1" / "metrics.json").is_file()  # moved aside, not deleted


def test_import_from_the_command_line(tmp_path):
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES))
    _fake_run(tmp_path / "gpu", reg.entries[2], 0, {"test/acc": 0.8123}, commit="unknown")
    args = ["--registry", str(tmp_path / "r.yaml"), "--ledger", str(tmp_path / "led"),
            "--docs", str(tmp_path / "docs"), "--readme", ""]
    r = run_script("reproduce.py", [*args, "--import", str(tmp_path / "gpu"), "--commit", "f00d123"],
                   cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "added     g seed 0" in r.stdout and "1 added, 0 replaced" in r.stdout
    row = next(ln for ln in (tmp_path / "docs" / "results.md").read_text().splitlines()
               if ln.startswith("| cifar_cnn | g |"))
    assert "| 0.8123 (n=1) |" in row and "f00d123" in row
    r = run_script("reproduce.py", [*args, "--import", str(tmp_path / "nowhere")], cwd=tmp_path,
                   env={"PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert r.returncode == 2 and "no such directory" in r.stderr and "Traceback" not in r.stderr
    r = run_script("reproduce.py", [*args, "--list", "--seeds", "1,2", "--gpu"], cwd=tmp_path,
                   env={"PYTHONPATH": str(ROOT / "src")}, timeout=120)        # a subset of the seeds
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()}
    assert r.returncode == 0 and set(lines) == {"a", "b", "g"}, r.stdout + r.stderr
    assert "seed 1: missing, seed 2: missing" in lines["a"] and "seed 0" not in lines["a"]
    assert "seed 1: missing" in lines["b"] and "seed 2" not in lines["b"]
    assert "seed 0: recorded" not in lines["g"] and "seed 1: missing" in lines["g"]


def test_an_entry_can_report_another_entrys_runs(tmp_path):
    alias = """\
- id: a4
  chapter: 4
  section: "4, a again"
  page: ch04_z
  model: logreg
  what: "the runs of a, with the training cost"
  same_as: a
  metrics: [{key: test/acc, label: test accuracy, scale: 100, digits: 2, unit: "%"}, {key: train/loss, label: cost}]
"""
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES + alias))
    a, a4 = reg.get("a"), reg.get("a4")
    assert a4.overrides == a.overrides and a4.seeds == a.seeds and a4.command() == a.command()
    assert [e.id for e in registry.select(reg, only=["a4"])] == ["a"]           # runs a's seeds
    assert [e.id for e in registry.select(reg, chapters=[4])] == ["a"]
    assert [e.id for e in registry.select(reg)] == ["a", "b"]                   # once
    root, led = tmp_path / "runs", tmp_path / "led"
    _fake_run(root, a, 0, {"test/acc": 0.9, "train/loss": 0.25})
    ledger.import_runs(reg, root, led)
    assert not (led / "a4").exists()
    row = next(r for r in report.collect(reg, tmp_path / "gone", led) if r.entry.id == "a4")
    assert row.show(a4.metrics[0]) == "90.00% (n=1)" and row.show(a4.metrics[1]) == "0.2500 (n=1)"
    bad = ENTRIES + alias.replace("same_as: a", "same_as: a\n  overrides: [model=logreg]")
    with pytest.raises(FodlError, match=r"entry a4.*not overrides"):
        registry.load(_write_registry(tmp_path / "r2.yaml", bad))
    with pytest.raises(FodlError, match=r"entry a4.*same_as: zz"):
        registry.load(_write_registry(tmp_path / "r3.yaml", ENTRIES + alias.replace("same_as: a", "same_as: zz")))


PEER = """\
- id: p
  chapter: 3
  section: "3, the peer"
  page: ch03_x
  model: logreg
  what: "peer: a linear model, measured by a script"
  script: scripts/bench_pos.py
  args: [--iterations, "2"]
  seeds: [0, 1]
  metrics: [{key: test/acc, label: test accuracy, scale: 100, digits: 2, unit: "%"}]
  cost: {device: cpu, minutes: 1}
"""

FAKE_PEER = """\
import argparse, json, os
ap = argparse.ArgumentParser()
ap.add_argument("--iterations"); ap.add_argument("--seed", type=int); ap.add_argument("--metrics-json")
a = ap.parse_args()
with open(os.path.join(os.environ["CALLS"], "peer.txt"), "a") as f:
    f.write(f"{a.iterations} {a.seed}\\n")
json.dump({"test/acc": 0.8 + a.seed / 100}, open(a.metrics_json, "w"))
"""


def test_a_peer_measured_by_a_script_is_a_row_and_an_anchor(tmp_path, monkeypatch):
    """A script entry runs `python <script> <args> --seed k --metrics-json <run dir>/metrics.json`;
    an anchor naming it shows its result (or how to make it); smoke runs leave it out."""
    entries = ENTRIES.replace('anchors: [{name: ref, value: "90%", source: paper}]',
                              'anchors: [{name: ref, value: "90%", source: paper}, {name: the peer, entry: p}]')
    reg = registry.load(_write_registry(tmp_path / "r.yaml", entries + PEER))
    p = reg.get("p")
    assert p.script and p.overrides == ("scripts/bench_pos.py", "--iterations", "2")
    assert p.command(1) == "python scripts/bench_pos.py --iterations 2 --seed 1"
    assert p.command() == "python scripts/bench_pos.py --iterations 2 --seed S (S in 0,1)"
    root = tmp_path / "runs"
    rows = report.collect(reg, root)
    assert "the peer: not run: `python scripts/reproduce.py --only p`" in report.page_table(rows[:1], rows)

    fake = tmp_path / "repo" / "scripts" / "bench_pos.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_PEER)
    monkeypatch.setattr(runner, "REPO", tmp_path / "repo")
    monkeypatch.setenv("CALLS", str(tmp_path))
    assert runner.plan([p], root, smoke=True) == ([], 0)                # not a training run
    jobs, done = runner.plan([p], root)
    assert runner.command(jobs[0])[1:] == [str(fake), "--iterations", "2", "--seed", "0",
                                           "--metrics-json", str(root / "p" / "seed0" / "metrics.json")]
    led = tmp_path / "led"
    assert all(o.ok for o in runner.run_all(jobs, done, say=lambda _: None, ledger_dir=led))
    assert (tmp_path / "peer.txt").read_text().split("\n")[:2] == ["2 0", "2 1"]
    assert ledger.read(led, p, 1).metrics == {"test/acc": 0.81}
    rows = report.collect(reg, tmp_path / "gone", led)                  # from the ledger alone
    table = report.page_table([r for r in rows if r.entry.id == "a"], rows)
    assert "ref: 90%; the peer: 80.50% ± 0.71% (n=2)" in table
    assert runner.plan([p], root, ledger_dir=led) == ([], 2)            # recorded: not run again

    bad = [(entries.replace("entry: p}", "entry: zz}") + PEER, r"entry a.*anchor 'the peer'.*zz"),
           (entries.replace("entry: p}", "entry: p, metric: val/acc}") + PEER, r"no metric 'val/acc'"),
           (entries + PEER.replace("bench_pos.py", "nope.py"), r"entry p.*scripts/nope.py is not"),
           (entries + PEER.replace('"2"]', '"2", --seed, "3"]'), r"entry p.*--seed"),
           (entries + PEER.replace("  args:", "  overrides: [model=logreg]\n  args:"), r"entry p.*not overrides")]
    for i, (text, match) in enumerate(bad):
        with pytest.raises(FodlError, match=match):
            registry.load(_write_registry(tmp_path / f"bad{i}.yaml", text))


SCORER = """\
- id: s
  chapter: 3
  section: "3, b and a peer averaged"
  page: ch03_x
  model: mnist_mlp
  what: "b's best checkpoint scored beside a peer by a script"
  script: scripts/bench_sentiment.py
  checkpoints: {--ckpt: b, --other: a}
  seeds: [0, 1]
  metrics: [{key: ensemble/acc, label: test accuracy}]
  cost: {device: cpu, minutes: 1}
"""

FAKE_SCORER = """\
import argparse, json, os
ap = argparse.ArgumentParser()
ap.add_argument("--ckpt"); ap.add_argument("--other"); ap.add_argument("--seed", type=int)
ap.add_argument("--metrics-json")
a = ap.parse_args()
with open(os.path.join(os.environ["CALLS"], "scored.txt"), "a") as f:
    f.write(f"{a.ckpt} {a.other} {a.seed}\\n")
json.dump({"ensemble/acc": 0.9}, open(a.metrics_json, "w"))
"""


def test_a_script_entry_scores_the_best_checkpoint_of_another_entrys_run(tmp_path, monkeypatch):
    """checkpoints: {--ckpt: b, --other: a}: the script gets --ckpt <b's best checkpoint, same
    seed> and --other <a's>; without
    a finished run of it, this seed fails saying what to run first, and the others go on."""
    reg = registry.load(_write_registry(tmp_path / "r.yaml", ENTRIES + SCORER))
    s, b = reg.get("s"), reg.get("b")
    assert s.command(1) == ("python scripts/bench_sentiment.py --ckpt "
                            "outputs/reproduce/b/seed1/checkpoints/epoch*-best*.ckpt --other "
                            "outputs/reproduce/a/seed1/checkpoints/epoch*-best*.ckpt --seed 1")
    assert s.command().endswith("--other outputs/reproduce/a/seedS/checkpoints/epoch*-best*.ckpt "
                                "--seed S (S in 0,1)")
    fake = tmp_path / "repo" / "scripts" / "bench_sentiment.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_SCORER)
    monkeypatch.setattr(runner, "REPO", tmp_path / "repo")
    monkeypatch.setenv("CALLS", str(tmp_path))
    root = tmp_path / "runs"
    d0 = _fake_run(root, b, 0, {"test/acc": 0.9})                       # b seed 0: finished, two files
    (d0 / "checkpoints").mkdir()
    for name in ("last.ckpt", "epoch002-best0.9000.ckpt"):
        (d0 / "checkpoints" / name).write_bytes(b"x")
    a = reg.get("a")
    for seed in (0, 1):                                                 # a: both seeds finished
        d = _fake_run(root, a, seed, {"test/acc": 0.9})
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "epoch001-best0.9000.ckpt").write_bytes(b"x")
    d1 = _fake_run(root, b, 1, None, status="running")                  # b seed 1: interrupted
    (d1 / "checkpoints").mkdir()
    (d1 / "checkpoints" / "epoch000-best0.5000.ckpt").write_bytes(b"x")
    jobs, done = runner.plan([s], root)
    outcomes = runner.run_all(jobs, done, say=lambda _: None)
    assert [o.ok for o in outcomes] == [True, False]
    a0 = run_dir(root, a, 0) / "checkpoints" / "epoch001-best0.9000.ckpt"
    assert (tmp_path / "scored.txt").read_text() == f"{d0 / 'checkpoints' / 'epoch002-best0.9000.ckpt'} {a0} 0\n"
    assert "no finished run" in outcomes[1].error and "--only b --seeds 1 --rerun" in outcomes[1].error
    assert inspect(root, s, 1).state == "failed" and inspect(root, s, 0).metrics == {"ensemble/acc": 0.9}

    bad = [(ENTRIES + SCORER.replace("{--ckpt: b,", "{--ckpt: zz,"), r"entry s.*checkpoints: --ckpt zz"),
           (SCORER + ENTRIES, r"entry s.*above this one"),
           (ENTRIES + SCORER.replace("{--ckpt: b, --other: a}", "{--ckpt: g}").replace(
               "seeds: [0, 1]", "seeds: [0, 1, 2]"), None),                                  # all of g's seeds: fine
           (ENTRIES + SCORER.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"), r"entry s.*seed\(s\) \[2\]"),
           (ENTRIES + SCORER.replace("  seeds:", "  args: [--other, x.ckpt]\n  seeds:"), r"entry s.*--other"),
           (ENTRIES.replace("  seeds: [0, 1]\n", "  seeds: [0, 1]\n  checkpoints: {--ckpt: a}\n"), r"entry b.*goes with script"),
           (ENTRIES + SCORER.replace("{--ckpt: b, --other: a}", "[b]"), r"entry s.*maps the script's options"),
           (ENTRIES + PEER + SCORER.replace("{--ckpt: b,", "{--ckpt: p,"), r"entry s.*training entry")]
    for i, (text, match) in enumerate(bad):
        if match is None:
            registry.load(_write_registry(tmp_path / f"ok{i}.yaml", text))
            continue
        with pytest.raises(FodlError, match=match):
            registry.load(_write_registry(tmp_path / f"bad{i}.yaml", text))


def test_the_report_after_a_long_run_uses_the_registry_as_it_is_then(tmp_path, monkeypatch, capsys):
    """A run of hours writes docs/results.md from the registry on disk when it ends, not from
    the one it loaded at its start (entries added meanwhile keep their rows); a registry broken
    at that moment leaves the report unwritten, with how to write it, and the runs recorded."""
    import runpy

    reg_file = _write_registry(tmp_path / "r.yaml", ENTRIES)
    main = runpy.run_path(str(ROOT / "scripts" / "reproduce.py"))["main"]
    real_run_all = runner.run_all

    def run_all_while_the_registry_changes(jobs, done, **kw):
        _write_registry(reg_file, ENTRIES + PEER.replace("- id: p", "- id: added_meanwhile"))
        return real_run_all(jobs, done, **kw)

    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    monkeypatch.setattr(runner, "TRAIN", fake)
    monkeypatch.setattr(runner, "run_all", run_all_while_the_registry_changes)
    monkeypatch.setenv("CALLS", str(tmp_path))
    args = ["--registry", str(reg_file), "--ledger", str(tmp_path / "led"), "--out", str(tmp_path / "runs"),
            "--docs", str(tmp_path / "docs"), "--readme", "", "--only", "a"]
    assert main(args) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| added_meanwhile |" in text
    assert "| 51.00% ± 1.00% (n=3) |" in text                        # a's three seeds (fake: 0.50-0.52)

    def run_all_while_the_registry_breaks(jobs, done, **kw):
        reg_file.write_text("entries: [oops")
        return real_run_all(jobs, done, **kw)

    monkeypatch.setattr(runner, "run_all", run_all_while_the_registry_breaks)
    _write_registry(reg_file, ENTRIES)
    assert main([*args, "--rerun"]) == 0
    err = capsys.readouterr().err
    assert "The report was not written" in err and "--report" in err and "Traceback" not in err
    assert ledger.read(tmp_path / "led", registry.load(_write_registry(reg_file, ENTRIES)).get("a"), 0).state == "finished"
