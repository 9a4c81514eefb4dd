"""Crash safety: checkpoint writes survive SIGKILL, a killed training run resumes to the same
weights with ckpt_path=auto, a diverging run stops naming the step and keeps its last good
checkpoint, and a resumed run continues the same TensorBoard curves."""

import importlib.util
import os
import random
import signal
import tempfile
import time

import pytest
import torch
import yaml
from hydra.utils import instantiate

from conftest import ROOT, compose_train, train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.checkpoint_io import AtomicCheckpointIO
from fodl.errors import FodlError
from fodl.resume import experiment_key, find_last_checkpoint, resolve_ckpt_path
from fodl.train import train


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_trainer_config_writes_checkpoints_atomically_under_every_strategy(tmp_path):
    for more in ([], ["trainer=ddp", "trainer.accelerator=cpu"]):
        cfg = compose_train(["trainer.accelerator=cpu", *more], tmp_path / "r")
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO), more


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_readable(tmp_path, monkeypatch):
    """A process writing last.ckpt over and over is SIGKILLed while a write is in progress
    (a partly written file or a temporary beside it is seen). The temporary directory is on
    another filesystem, as a node-local /tmp is on a cluster: Lightning's own save then copies
    into last.ckpt and a kill truncates it. Every time, last.ckpt must load completely."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    if shm:
        monkeypatch.setattr(tempfile, "tempdir", tempfile.mkdtemp(dir=shm))
    cfg = compose_train(["trainer.accelerator=cpu"], tmp_path / "r")
    io = instantiate(cfg.trainer, logger=False, callbacks=[]).strategy.checkpoint_io
    path = tmp_path / "checkpoints" / "last.ckpt"
    weights = torch.arange(6_000_000, dtype=torch.float32)  # 24 MB: a write takes a while
    io.save_checkpoint({"state_dict": {"w": weights}, "i": 0}, path)
    full = path.stat().st_size
    mid_write = 0
    try:
        for round_ in range(3):
            pid = os.fork()
            if pid == 0:  # the writer: never returns
                i = 1
                while True:
                    io.save_checkpoint({"state_dict": {"w": weights}, "i": i}, path)
                    i += 1
            deadline = time.monotonic() + 0.2 + 0.3 * round_
            while time.monotonic() < deadline:
                names = os.listdir(path.parent)
                size = path.stat().st_size if path.exists() else 0
                if size != full or len(names) > 1:  # a write is under way
                    mid_write += 1
                    break
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            ckpt = read_checkpoint(path)  # complete, not truncated
            assert torch.equal(ckpt["state_dict"]["w"], weights)
    finally:
        if shm:
            import shutil

            shutil.rmtree(tempfile.tempdir, ignore_errors=True)
    assert mid_write >= 1  # at least one kill landed during a write
    # the next save removes the temporaries of killed writers of this host
    io.save_checkpoint({"state_dict": {"w": weights[:10]}, "i": -1}, path)
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_mnist):
    """Epoch 0 trains at lr 0.01; the step schedule then multiplies it by 1e30, so the loss of
    epoch 1's second minibatch is not finite. The run must stop there with the step named,
    and last.ckpt must still be epoch 0's (finite) weights."""
    cfg = train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "trainer.max_epochs=3", "test=false",
                    "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=1e30")
    with pytest.raises(FodlError, match=r"not finite \((nan|inf|-inf)\) at optimizer step 12 \(epoch 1, "
                                        r"minibatch 2 of the epoch\)") as e:
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"The last good checkpoint is kept: {last}" in str(e.value)
    ckpt = read_checkpoint(last)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_auto_finds_the_newest_last_checkpoint_of_the_same_experiment(tmp_path):
    def run(name, overrides, mtime=None):
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if mtime is not None:
            (d / "checkpoints").mkdir()
            (d / "checkpoints" / "last.ckpt").write_bytes(b"x")
            os.utime(d / "checkpoints" / "last.ckpt", (mtime, mtime))
        return d / "checkpoints" / "last.ckpt"

    mine = ["model=logreg", "seed=1"]
    run("mnist_mlp/runs/a", ["model=logreg", "seed=1", "trainer.max_epochs=5"], mtime=100)
    newest = run("multiruns/x/0_seed=1", ["seed=1", "+model=logreg", "ckpt_path=auto"], mtime=300)
    run("mnist_mlp/runs/b", ["model=logreg", "seed=2"], mtime=900)           # another seed
    run("mnist_mlp/runs/c", ["model=logreg", "seed=1"])                      # no checkpoint yet
    run("mnist_mlp/runs/d", ["model=logreg", "seed=1", "optimizer=adam"], mtime=950)  # another optimizer
    assert find_last_checkpoint(tmp_path, [*mine, "ckpt_path=auto", "trainer.max_epochs=9",
                                           "hydra.run.dir=x"]) == newest
    assert find_last_checkpoint(tmp_path, ["model=logreg", "seed=3"]) is None
    assert experiment_key(["b=1", "a=2", "ckpt_path=auto"]) == ("a=2", "b=1")


