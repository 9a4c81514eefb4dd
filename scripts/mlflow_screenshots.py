#!/usr/bin/env python
"""Screenshots of the real MLflow UI on fodl runs (docs/mlflow_*.png, shown in docs/tracking.md).

    python scripts/mlflow_screenshots.py --train        # make the runs, then shoot
    python scripts/mlflow_screenshots.py                # shoot the runs already in --logdir

With --train it first runs, under <logdir> (default outputs/screenshots_mlflow), a sweep of the
chapter 3 MLP over three optimizers with logger=many (TensorBoard, CSV, MLflow, W&B offline),
reading MNIST from paths.data_dir / $FODL_DATA_DIR. Then it starts `mlflow server` on the
sweep's SQLite store (<logdir>/mlruns/mlflow.db) on a free loopback port and takes, with headless
Chromium (`apt-get install chromium`, or --chromium PATH):

    docs/mlflow_runs.png    the experiment's runs of the sweep, compared in charts
    docs/mlflow_run.png     one run: its parameters (the TensorBoard HPARAMS set), metrics, tags

The pictures in the docs: --train --epochs 3 +trainer.limit_train_batches=100 (a shared 2-core
CPU). Not part of the test suite (it needs Chromium); what the pictures show is tested through
the MLflow client against a real server in tests/test_tracking.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from tensorboard_screenshots import free_port, screenshot_args, shoot  # noqa: E402


def train_runs(logdir: Path, epochs: int, extra: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "model=mnist_mlp",
           "optimizer=sgd,momentum,adam", f"trainer.max_epochs={epochs}", "logger=many",
           f"paths.log_dir={logdir}", "callbacks.progress_bar.style=lines",
           "hydra.sweep.subdir=${hydra.job.num}_${hydra.runtime.choices.optimizer}", *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"mlflow server at {base} did not start within {timeout:.0f} s")


def main() -> None:
    args, logdir = screenshot_args(__doc__, "outputs/screenshots_mlflow", 3, 60000, train_runs)
    db = logdir / "mlruns" / "mlflow.db"
    if not db.is_file():
        raise SystemExit(f"{db} does not exist: run with --train, or give --logdir.")
    from mlflow import MlflowClient

    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mnist_mlp")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    adam = next((r for r in runs if r.data.params.get("optimizer") == "adam"), runs[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri", uri],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        wait_healthy(base, server)
        e = exp.experiment_id
        ml = "workflowType=machine_learning"  # the UI's model-training view, not the GenAI one
        shoot(args.chromium, f"{base}/#/experiments/{e}/runs?{ml}&compareRunsMode=CHART",
              out / "mlflow_runs.png", "2000,1100", args.budget_ms)
        shoot(args.chromium, f"{base}/#/experiments/{e}/runs/{adam.info.run_id}?{ml}",
              out / "mlflow_run.png", "1600,1500", args.budget_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
