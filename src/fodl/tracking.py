"""MLflow and Weights & Biases tracking (``logger=mlflow``, ``logger=wandb``, ``logger=many``),
continued across a resume.

Both are Lightning's own loggers (:class:`MLFlowLogger`, :class:`WandbLogger`), built by
:func:`mlflow_logger` / :func:`wandb_logger` from ``conf/logger/*.yaml``; the packages are the
optional ``[tracking]`` extra. A missing package stops ``logger=mlflow`` / ``logger=wandb``
with the install command; ``logger=many`` leaves that tracker out with a warning.

What a run sends (:class:`TrackedRun`, added by ``fodl.train`` when a tracker logs):

- the hyperparameters of the TensorBoard HPARAMS trial (:func:`fodl.hparams.run_hparams`: flat,
  no paths), when fitting starts;
- every metric Lightning logs, against the same step axis as TensorBoard;
- tags: ``git_commit``, ``hardware``, ``run_dir``, ``overrides``, and in a sweep ``sweep`` (the
  sweep directory under ``paths.log_dir``; the W&B *group*), so a sweep's jobs are found
  together (``scripts/aggregate.py --mlflow``);
- artifacts: the run's Hydra config and overrides (``hydra/``), and at the end the figures the
  run drew into TensorBoard (first-layer filters, reconstructions, attention maps, DNC memory,
  ...; the last image of each tag, ``figures/``) and the best checkpoint's path
  (``best_checkpoint``).

MLflow names the experiment after the model and the run after its run directory; the default
store is SQLite under ``paths.log_dir`` (``outputs/mlruns/mlflow.db``, artifacts in
``outputs/mlruns/artifacts``), no server needed. W&B runs offline by default, into
``<run dir>/wandb`` (``wandb sync`` uploads it later).

**Resume.** Every checkpoint records the tracker runs it belongs to (``fodl_trackers``: the
MLflow run id, the W&B run id). ``ckpt_path=...``, ``ckpt_path=auto`` and a requeued SLURM job
therefore continue *the same* tracker run (:func:`continue_trackers`), not a new one. A run
killed after its checkpoint had already sent the steps between that checkpoint and the kill;
the resumed run recomputes them. TensorBoard hides the killed run's copies (``purge_step``),
but neither tracker can delete a metric point (MLflow has no API for it; W&B's history is
append-only), so the resumed run does not send a step the tracker run already holds for that
metric: it asks MLflow for each metric's last step, and reads the W&B run's local history
files (``run-<id>.wandb``) for it. Each step is therefore in the history once. The values kept
for the steps between the checkpoint and the kill are the killed run's: the same numbers the
resumed run computes, since a resumed fodl run repeats the uninterrupted one's steps exactly on
the same hardware (``tests/test_crash_safety.py``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from fodl.errors import FodlError

log = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[tracking]"'
KIND_TAG = "mlflow.experimentKind"
CKPT_KEY = "fodl_trackers"  # {"mlflow": run id, "wandb": run id} in every checkpoint


def _missing(package: str, logger: str, required: bool) -> None:
    msg = (f"logger={logger} needs the {package} package, which is not installed. Install the "
           f"tracking extra: {INSTALL}")
    if required:
        raise FodlError(msg + ", or choose another logger (e.g. logger=tensorboard).")
    log.warning("%s. This run logs without %s.", msg, logger)


def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- run context: run dir, sweep, overrides, git commit, hardware ------------------------------


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get()
    except ValueError:  # not under Hydra
        return None


def sweep_name(log_dir: str | Path | None = None) -> str | None:
    """The sweep this job belongs to (its sweep directory, relative to ``paths.log_dir`` when
    under it), or None outside a sweep."""
    from hydra.types import RunMode

    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    d = Path(str(hc.sweep.dir))
    if log_dir is not None:
        try:
            return str(d.resolve().relative_to(Path(str(log_dir)).resolve()))
        except ValueError:
            pass
    return str(d)


def run_dir_name(output_dir: str | Path) -> str:
    """A run's name: its directory's name; in a sweep, the job directory's path under the
    sweep directory (a job directory named after overrides with a ``/`` in a value is nested)."""
    from hydra.types import RunMode

    out = Path(str(output_dir))
    hc = _hydra()
    if hc is not None and hc.mode == RunMode.MULTIRUN:
        try:
            return str(out.resolve().relative_to(Path(str(hc.sweep.dir)).resolve()))
        except ValueError:
            pass
    return out.name


def _overrides() -> list[str]:
    hc = _hydra()
    return [str(o) for o in hc.overrides.task] if hc is not None else []


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the fodl checkout that runs (``+dirty`` with uncommitted changes to tracked
    files), or ``unknown`` outside a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def hardware(trainer: L.Trainer | None = None) -> str:
    """What the run trains on: the GPU model(s), or the CPU model and its core count."""
    import torch

    if trainer is not None and trainer.strategy.root_device.type == "cuda":
        n = trainer.num_devices * trainer.num_nodes
        return f"{torch.cuda.get_device_name(trainer.strategy.root_device)} x{n}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name} ({os.cpu_count()} cores)"


def _new_steps(last: dict[str, int], metrics: Mapping[str, float], step: int) -> dict[str, float]:
    """The metrics whose ``step`` is past the last one the tracker run holds for them (and
    ``last`` updated): a step the run holds (sent before a resume, or Lightning's ``epoch``
    logged with both the training and the validation metrics of a step) is not sent again."""
    out = {k: v for k, v in metrics.items() if step > last.get(k, -1)}
    for k in out:
        last[k] = step
    return out


# -- MLflow ------------------------------------------------------------------------------------


class MLflowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` that continues a run without sending a step twice, and logs
    each hyperparameter once (MLflow refuses to change a parameter; a resume that changes one,
    e.g. ``trainer.max_epochs``, records the new value as a ``resumed.<key>`` tag)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step: dict[str, int] = {}   # metric -> last step the run already holds
        self._params: dict[str, str] = {}
        self.failed: str | None = None  # why the run could not be started

    @property
    def experiment(self):
        """Lightning's, with a store that cannot be reached reported as one FodlError (Lightning
        first touches it when fitting starts)."""
        if self.failed:
            raise FodlError(self.failed)
        try:
            return MLFlowLogger.experiment.fget(self)
        except FodlError:
            raise
        except Exception as e:
            self.failed = _unreachable(self, e)
            raise FodlError(self.failed) from None

    def continue_run(self, run_id: str) -> bool:
        """Send everything to the existing run ``run_id`` (False, with a warning, when this
        tracking store has no such run: a new run is started)."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client
        try:
            run = client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow: the checkpoint's run %s is not in %s; starting a new MLflow run",
                        run_id, self._tracking_uri)
            return False
        self._run_id = run_id
        self._last_step = {k: max((int(m.step) for m in client.get_metric_history(run_id, k)), default=-1)
                           for k in run.data.metrics}
        self._params = dict(run.data.params)
        client.update_run(run_id, status="RUNNING")
        log.info("MLflow: continuing run %s (%s); steps it already holds are not sent again",
                 run_id, run.info.run_name)
        return True

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    def mark_model_training(self) -> None:
        """Tag a new experiment as model training, so the MLflow UI opens it on its runs,
        metrics and charts (MLflow 3 shows an untagged experiment as a GenAI one)."""
        client, eid = self.experiment, self.experiment_id
        if KIND_TAG not in (client.get_experiment(eid).tags or {}):
            client.set_experiment_tag(eid, KIND_TAG, "custom_model_development")

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        new, changed = {}, {}
        for k, v in dict(params).items():
            v = str(v)
            if k not in self._params:
                new[k] = v
            elif self._params[k] != v:
                changed[f"resumed.{k}"] = v
        if new:
            super().log_hyperparams(new)
            self._params.update(new)
        for k, v in changed.items():
            self.experiment.set_tag(self.run_id, k, v)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = _new_steps(self._last_step, metrics, step or 0)
        if metrics:
            super().log_metrics(metrics, step)

    def tag(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.experiment.set_tag(self.run_id, k, str(v)[:5000])

    def upload(self, files: Iterable[Path], artifact_path: str) -> None:
        for f in files:
            self.experiment.log_artifact(self.run_id, str(f), artifact_path)


def mlflow_logger(experiment_name: str, output_dir: str, store_dir: str,
                  tracking_uri: str | None = None, run_name: str | None = None,
                  tags: dict[str, str] | None = None, log_model: bool | str = False,
                  artifact_location: str | None = None, required: bool = True) -> MLflowLogger | None:
    """The MLflow logger of ``conf/logger/mlflow.yaml``: experiment ``experiment_name`` (the
    model), run named after the run directory; ``tracking_uri`` null: SQLite in ``store_dir``
    with the artifacts beside it. None (with a warning) when mlflow is missing and not
    ``required`` (``logger=many``)."""
    if not available("mlflow"):
        return _missing("mlflow", "mlflow", required)
    if not tracking_uri:
        store = Path(store_dir).resolve()
        store.mkdir(parents=True, exist_ok=True)
        tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        artifact_location = artifact_location or (store / "artifacts").as_uri()
    all_tags = {"run_dir": str(Path(output_dir).resolve()), **(tags or {})}
    return MLflowLogger(experiment_name=str(experiment_name), run_name=run_name or run_dir_name(output_dir),
                        tracking_uri=tracking_uri, tags=all_tags, log_model=log_model,
                        artifact_location=artifact_location)


# -- Weights & Biases --------------------------------------------------------------------------


class WandbRun(WandbLogger):
    """Lightning's ``WandbLogger`` that continues a run without sending a step twice."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # wandb warns that it has no effect
        self._last_step: dict[str, int] = {}

    def continue_run(self, run_id: str, dirs: Iterable[str | Path]) -> bool:
        """Resume the W&B run ``run_id``; the steps it holds are read from its local history
        (``run-<id>.wandb`` under ``<dir>/wandb`` of each of ``dirs``)."""
        if self._experiment is not None:
            return False
        self._wandb_init["id"] = self._id = run_id
        self._wandb_init["resume"] = "allow"
        for d in dirs:
            for f in sorted(Path(d).glob(f"wandb/*-{run_id}/run-{run_id}.wandb")):
                for key, step in wandb_history_steps(f).items():
                    self._last_step[key] = max(step, self._last_step.get(key, -1))
        log.info("W&B: continuing run %s; steps it already holds are not sent again", run_id)
        return True

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = _new_steps(self._last_step, metrics, step) if step is not None else metrics
        if metrics:
            super().log_metrics(metrics, step)

    def finish(self, status: str = "success") -> None:
        """Finalize and finish the W&B run (flushed to its files), so that a next run in this
        process starts its own."""
        if self._experiment is None:
            return
        self.finalize(status)
        self._experiment.finish(exit_code=0 if status == "success" else 1)
        self._experiment = None

    def tag(self, tags: Mapping[str, Any]) -> None:
        self.experiment.config.update({f"fodl/{k}": str(v) for k, v in tags.items()},
                                      allow_val_change=True)

    def upload(self, files: Iterable[Path], artifact_path: str) -> None:
        run_dir = Path(self.experiment.dir)  # <wandb run>/files: what `wandb sync` uploads
        for f in files:
            dst = run_dir / artifact_path / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(Path(f).read_bytes())
            self.experiment.save(str(dst), base_path=str(run_dir), policy="now")


def wandb_logger(output_dir: str, project: str = "fodl", entity: str | None = None,
                 offline: bool = True, name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, log_model: bool | str = False,
                 required: bool = True) -> WandbRun | None:
    """The W&B logger of ``conf/logger/wandb.yaml``: offline by default, into
    ``<output_dir>/wandb``; run named after the run directory, grouped by the sweep."""
    if not available("wandb"):
        return _missing("wandb", "wandb", required)
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbRun(name=name or run_dir_name(output_dir), save_dir=str(output_dir), offline=offline,
                    project=project, entity=entity, group=group or sweep_name(),
                    tags=list(tags or []), log_model=log_model, job_type="train")


def wandb_history_steps(path: str | Path) -> dict[str, int]:
    """The last ``trainer/global_step`` of every metric in a W&B run file (``run-<id>.wandb``:
    a LevelDB-format log of protobuf records, what ``wandb sync`` uploads)."""
    from google.protobuf.message import DecodeError

    out: dict[str, int] = {}
    try:
        for rec in wandb_records(path):
            if rec.WhichOneof("record_type") != "history":
                continue
            items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            step = items.get("trainer/global_step")
            if step is None:
                continue
            for k in items:
                if not k.startswith("_") and k != "trainer/global_step":
                    out[k] = max(int(float(step)), out.get(k, -1))
    except (OSError, ValueError, DecodeError) as e:
        log.warning("W&B: could not read the history of %s (%s); steps it holds may be sent "
                    "again", path, e)
    return out


def wandb_records(path: str | Path):
    """The protobuf records of a W&B run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:  # zero padding up to the block's end
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a whole record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


# -- the run: parameters, tags, artifacts, resume ----------------------------------------------

TRACKERS = (MLflowLogger, WandbRun)


def trackers(trainer_or_loggers) -> list:
    loggers = getattr(trainer_or_loggers, "loggers", trainer_or_loggers) or []
    return [lg for lg in loggers if isinstance(lg, TRACKERS)]


class TrackedRun(L.Callback):
    """What a run sends to MLflow / W&B besides the metrics (module docstring), and the tracker
    run ids in every checkpoint. Added by ``fodl.train`` only when a tracker logs."""

    def __init__(self, resolved: dict[str, Any], hparams: dict[str, Any]) -> None:
        self.resolved = resolved
        self.hparams = hparams
        self.output_dir = Path(str((resolved.get("paths") or {}).get("output_dir", ".")))
        self._started = False
        self._ended = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        ids = {}
        for lg in trackers(trainer):
            rid = lg.run_id if isinstance(lg, MLflowLogger) else lg.version
            if rid:
                ids["mlflow" if isinstance(lg, MLflowLogger) else "wandb"] = str(rid)
        if ids:
            checkpoint[CKPT_KEY] = ids

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._started:
            return
        self._started = True
        paths = (self.resolved.get("paths") or {})
        tags = {"git_commit": git_commit(), "hardware": hardware(trainer),
                "run_dir": str(self.output_dir.resolve()),
                "overrides": json.dumps(_overrides())}
        sweep = sweep_name(paths.get("log_dir"))
        if sweep:
            tags["sweep"] = sweep
        import yaml

        # Hydra's own files (config as composed, overrides, hydra settings) and the resolved
        # config that the checkpoints hold
        files = sorted(p for p in (self.output_dir / ".hydra").glob("*.yaml") if p.is_file())
        tmp = Path(tempfile.mkdtemp(prefix="fodl-config-"))
        resolved = tmp / "resolved_config.yaml"
        resolved.write_text(yaml.safe_dump(self.resolved, sort_keys=False))
        try:
            for lg in trackers(trainer):
                try:
                    if isinstance(lg, MLflowLogger):
                        lg.mark_model_training()
                    lg.log_hyperparams(self.hparams)
                    lg.tag(tags)
                    lg.upload([*files, resolved], "hydra")
                except Exception as e:
                    self._ended = True  # nothing more to send where nothing could be sent
                    raise FodlError(_unreachable(lg, e)) from None
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.is_global_zero:  # Lightning then finalizes the loggers ("failed")
            self.end(trainer)
            self.close(trainer, "failed")

    def end(self, trainer: L.Trainer) -> None:
        """The end of the run, before the loggers are finalized: figures, best checkpoint."""
        if not trainer.is_global_zero or self._ended:
            return
        self._ended = True
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        figures = tensorboard_figures(trainer)
        for lg in trackers(trainer):
            if getattr(lg, "failed", None):
                continue
            try:
                if best:
                    lg.tag({"best_checkpoint": str(Path(best).resolve())})
                if figures:
                    lg.upload(figures, "figures")
            except Exception as e:  # a tracker outage must not lose the run's own results
                log.warning("%s: could not send the run's figures / best checkpoint (%s)",
                            type(lg).__name__, e)
        if figures:
            import shutil

            shutil.rmtree(figures[0].parent, ignore_errors=True)

    def close(self, trainer: L.Trainer, status: str = "success") -> None:
        """After the loggers are finalized: the W&B run is finished (its process flushes), so a
        next run in this process starts its own."""
        if not trainer.is_global_zero:
            return
        for lg in trackers(trainer):
            if isinstance(lg, WandbRun):
                lg.finish(status)


def _unreachable(lg, e: Exception) -> str:
    first = next((line for line in str(e).splitlines() if line.strip()), "")[:300]
    if isinstance(lg, MLflowLogger):
        where = (f"the MLflow tracking store {lg.tracking_uri}", "logger.mlflow.tracking_uri")
    else:
        where = ("Weights & Biases", "logger.wandb.offline=true (or `wandb login`)")
    return (f"Could not start the run in {where[0]} ({type(e).__name__}: {first}). Check that it "
            f"is reachable and writable, or set {where[1]}, or choose another logger "
            "(e.g. logger=tensorboard).")


def tensorboard_figures(trainer: L.Trainer) -> list[Path]:
    """The last image of each image tag the run wrote to TensorBoard, as PNG files (in a
    temporary directory), named after the tag and step."""
    from lightning.pytorch.loggers import TensorBoardLogger

    dirs = [Path(lg.log_dir) for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    dirs = [d for d in dirs if d.is_dir()]
    if not dirs:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fodl.compat import tensorboard_started

    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger) and tensorboard_started(lg):
            lg.experiment.flush()
    out_dir = Path(tempfile.mkdtemp(prefix="fodl-figures-"))
    out: list[Path] = []
    quiet = logging.getLogger("tensorboard")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # not its directory watcher's lines in the run's log
    try:
        accs = [EventAccumulator(str(d), size_guidance={"images": 1, "scalars": 1, "histograms": 1,
                                                        "tensors": 1}).Reload() for d in dirs]
    finally:
        quiet.setLevel(level)
    for acc in accs:
        for tag in acc.Tags().get("images", []):
            ev = acc.Images(tag)[-1]
            f = out_dir / f"{tag.replace('/', '_')}_step{ev.step}.png"
            f.write_bytes(ev.encoded_image_string)
            out.append(f)
    return out


def callbacks_for(loggers: list, resolved: dict[str, Any], hparams: dict[str, Any]) -> list:
    """``[TrackedRun]`` when a tracker logs, else nothing (a callback costs every hook)."""
    return [TrackedRun(resolved, hparams)] if trackers(loggers) else []


def continue_trackers(trainer: L.Trainer, ckpt: dict[str, Any], output_dir: str | Path) -> None:
    """Make the trainer's MLflow / W&B loggers continue the runs recorded in the checkpoint
    (module docstring). Call before training starts."""
    ids = ckpt.get(CKPT_KEY) or {}
    if not ids or not rank_zero_only.rank == 0:
        return
    old_out = ((ckpt.get("fodl_config") or {}).get("paths") or {}).get("output_dir")
    for lg in trackers(trainer):
        if isinstance(lg, MLflowLogger) and ids.get("mlflow"):
            if lg.continue_run(ids["mlflow"]):
                lg.tag({"resumed_in": str(Path(str(output_dir)).resolve())})
        elif isinstance(lg, WandbRun) and ids.get("wandb"):
            lg.continue_run(ids["wandb"], [d for d in (old_out, output_dir) if d])
