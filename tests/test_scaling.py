"""Beyond one process: two "nodes" on the loopback address (torchrun and SLURM environments),
SLURM preemption (Lightning's requeue, then ckpt_path=auto in the same run directory), the
sbatch script a SLURM sweep submits, and the run directory every process of a job shares."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT, run_script, train_cfg, workdir_data
from fodl.checkpoint import load_run, read_checkpoint
from fodl.cluster import launcher_problems, run_id
from fodl.config import CONF_DIR
from fodl.errors import FodlError
from fodl.sweep import SweepReport
from fodl.train import build

TRAIN = str(ROOT / "scripts" / "train.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**more) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_", "FODL_RUN_ID")) and k not in
           ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.update({k: str(v) for k, v in more.items()})
    return env


def _slurm(job, procid, ntasks, port, **more) -> dict:
    """The variables srun gives a task with one task per node (what Lightning reads)."""
    return dict(SLURM_JOB_ID=job, SLURM_STEP_ID=0, SLURM_JOB_NAME="train", SLURM_NTASKS=ntasks,
                SLURM_NNODES=ntasks, SLURM_NTASKS_PER_NODE=1, SLURM_PROCID=procid,
                SLURM_LOCALID=0, SLURM_NODEID=procid, SLURM_NODELIST="127.0.0.1",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **more)


def test_the_processes_of_one_job_share_a_run_directory(monkeypatch):
    for var in ("FODL_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert run_id("2026-01-01_00-00-00-000000") == "2026-01-01_00-00-00-000000"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id
    assert run_id("t") == "t"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    assert run_id("t") == "torchrun-job7"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # salloc shell, no job step: a fresh directory
    assert run_id("t") == "torchrun-job7"
    monkeypatch.setenv("SLURM_STEP_ID", "4294967294")  # the batch step
    assert run_id("t") == "torchrun-job7"
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # srun: every task, and the requeued job, the same
    assert run_id("t") == "slurm-4242.0"
    monkeypatch.setenv("FODL_RUN_ID", "mine")
    assert run_id("t") == "mine"


def _hydra_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_slurm_launcher_resources_follow_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _hydra_cfg("hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "trainer.num_nodes=2")
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher_problems(cfg) == []
    cpu = _hydra_cfg("hydra/launcher=slurm", "trainer=ddp", "trainer.accelerator=cpu")
    assert cpu.hydra.launcher.gpus_per_node is None and cpu.hydra.launcher.tasks_per_node == 2
    bad = _hydra_cfg("hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4",
                     "hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=1")
    problems = "; ".join(launcher_problems(bad))
    assert "tasks_per_node=2 but trainer.devices=4" in problems and "gpus_per_node=1" in problems
    assert launcher_problems(_hydra_cfg("hydra/launcher=submitit_local")) == []
    # such a sweep is refused when it starts, before anything is submitted
    with pytest.raises(SystemExit) as e:
        SweepReport().on_multirun_start(bad)
    assert e.value.code == 2


def test_seed_null_is_refused_on_a_process_other_than_rank_zero(tmp_path, tiny_mnist, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.setenv("RANK", "1")  # e.g. node 1 of a torchrun job, whose LOCAL_RANK is 0
    with pytest.raises(FodlError, match="seed=null cannot be used"):
        build(train_cfg(tmp_path, tiny_mnist, "seed=null"))


@pytest.mark.slow
def test_a_slurm_sweep_submits_the_derived_resources(workdir):
    """No cluster here: a fake sbatch keeps the script submitit writes and refuses the job."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$FAKE_SBATCH_OUT"\necho "no cluster" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    script = workdir / "job.sbatch"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_OUT": str(script)}
    r = run_script("train.py", ["-m", "hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4",
                                "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
                                "hydra.launcher.account=proj", "ckpt_path=auto", "seed=1,2"],
                   workdir, env=env)
    assert r.returncode != 0 and "no cluster" in r.stdout + r.stderr
    sbatch = script.read_text()
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                 "--account=proj", "--time=240", "--cpus-per-task=8", "--array=0-1%2",
                 "--signal=USR2@120"):
        assert f"#SBATCH {flag}\n" in sbatch, flag
    assert "srun --unbuffered" in sbatch and "submitit.core._submit" in sbatch


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_two_nodes_on_loopback_train_one_model(workdir, launcher):
    """trainer.num_nodes=2, one CPU process per "node", both on 127.0.0.1 (gloo), started as two
    launches with their node ranks: by torchrun, or as srun would under SLURM (Lightning's
    SLURMEnvironment). Same final weights on both, one run directory, metrics counted once."""
    port = _free_port()
    args = [*workdir_data(workdir), "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.num_nodes=2", "trainer.strategy=ddp", "callbacks.parameter_summaries=null",
            "+callbacks.probe._target_=probes.SaveRankWeights", f"+callbacks.probe.out_dir={workdir / 'ranks'}"]
    procs = []
    for node in (0, 1):
        if launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                   f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
                   "--rdzv-id=job7", TRAIN, *args]
            env = _env()
        else:
            cmd, env = [sys.executable, TRAIN, *args], _env(**_slurm(77, node, 2, port))
        procs.append(subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    (run,) = (workdir / "outputs" / "mnist_mlp" / "runs").iterdir()
    assert run.name == ("torchrun-job7" if launcher == "torchrun" else "slurm-77.0")
    w0 = torch.load(workdir / "ranks" / "rank0.pt", weights_only=True)
    w1 = torch.load(workdir / "ranks" / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert all(torch.equal(last["state_dict"][k], w0[k]) for k in w0)
    # 1000 training images, 500 per node, minibatches of 100: 5 optimizer steps per epoch
    assert last["global_step"] == 10
    # metrics counted once: one metrics.json line, and the 2-shard test accuracy equals a
    # single-process evaluation of the same checkpoint
    assert (run / "train.log").read_text().count("metrics: ") == 1
    import json

    import lightning as L
    metrics = json.loads((run / "metrics.json").read_text())
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    module, dm, _ = load_run(best, str(workdir / "data"))
    single = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                       enable_model_summary=False).test(module, datamodule=dm, verbose=False)[0]
    assert single["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_slurm_preemption_requeues_and_the_job_resumes_in_the_same_run(workdir):
    """Under SLURM, Lightning's auto-requeue is on: the preemption signal (SIGUSR1, from
    `#SBATCH --signal=SIGUSR1@90`) saves an hpc checkpoint and calls `scontrol requeue`. The
    job is then killed, and the requeued job (same job id, same command with ckpt_path=auto)
    resumes from the run's last.ckpt in the same run directory, continuing its curves."""
    from fodl.analysis.tblogs import read_scalars

    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$FAKE_SCONTROL_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    requeues = workdir / "scontrol.log"
    env = _env(**_slurm(4242, 0, 1, _free_port()), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               FAKE_SCONTROL_LOG=requeues)
    args = [TRAIN, *workdir_data(workdir), "trainer.max_epochs=4", "data.steps_per_execution=1",
            "test=false", "callbacks.parameter_summaries=null", "ckpt_path=auto"]
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from crash_resume import Lines
    finally:
        sys.path.pop(0)
    proc = subprocess.Popen([sys.executable, *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    out = Lines(proc)
    assert out.wait_epochs(1, proc), "".join(out.lines[-30:])
    proc.send_signal(signal.SIGUSR1)
    end = time.monotonic() + 120
    while not (requeues.exists() and requeues.read_text()) and time.monotonic() < end:
        time.sleep(0.05)
    proc.kill()  # what SLURM does at the end of the grace period
    proc.wait()
    assert requeues.read_text().split() == ["requeue", "4242"], "".join(out.lines[-30:])
    run = workdir / "outputs" / "mnist_mlp" / "runs" / "slurm-4242.0"
    assert list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's save on the signal
    r = subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"resuming from {Path('outputs/mnist_mlp/runs/slurm-4242.0/checkpoints/last.ckpt')}" in r.stdout
    assert [p.name for p in run.parent.iterdir()] == ["slurm-4242.0"]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 3
    steps = [s for s, _ in read_scalars(run / "tensorboard")["train/loss"]]
    assert steps == [9, 19, 29, 39]  # one curve: each epoch once, the killed epoch hidden
