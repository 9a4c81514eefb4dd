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
from fodl.results import registry, report, runner
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
            if not e.automated:
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
              error: str | None = None, overrides=None) -> Path:
    d = run_dir(root, entry, seed)
    write_record(d, {"id": entry.id, "overrides": list(overrides or entry.overrides), "seed": seed,
                     "status": status, "error": error, "wall_s": 60.0 * (seed + 1),
                     "commit": "abc1234", "hardware": "Test CPU, 2 threads"})
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
    assert "ckpt_path=auto" in calls[0] and all("ckpt_path" not in c for c in calls[1:])
    assert [inspect(root, a, s).state for s in a.seeds] == ["finished"] * 3
    assert inspect(root, b, 1).state == "failed" and "on purpose" in inspect(root, b, 1).error

    jobs, done = runner.plan(registry.select(reg), root)                # a second pass: only the failure
    assert done == 4 and [(j.entry.id, j.seed) for j in jobs] == [("b", 1)]


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
