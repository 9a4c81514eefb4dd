"""Sweeps that survive a failing job (basic, joblib, submitit_local, Optuna), multi-seed
aggregation, and the per-epoch lines that replace the progress bar off a terminal."""

import json
import logging
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, run_script, train_cfg, workdir_data
from fodl.analysis.aggregate import report, write_job_status
from fodl.callbacks import RichProgressBar
from fodl.progress import EpochLines, progress_bar
from fodl.train import train

# two minibatches per job: a learning rate of 1e30 makes the second loss non-finite
FAST_JOB = ["+trainer.fast_dev_run=2", "data.steps_per_execution=1"]


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_failing_job_is_recorded_and_the_others_finish(workdir, launcher):
    """basic: the issue's 4-job sweep (3 results, the failure named); joblib and submitit_local
    run 3 jobs as separate processes, one of which fails."""
    if launcher != "basic":
        pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    lrs = ["0.01", "0.02", "1e30", "0.05"] if launcher == "basic" else ["0.01", "1e30", "0.05"]
    r = run_script("train.py", ["-m", *LAUNCHERS[launcher], *workdir_data(workdir), *FAST_JOB,
                                f"optimizer.lr={','.join(lrs)}"], workdir)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]  # the sweep says that a job failed ...
    (sweep,) = (workdir / "outputs" / "multiruns").iterdir()
    rep = report(sweep)
    done = [j for j in rep.jobs if j.status == "completed"]
    (failed,) = [j for j in rep.jobs if j.status == "failed"]
    # ... after every other job finished and wrote its metrics
    assert len(rep.jobs) == len(lrs) and len(done) == len(lrs) - 1
    assert all("test/acc" in j.metrics for j in done)
    assert failed.overrides["optimizer.lr"] == "1e+30" and failed.num == lrs.index("1e30")
    assert "FodlError: The training loss is not finite" in failed.error
    assert "optimizer step 2" in failed.error
    # the summary printed at the end, and written next to the jobs
    assert f"{len(lrs)} jobs, {len(lrs) - 1} completed, 1 failed" in out
    md = (sweep / "aggregate.md").read_text()
    assert f"#{failed.num} optimizer.lr=1e+30: FodlError: The training loss is not finite" in md
    assert all(f"| {lr} | 1 |" in md for lr in lrs if lr != "1e30")
    # a job's train.log has one line per epoch (no terminal here)
    assert "epoch 1/1: train/loss" in (done[0].path / "train.log").read_text()


@pytest.mark.slow
def test_an_optuna_study_goes_on_past_a_failed_trial(workdir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    r = run_script("train.py", ["hparams_search=mnist_mlp_optuna", "hydra.sweeper.n_trials=4",
                                "optimizer.lr=choice(0.05,1e30)", *workdir_data(workdir), *FAST_JOB],
                   workdir)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (sweep,) = (workdir / "outputs" / "hparams_search").iterdir()
    rep = report(sweep)
    failed = [j for j in rep.jobs if j.status == "failed"]
    done = [j for j in rep.jobs if j.status == "completed"]
    assert len(rep.jobs) == 4 and failed and done  # the sampler's seed makes both happen
    assert all(j.overrides["optimizer.lr"] == "1e+30" and "not finite" in j.error for j in failed)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(max(j.metrics["val/acc"] for j in done))


def _job(root, name, overrides, metrics=None, status=None, error=None, num=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if status:
        write_job_status(d, num, overrides, status, error)
    return d


def test_aggregate_gives_mean_std_and_n_per_group_pooling_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    accs = {("sgd", 1): 0.90, ("sgd", 2): 0.92, ("sgd", 3): 0.94, ("adam", 1): 0.97, ("adam", 2): 0.99}
    for i, ((opt, seed), acc) in enumerate(accs.items()):
        _job(sweep, f"{i}_opt={opt},seed={seed}", [f"optimizer={opt}", f"seed={seed}", "trainer.max_epochs=5"],
             {"test/acc": acc, "val/loss": 1.0 - acc}, "completed", num=i)
    _job(sweep, "5_opt=adam,seed=3", ["optimizer=adam", "seed=3", "trainer.max_epochs=5"],
         status="failed", error="FodlError: The training loss is not finite", num=5)
    _job(sweep, "6_opt=sgd,seed=4", ["optimizer=sgd", "seed=4", "trainer.max_epochs=5"])  # killed
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "aggregate.py"), str(sweep)],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr  # not every job completed
    assert "7 jobs, 5 completed, 1 failed, 1 without a result" in r.stdout
    # grouped by optimizer only: seeds pooled, constant overrides ignored
    assert "| optimizer | n | test/acc | val/loss |" in r.stdout
    assert "| sgd | 3 | 0.92 ± 0.02 | 0.08 ± 0.02 |" in r.stdout
    assert "| adam | 2 | 0.98 ± 0.01414 | 0.02 ± 0.01414 |" in r.stdout
    assert "#5 optimizer=adam: FodlError: The training loss is not finite" in r.stdout
    assert "#6 optimizer=sgd: no result" in r.stdout
    rows = (sweep / "aggregate.csv").read_text().splitlines()
    assert rows[0] == "optimizer,metric,n,mean,std"
    sgd = next(row.split(",") for row in rows if row.startswith("sgd,test/acc"))
    assert sgd[2] == "3" and float(sgd[3]) == pytest.approx(0.92) and float(sgd[4]) == pytest.approx(0.02)
    assert (sweep / "aggregate.md").read_text().startswith("# sweep ")
    # a bad directory is one clear line, exit status 2
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "aggregate.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "is not a directory" in r.stderr and "Traceback" not in r.stderr


def test_progress_bar_names_mean_one_thing_each_and_the_old_spelling_warns():
    bar = progress_bar(redraws_per_second=2, style="rich")
    assert bar.redraws_per_second == 2 and bar.is_enabled
    assert not progress_bar(style="none").is_enabled  # style is the one on/off switch
    # refresh_rate (redraws per second, 0 = no bar) is still accepted, with a warning
    with pytest.warns(FutureWarning, match="redraws_per_second"):
        assert progress_bar(refresh_rate=3, style="rich").redraws_per_second == 3
    with pytest.warns(FutureWarning, match="style=none"):
        assert not progress_bar(refresh_rate=0, style="rich").is_enabled
    with pytest.warns(FutureWarning):
        assert isinstance(progress_bar(refresh_rate=0, style="lines"), EpochLines)


def test_the_progress_bar_is_one_line_per_epoch_off_a_terminal(tmp_path, tiny_mnist, monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(progress_bar(redraws_per_second=4, style="auto"), RichProgressBar)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(redraws_per_second=4, style="auto"), EpochLines)
    with caplog.at_level(logging.INFO, logger="fodl.progress"):
        out = train(train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "trainer.max_epochs=2",
                              "test=false", "callbacks.progress_bar.style=auto"))
    lines = [r.getMessage() for r in caplog.records if r.name == "fodl.progress"]
    assert len(lines) == 2
    assert lines[1].startswith(f"epoch 2/2: train/loss {out['train/loss']:.4f}, "
                               f"val/acc {out['val/acc']:.4f}, ") and lines[1].endswith(" s")
