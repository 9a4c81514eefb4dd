"""MLflow and W&B tracking (fodl.tracking): a real MLflow tracking server on the loopback
address, a run SIGKILLed mid-epoch and resumed with ckpt_path=auto into the same MLflow run with
no step twice; W&B offline runs resumed under the same id; the trackers' optional packages."""

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, compose_train, train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.errors import FodlError, user_error

mlflow = pytest.importorskip("mlflow", reason='the tracking extra: pip install -e ".[tracking]"')
from mlflow import MlflowClient  # noqa: E402

import fodl.tracking as tracking  # noqa: E402
from fodl.train import _instantiate_all, train  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend, in its own process group."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", (root / "artifacts").as_uri()],
            cwd=root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def wait_healthy(self, timeout: float = 180) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                time.sleep(0.25)
        self.log.flush()
        pytest.fail(f"mlflow server did not start: {Path(self.log.name).read_text()[-2000:]}")

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)  # the server and its uvicorn workers
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Started when the module's first test starts (it boots while the in-process tests run),
    stopped whatever happens."""
    srv = Server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _boot_server_early(server):
    pass


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def _artifacts(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def _launch(root: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "FODL_ROOT": str(root), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *overrides],
                            cwd=root, env=env, stdout=open(root / f"launch{time.time()}.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _resumed_pair(tmp_path, data, *overrides):
    """A 2-epoch run keeping every epoch's checkpoint, then a resume from its first epoch's
    checkpoint to 3 epochs in a new run directory: the first run stands for one killed after
    that checkpoint, having sent one more epoch; the resumed run recomputes that epoch and adds
    a third."""
    common = ["model=mnist_cnn", "test=false", "+trainer.limit_train_batches=3",
              "trainer.log_every_n_steps=1", "data.steps_per_execution=1",
              "callbacks.model_checkpoint.save_top_k=-1", *overrides]
    train(train_cfg(tmp_path, data, *common, "trainer.max_epochs=2", run="first"))
    (first_ckpt,) = (tmp_path / "first" / "checkpoints").glob("epoch000-*.ckpt")
    train(train_cfg(tmp_path, data, *common, "trainer.max_epochs=3", f"ckpt_path={first_ckpt}",
                    run="resumed"))
    return read_checkpoint(first_ckpt)


def test_a_resumed_run_continues_its_mlflow_and_wandb_runs_sending_no_step_twice(tmp_path, tiny_mnist):
    """logger=[tensorboard,mlflow,wandb], the default stores. MLflow (SQLite under
    outputs/mlruns): the resume continues the run named in the checkpoint, sends none of the
    steps the first run sent, keeps the first value of a parameter MLflow cannot change, and
    the filters TensorBoard drew are uploaded as figures. W&B: an offline run (config, history,
    summary in run-<id>.wandb, what `wandb sync` uploads; the config files beside it) that the
    resume continues under the same id, again with no step twice."""
    ckpt = _resumed_pair(tmp_path, tiny_mnist, "logger=[tensorboard,mlflow,wandb]",
                         "logger.wandb.project=p")
    # MLflow
    store = tmp_path / "outputs" / "mlruns"
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_cnn").experiment_id])
    assert ckpt[tracking.CKPT_KEY]["mlflow"] == run.info.run_id
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert [s for s, _ in _history(client, run.info.run_id, "train/loss_step")] == list(range(9))
    assert [s for s, _ in _history(client, run.info.run_id, "val/acc")] == [2, 5, 8]
    assert run.data.params["trainer.max_epochs"] == "2"  # MLflow keeps a parameter's first value
    assert run.data.tags["resumed.trainer.max_epochs"] == "3"
    assert run.data.tags["resumed_in"] == str((tmp_path / "resumed").resolve())
    figures = [a for a in _artifacts(client, run.info.run_id) if a.startswith("figures/")]
    assert figures and all(f.startswith("figures/filters_first_conv_step") for f in figures)
    assert run.info.artifact_uri.startswith((store / "artifacts").as_uri())
    # W&B
    rid = ckpt[tracking.CKPT_KEY]["wandb"]
    files = sorted(tmp_path.glob(f"*/wandb/offline-run-*-{rid}/run-{rid}.wandb"))
    assert [f.parents[2].name for f in files] == ["first", "resumed"]
    seen: dict[str, list[int]] = {}
    for f in files:
        kinds, config = set(), {}
        for rec in tracking.wandb_records(f):
            kind = rec.WhichOneof("record_type")
            kinds.add(kind)
            if kind == "run":
                assert rec.run.run_id == rid and rec.run.project == "p"
            if kind == "config":
                config.update({i.key: i.value_json for i in rec.config.update})
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
                for k in items:
                    if "/" in k and k != "trainer/global_step":
                        seen.setdefault(k, []).append(int(float(items["trainer/global_step"])))
        assert {"run", "config", "history", "summary"} <= kinds, kinds
        assert json.loads(config["model"]) == "mnist_cnn" and json.loads(config["optimizer.lr"]) == 1e-4
        assert json.loads(config["fodl/git_commit"]) and json.loads(config["fodl/hardware"])
        assert (f.parent / "files" / "hydra" / "resolved_config.yaml").is_file()
    assert seen["train/loss_step"] == list(range(9)) and seen["val/acc"] == [2, 5, 8]
    assert list((files[-1].parent / "files" / "figures").glob("filters_first_conv_step*.png"))
    out = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(files[0].parent)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "WANDB_SILENT": "false"})
    assert f"run-{rid}.wandb" in out.stdout + out.stderr


def test_a_missing_tracker_package_is_named_with_the_install_command(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tracking, "available", lambda module: False)
    cfg = compose_train(["logger=mlflow"], tmp_path / "r")
    with pytest.raises(Exception) as e:  # Hydra's InstantiationException around it
        _instantiate_all(cfg.logger, "logger")
    assert re.search(r'logger=mlflow needs the mlflow package.*pip install -e "\.\[tracking\]"',
                     str(user_error(e.value)))
    cfg = compose_train(["logger=many"], tmp_path / "r")
    with caplog.at_level("WARNING", logger="fodl.tracking"):
        loggers = _instantiate_all(cfg.logger, "logger")
    assert sorted(type(lg).__name__ for lg in loggers) == ["CSVLogger", "TensorBoardLogger"]
    assert 'pip install -e ".[tracking]"' in caplog.text and "without wandb" in caplog.text


def test_an_unreachable_tracking_server_is_one_clear_error(tmp_path, tiny_mnist, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    cfg = train_cfg(tmp_path, tiny_mnist, "model=logreg", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    with pytest.raises(FodlError, match=f"Could not start the run in the MLflow tracking store {uri} "
                                        r"\(.*Check that it is reachable.*logger.mlflow.tracking_uri"):
        train(cfg)


def test_aggregate_reads_a_sweep_back_from_mlflow(server, tmp_path, monkeypatch):
    """Three jobs of one sweep on the server, as fodl's MLflow logger records them (the sweep
    tag, the overrides, the final metrics; one job failed), aggregated from MLflow by
    scripts/aggregate.py --mlflow; a job of another sweep is not counted."""
    uri = server.wait_healthy()
    jobs = [("multiruns/s1", 0, "seed=1", 0.9, "success"), ("multiruns/s1", 1, "seed=2", 0.8, "success"),
            ("multiruns/s1", 2, "seed=3", None, "failed"), ("multiruns/s2", 0, "seed=1", 0.1, "success")]
    for sweep, num, override, acc, status in jobs:
        lg = tracking.mlflow_logger("logreg", str(tmp_path / sweep / f"{num}_{override}"), str(tmp_path),
                                    tracking_uri=uri)
        lg.log_hyperparams({"model": "logreg", "seed": override[-1]})
        lg.tag({"sweep": sweep, "overrides": json.dumps([override, "model=logreg"])})
        if acc is not None:
            lg.log_metrics({"val/acc": acc, "epoch": 0}, step=9)
        lg.finalize(status)
    spec = importlib.util.spec_from_file_location("aggregate", ROOT / "scripts" / "aggregate.py")
    agg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agg)
    monkeypatch.setattr(sys, "argv", ["aggregate.py", "--mlflow", uri, "multiruns/s1",
                                      "--out", str(tmp_path / "agg")])
    assert agg.main() == 1  # a job failed
    md = (tmp_path / "agg" / "aggregate.md").read_text()
    assert "3 jobs, 2 completed, 1 failed" in md and "| all | 2 | 0.85 ± 0.07071 |" in md, md
    assert "#2 seed=3 model=logreg: MLflow run" in md and "ended FAILED" in md


def test_a_killed_run_resumes_into_the_same_mlflow_run_on_a_real_server(server, tmp_path, tiny_mnist):
    """scripts/train.py logs to a real MLflow server; it is SIGKILLed after a checkpoint
    exists and after it sent steps past that checkpoint, then relaunched with ckpt_path=auto.
    Through the MLflow client: one run, finished, with the params, the tags, every step of the
    per-step loss exactly once (the killed attempt's steps past the checkpoint are not sent
    again), one validation point per epoch, and the run's config as artifacts."""
    uri = server.wait_healthy()
    root = tmp_path / "root"
    root.mkdir()
    overrides = ["model=mnist_mlp", f"paths.data_dir={tiny_mnist}", "data.val_size=200",
                 "data.batch_size=50", "data.steps_per_execution=1", "trainer.max_epochs=3",
                 "trainer.log_every_n_steps=1",
                 "trainer.enable_model_summary=false", "callbacks.parameter_summaries=null",
                 "callbacks.progress_bar.style=lines", "test=false", "logger=mlflow",
                 f"logger.mlflow.tracking_uri={uri}", "ckpt_path=auto"]
    client = MlflowClient(uri)
    proc = _launch(root, overrides)
    killed_at = None
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            last = next(root.glob("outputs/**/checkpoints/last.ckpt"), None)
            exp = client.get_experiment_by_name("mnist_mlp")
            if last is None or exp is None:
                continue
            runs = client.search_runs([exp.experiment_id])
            if not runs:
                continue
            try:
                ckpt_step = read_checkpoint(last)["global_step"]
            except FodlError:
                continue
            sent = [s for s, _ in _history(client, runs[0].info.run_id, "train/loss_step")]
            if sent and max(sent) > ckpt_step:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = (ckpt_step, max(sent))
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_at, "the run ended before it was killed past a checkpoint"
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_mlp").experiment_id])
    assert run.info.status == "RUNNING"  # killed: nothing could end it

    again = _launch(root, overrides)
    assert again.wait(300) == 0, "\n".join(p.read_text()[-3000:] for p in root.glob("launch*.log"))
    runs = client.search_runs([client.get_experiment_by_name("mnist_mlp").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # the same run, continued
    run = runs[0]
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    steps_per_epoch = 1000 // 50
    total = 3 * steps_per_epoch
    steps = [s for s, _ in _history(client, rid, "train/loss_step")]
    assert steps == list(range(total)), (killed_at, steps)  # every step once, none twice
    assert [s for s, _ in _history(client, rid, "val/acc")] == [
        steps_per_epoch * e - 1 for e in (1, 2, 3)]
    for key in run.data.metrics:
        s = [s for s, _ in _history(client, rid, key)]
        assert len(s) == len(set(s)), key
    p = run.data.params
    assert p["model"] == "mnist_mlp" and p["data.batch_size"] == "50" and p["trainer.max_epochs"] == "3"
    assert not any(str(tmp_path) in v for v in p.values())  # no paths among the hyperparameters
    tags = run.data.tags
    assert tags["git_commit"] and tags["hardware"] and "resumed_in" in tags
    assert Path(tags["best_checkpoint"]).is_file()
    assert "logger=mlflow" in json.loads(tags["overrides"])
    arts = _artifacts(client, rid)
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/resolved_config.yaml"} <= set(arts)
