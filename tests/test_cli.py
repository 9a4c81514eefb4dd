"""The entry points as a user runs them: subprocesses, Hydra's output dirs, DDP, multirun."""

import json

import pytest

from conftest import run_script, workdir_data
from fodl.checkpoint import read_checkpoint


def test_unknown_model_lists_the_available_ones(workdir):
    r = run_script("train.py", ["model=resnet9000"], workdir)
    assert r.returncode != 0
    assert "model/resnet9000" in r.stderr and "logreg" in r.stderr and "mnist_mlp" in r.stderr


def test_wrong_override_is_named(workdir):
    r = run_script("train.py", ["trainer.max_epoch=3"], workdir)
    assert r.returncode != 0 and "trainer.max_epoch" in r.stderr


def test_missing_data_offline_says_what_to_do(workdir):
    r = run_script("train.py", [f"paths.data_dir={workdir / 'nothing'}", "data.download=false"],
                   workdir)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert "FODL_DATA_DIR" in out and "train-images-idx3-ubyte.gz" in out
    assert "Traceback" not in out


def test_bad_checkpoint_is_a_clear_error(workdir):
    bad = workdir / "bad.ckpt"
    bad.write_bytes(b"oops")
    r = run_script("eval.py", [f"ckpt_path={bad}", f"paths.data_dir={workdir / 'data'}"], workdir)
    assert r.returncode == 2 and "cannot be read" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.slow
def test_ddp_two_cpu_processes_then_eval_agrees(workdir):
    r = run_script("train.py", [*workdir_data(workdir), "trainer.max_epochs=2", "trainer.accelerator=cpu",
                                "trainer.devices=2"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Starting with 2 processes" in r.stdout + r.stderr
    (run,) = (workdir / "outputs" / "mnist_mlp" / "runs").iterdir()  # one run dir, shared
    metrics = json.loads((run / "metrics.json").read_text())
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    # grouped minibatches (data.steps_per_execution=10, the default) under DDP: 1000 images,
    # 500 per process, 5 optimizer steps of 100 per epoch, counted per minibatch
    assert last["fodl_config"]["data"]["steps_per_execution"] == 10 and last["global_step"] == 10
    # the run's log has each line once (rank 1 writes warnings only)
    assert (run / "train.log").read_text().count("metrics: ") == 1
    # test accuracy over 2 shards equals a single-process evaluation of the same checkpoint
    r = run_script("eval.py", [f"ckpt_path={best}", f"paths.data_dir={workdir / 'data'}"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    (ev,) = (workdir / "outputs" / "eval" / "runs").iterdir()
    single = json.loads((ev / "metrics.json").read_text())
    assert single["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_multirun_two_models(workdir):
    r = run_script("train.py", ["-m", "model=logreg,mnist_mlp", *workdir_data(workdir),
                                "trainer.max_epochs=1"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (workdir / "outputs" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and "model=logreg" in jobs[0] and "model=mnist_mlp" in jobs[1]
    for job in jobs:
        assert "test/acc" in json.loads((sweep / job / "metrics.json").read_text())
    # side by side in TensorBoard's HPARAMS tab: one trial per job, each with its own columns
    from tensorboard_api import TensorBoard, hparam_values, metric_values
    groups = {hparam_values(g)["model"]: g for g in TensorBoard(sweep).session_groups()}
    assert set(groups) == {"logreg", "mnist_mlp"}
    assert hparam_values(groups["logreg"])["model.net.hidden"] == "[]"
    for model, g in groups.items():
        job = next(j for j in jobs if f"model={model}" in j)
        final = json.loads((sweep / job / "metrics.json").read_text())
        assert metric_values(g)["test/acc"] == pytest.approx(final["test/acc"], rel=1e-6)


@pytest.mark.slow
def test_optuna_search_runs(workdir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    r = run_script("train.py", ["hparams_search=mnist_mlp_optuna", "hydra.sweeper.n_trials=2",
                                *workdir_data(workdir), "trainer.max_epochs=1"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (workdir / "outputs" / "hparams_search").iterdir()
    import yaml
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    trials = [json.loads((p / "metrics.json").read_text()) for p in sweep.iterdir()
              if (p / "metrics.json").is_file()]
    assert len(trials) == 2
    # the objective Optuna maximised is each trial's val/acc, and it kept the larger one
    assert best == pytest.approx(max(t["val/acc"] for t in trials)) and 0 < best <= 1
