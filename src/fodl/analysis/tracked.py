"""A sweep's jobs read back from MLflow (``scripts/aggregate.py --mlflow URI multiruns/<time>``):
the runs fodl's MLflow logger tagged with the sweep (:mod:`fodl.tracking`), as the
:class:`fodl.analysis.aggregate.Job` s the sweep directory would give."""

from __future__ import annotations

import json
from pathlib import Path

from fodl.analysis.aggregate import Job, _parse_overrides
from fodl.errors import FodlError
from fodl.tracking import INSTALL, available


def mlflow_jobs(tracking_uri: str, sweep: str):
    """The jobs of sweep ``sweep`` (the ``sweep`` tag: the sweep directory under
    ``paths.log_dir``, e.g. ``multiruns/<time>``) as :class:`fodl.analysis.aggregate.Job`s, read
    from the MLflow store at ``tracking_uri``."""
    if not available("mlflow"):
        raise FodlError(f"--mlflow needs the mlflow package. Install the tracking extra: {INSTALL}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps, filter_string=f"tags.sweep = '{sweep}'",
                                  max_results=5000) if exps else []
    except MlflowException as e:
        raise FodlError(f"Cannot read the MLflow store {tracking_uri} ({str(e).splitlines()[0]}). "
                        "Give the tracking URI the runs were logged to, e.g. "
                        "sqlite:///outputs/mlruns/mlflow.db or http://host:5000.") from None
    if not runs:
        raise FodlError(f"The MLflow store {tracking_uri} has no run of sweep {sweep!r} (tag "
                        "sweep). Give the sweep's directory under outputs/, e.g. "
                        "multiruns/<time>, as fodl tags it.")
    status = {"FINISHED": "completed", "FAILED": "failed"}
    jobs = []
    for r in runs:
        tags = r.data.tags
        try:
            overrides = json.loads(tags.get("overrides", "[]"))
        except json.JSONDecodeError:
            overrides = []
        run_dir = Path(tags.get("run_dir", r.info.run_name or r.info.run_id))
        num = int(run_dir.name.split("_", 1)[0]) if run_dir.name.split("_", 1)[0].isdigit() else None
        st = status.get(r.info.status, "unknown")
        metrics = {k: float(v) for k, v in r.data.metrics.items() if k != "epoch"}
        err = None if st == "completed" else (
            f"MLflow run {r.info.run_id} ended {r.info.status}" if st == "failed" else
            f"no result (MLflow run {r.info.run_id} is {r.info.status}: killed or still running)")
        jobs.append(Job(run_dir, num, _parse_overrides(overrides), st, err,
                        metrics if st == "completed" else {}))
    return sorted(jobs, key=lambda j: (j.num is None, j.num or 0, j.path.name))