def test_auto_finds_runs_behind_a_link_and_in_its_own_run_directory(tmp_path):
    """outputs/reproduce linked to another disk (Path.glob("**") does not follow links: every
    pipeline run then started again from scratch), a link back up the tree (walked once), and
    hydra.run.dir outside paths.log_dir (the run's own directory is searched too)."""
    def run(d, overrides, mtime):
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(d / "checkpoints" / "last.ckpt", (mtime, mtime))
        return d / "checkpoints" / "last.ckpt"

    outputs, disk = tmp_path / "outputs", tmp_path / "bigdisk" / "reproduce"
    outputs.mkdir()
    (outputs / "reproduce").symlink_to(disk, target_is_directory=True)
    mine = ["model=logreg", "seed=0"]
    linked = run(disk / "a" / "seed0", mine, mtime=200)
    run(outputs / "logreg" / "runs" / "t", mine, mtime=100)
    (disk / "loop").symlink_to(outputs, target_is_directory=True)        # a cycle
    found = find_last_checkpoint(outputs, [*mine, "ckpt_path=auto"])
    assert found is not None and found.resolve() == linked.resolve()
    elsewhere = run(tmp_path / "scratch" / "run", mine, mtime=300)       # hydra.run.dir=<elsewhere>
    assert find_last_checkpoint(outputs, mine, run_dir=tmp_path / "scratch" / "run") == elsewhere
    assert find_last_checkpoint(outputs, ["model=logreg", "seed=1"], run_dir=tmp_path / "scratch" / "run") is None
    # the run's own last.ckpt wins over a newer one of the same key elsewhere (a pipeline row
    # that differs from another only in trainer.max_epochs once resumed from the other's)
    run(outputs / "logreg" / "runs" / "u", [*mine, "trainer.max_epochs=40"], mtime=900)
    assert find_last_checkpoint(outputs, mine, run_dir=tmp_path / "scratch" / "run") == elsewhere


def test_ddp_processes_started_by_lightning_take_rank_zeros_auto_choice(tmp_path, monkeypatch):
    """Lightning's DDP children re-run the entry point from the saved config, without the
    command-line overrides that identify the experiment: they must resume from what rank 0
    chose, not search again."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("FODL_AUTO_CKPT_PATH", "unset")
    cfg = compose_train(["ckpt_path=auto", "seed=3"], tmp_path / "outputs" / "r")
    assert resolve_ckpt_path(cfg) is None  # nothing to resume under tmp_path/outputs
    assert os.environ["FODL_AUTO_CKPT_PATH"] == ""  # rank 0's choice, for the children it starts
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("FODL_AUTO_CKPT_PATH", "/runs/a/checkpoints/last.ckpt")
    assert resolve_ckpt_path(cfg) == "/runs/a/checkpoints/last.ckpt"


def test_a_resumed_run_continues_the_same_tensorboard_curves(tmp_path, tiny_mnist):
    """2 epochs, then a resume to 3 in a new run directory: its tensorboard/ must hold the
    whole curve, equal to an uninterrupted 3-epoch run's, with what the interrupted run logged
    after its checkpoint hidden."""
    from torch.utils.tensorboard import SummaryWriter

    from fodl.analysis.tblogs import read_scalars

    common = ("model=mnist_mlp", "test=false", "callbacks.parameter_summaries=null")
    train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=3", run="full"))
    train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=2", run="first"))
    # what a run killed during its third epoch would have logged after the checkpoint
    w = SummaryWriter(tmp_path / "first" / "tensorboard")
    w.add_scalar("train/loss", 123.0, global_step=25)
    w.close()
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(train_cfg(tmp_path, tiny_mnist, *common, "trainer.max_epochs=3", f"ckpt_path={last}",
                    run="resumed"))
    full = read_scalars(tmp_path / "full" / "tensorboard")
    resumed = read_scalars(tmp_path / "resumed" / "tensorboard")
    for tag in ("train/loss", "val/loss", "val/acc"):
        assert [s for s, _ in resumed[tag]] == [s for s, _ in full[tag]] == [9, 19, 29], tag
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in full[tag]], rel=1e-6), tag


@pytest.mark.slow
def test_sigkill_at_several_points_then_auto_resume_equals_uninterrupted(tmp_path, tiny_mnist):
    """A real training subprocess is SIGKILLed twice (once while it writes a checkpoint when
    that moment is caught, once at a random point of an epoch) and relaunched each time with
    the same command and ckpt_path=auto; the final weights must equal an uninterrupted run's.
    (scripts/crash_resume.py runs the same experiment with 10 kills.)"""
    cr = _script("crash_resume")
    overrides = ["model=mnist_mlp", f"paths.data_dir={tiny_mnist}", "data.val_size=200",
                 "trainer.max_epochs=6", "trainer.enable_model_summary=false",
                 "data.steps_per_execution=1", "test=false", "callbacks.parameter_summaries=null"]
    root = tmp_path / "crashed"
    root.mkdir()
    kills = []
    for attempt in range(2):
        proc = cr.launch(root, [*overrides, "ckpt_path=auto"])
        out = cr.Lines(proc)
        assert out.wait_epochs(1, proc), "".join(out.lines[-30:])  # this launch trained an epoch
        caught = False
        if attempt == 0:  # kill while the next checkpoint is written, if that moment is seen
            while not caught and out.epochs < 2 and proc.poll() is None:
                caught = any(p.name.startswith(".last.ckpt.tmp-")
                             for p in root.glob("outputs/**/checkpoints/.*"))
        else:  # at a random point of the epoch after the first
            time.sleep(random.uniform(0.05, 0.5))
        assert proc.poll() is None, "the run ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append((out.epochs, caught))
    final = cr.launch(root, [*overrides, "ckpt_path=auto"])
    out = cr.Lines(final)
    assert final.wait() == 0, "".join(out.lines[-30:])
    out.thread.join(5)
    assert any("ckpt_path=auto: resuming from" in line for line in out.lines)
    # the reference: the same run, uninterrupted, in this process
    train(train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", *overrides[3:], run="reference"))
    ref = tmp_path / "reference" / "checkpoints" / "last.ckpt"
    crashed = cr.newest_last(root, overrides)
    assert read_checkpoint(crashed)["epoch"] == 5, kills
    same, diff = cr.state_dicts_equal(ref, crashed)
    assert same, f"max abs difference {diff} after kills {kills}"


def test_resuming_a_finished_run_reports_its_validation_metrics(tmp_path, tiny_mnist):
    """A run killed after its last checkpoint (or relaunched with ckpt_path=auto once done) has
    nothing left to train: the relaunch still reports the final weights' validation metrics,
    so optimized_metric and metrics.json are there (it used to exit 2 with no metrics)."""
    common = ("model=mnist_mlp", "test=false", "callbacks.parameter_summaries=null",
              "trainer.max_epochs=2")
    first = train(train_cfg(tmp_path, tiny_mnist, *common, run="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    again = train(train_cfg(tmp_path, tiny_mnist, *common, f"ckpt_path={last}", run="again"))
    assert again["val/acc"] == pytest.approx(first["val/acc"])
    assert again["val/loss"] == pytest.approx(first["val/loss"], rel=1e-5)
    assert (tmp_path / "again" / "metrics.json").is_file()
