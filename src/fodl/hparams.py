"""TensorBoard's HPARAMS tab: one trial per run, written into the run's own event files.

A run is one hparams *session*: its ``session_start_info`` (the hyperparameters a person
compares) is written when fitting starts, so a running or crashed run is listed too, and its
``session_end_info`` (success, failure or aborted) when it ends. The trial's metrics are the
last values of the run's own scalars (``train/loss``, ``val/acc``, ``test/acc`` ...), which
TensorBoard reads itself: nothing is duplicated under other names.

No ``_hparams_/experiment`` summary is written. TensorBoard keeps one such summary for a whole
log directory, taken from whichever run it finds first, so per-run summaries hide the columns
of every other run (another model's knobs, another family's metrics). Without it, TensorBoard
derives the columns from all the runs' session infos and scalar tags, so ``--logdir outputs/``
over many runs and sweeps lists every run with every column.

Everything written at the end is flushed and the writer closed before :meth:`end` returns:
Lightning closes its TensorBoard writer at the end of ``fit``/``test``, and a summary added
after that goes to a fresh event file that nothing would flush before the process exits.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from fodl.compat import summary_file_writer
from fodl.config import flatten

log = logging.getLogger(__name__)

# keys of the model/data/optimizer/scheduler nodes that never change a result, or repeat
# another hyperparameter; everything else a config sets there is a hyperparameter
_SKIP = {
    "_target_", "_partial_", "_recursive_", "_convert_",
    "data_dir", "cache_dir", "download", "verify", "on_device", "eval_batch_size",
    "seed",                  # data.seed is ${seed}
    "cuda_graph", "log_images", "projector_size",
}
_TRAINER = ("max_epochs", "max_steps", "precision", "devices", "num_nodes", "accumulate_grad_batches",
            "gradient_clip_val")


def _value(v: Any) -> bool | int | float | str:
    if v is None:
        return "none"
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(_value(x)) for x in v) + "]"
    return str(v)


def _skip(group: str) -> Callable[[str], bool]:
    def skip(path: str) -> bool:
        # model.optimizer / model.scheduler are ${optimizer} / ${scheduler}
        return path.rsplit(".", 1)[-1] in _SKIP or (group == "model" and path in ("optimizer", "scheduler"))
    return skip


def run_hparams(resolved: dict[str, Any], choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters of a run that a person compares, flat, TensorBoard-typed.

    The config choices (``model``, ``experiment``, ``optimizer``, ``scheduler``, ``data``),
    ``seed``, the results-changing ``trainer`` settings, and every value under ``model``
    (including ``model.net``), ``optimizer``, ``scheduler`` and ``data`` except paths,
    ``_target_`` and speed-only switches (see ``_SKIP``). Lists are written as ``[a, b]``,
    None as ``none``."""
    choices = dict(choices or {})
    choices.setdefault("model", resolved.get("model_name"))
    out: dict[str, Any] = {}
    for group in ("model", "experiment", "data", "optimizer", "scheduler"):
        if group in choices or group == "model":
            out[group] = _value(choices.get(group))
    out["seed"] = _value(resolved.get("seed"))
    trainer = resolved.get("trainer") or {}
    for k in _TRAINER:
        if k in trainer:
            out[f"trainer.{k}"] = _value(trainer[k])
    for group in ("model", "optimizer", "scheduler", "data"):
        if isinstance(resolved.get(group), dict):
            for k, v in flatten(resolved[group], skip=_skip(group)).items():
                out[f"{group}.{k}"] = _value(v)
    return out


def _hydra_choices() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    try:
        choices = HydraConfig.get().runtime.choices
    except ValueError:  # not under Hydra
        return {}
    return {k: v for k, v in choices.items() if not k.startswith("hydra/")}


def _summary(tag: str, plugin_data):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data),
                      tensor=metadata.NULL_TENSOR)
    return summary


def session_start(hparams: dict[str, Any], start_time_secs: float | None = None):
    """A ``session_start_info`` summary; no group name, so each run is its own trial."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time_secs or time.time())
    for name, v in sorted(hparams.items()):
        if isinstance(v, bool):
            info.hparams[name].bool_value = v
        elif isinstance(v, (int, float)):
            info.hparams[name].number_value = float(v)
        else:
            info.hparams[name].string_value = str(v)
    return _summary(metadata.SESSION_START_INFO_TAG,
                    plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end(status: str, end_time_secs: float | None = None):
    """A ``session_end_info`` summary; ``status``: success, failure, aborted or running."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(f"STATUS_{status.upper()}"),
                                          end_time_secs=end_time_secs or time.time())
    return _summary(metadata.SESSION_END_INFO_TAG,
                    plugin_data_pb2.HParamsPluginData(session_end_info=info))


class HParamsSession(L.Callback):
    """Writes the run's hparams trial (see the module docstring). ``fodl.train`` adds it to every
    run; the trial's end is written by :meth:`end`, after testing, or by :meth:`on_exception`."""

    def __init__(self, resolved: dict[str, Any], choices: dict[str, Any] | None = None) -> None:
        self.hparams = run_hparams(resolved, _hydra_choices() if choices is None else choices)
        self._created = time.time()
        self._started = False
        self._ended = False

    @staticmethod
    def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    def _write(self, trainer: L.Trainer, summary) -> None:
        for lg in self._tensorboards(trainer):
            summary_file_writer(lg.experiment).add_summary(summary)
            lg.experiment.flush()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._started:
            return
        for lg in self._tensorboards(trainer):
            drop_copied_sessions(Path(lg.log_dir), before=self._created)
        self._write(trainer, session_start(self.hparams))
        self._started = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        # Lightning calls this before it finalises (flushes and closes) its loggers
        if trainer.is_global_zero and self._started and not self._ended:
            self._ended = True
            status = "aborted" if isinstance(exception, KeyboardInterrupt) else "failure"
            self._write(trainer, session_end(status))

    def end(self, trainer: L.Trainer, status: str = "success") -> None:
        """Close the trial, give the other loggers the same hyperparameters (e.g. the CSV
        logger's hparams.yaml), then flush and close every logger so that all of it is on disk
        when this returns."""
        if not trainer.is_global_zero:
            return
        if self._started and not self._ended:
            self._write(trainer, session_end(status))
        self._ended = True
        for lg in trainer.loggers:
            if not isinstance(lg, TensorBoardLogger):
                lg.log_hyperparams(self.hparams)
            lg.finalize(status)   # flush + close (TensorBoard); write files (CSV)


def drop_copied_sessions(log_dir: Path, before: float) -> int:
    """Remove the hparams session summaries from event files older than this run (those a
    resumed run copied from the run it continues, to continue its curves). TensorBoard keeps
    the *first* session info it reads in a run directory, so the old run's start (its
    hyperparameters) and end (e.g. the crash that made the resume necessary) would stand for
    this run. Scalars and everything else in those files are kept. Returns the files changed."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    changed = 0
    for f in sorted(log_dir.glob("events.out.tfevents.*")) if log_dir.is_dir() else []:
        if f.stat().st_mtime >= before:
            continue  # this run's own file
        records, dropped = [], False
        for raw in RawEventFileLoader(str(f)).Load():
            event = event_pb2.Event.FromString(raw)
            if event.HasField("summary") and any(v.tag.startswith("_hparams_/") for v in event.summary.value):
                keep = [v for v in event.summary.value if not v.tag.startswith("_hparams_/")]
                dropped = True
                if not keep:
                    continue
                del event.summary.value[:]
                event.summary.value.extend(keep)
                raw = event.SerializeToString()
            records.append(raw)
        if not dropped:
            continue
        tmp = f.with_name(f".{f.name}.part{os.getpid()}")
        with open(tmp, "wb") as fh:
            writer = RecordWriter(fh)
            for raw in records:
                writer.write(raw)
            writer.flush()
        stat = f.stat()
        os.replace(tmp, f)
        os.utime(f, (stat.st_atime, stat.st_mtime))  # still older than the run
        changed += 1
    if changed:
        log.info("TensorBoard: %d copied event file(s) in %s no longer carry the resumed run's "
                 "HPARAMS session (this run's is written now)", changed, log_dir)
    return changed


def finish_run(trainer: L.Trainer) -> None:
    """End the HPARAMS trial of ``trainer``'s run and flush/close its loggers (rank 0); the
    MLflow / W&B runs get their end-of-run artifacts first and are closed last
    (:class:`fodl.tracking.TrackedRun`)."""
    from fodl.tracking import TrackedRun

    tracked = [cb for cb in trainer.callbacks if isinstance(cb, TrackedRun)]
    for cb in tracked:
        cb.end(trainer)
    session = next((cb for cb in trainer.callbacks if isinstance(cb, HParamsSession)), None)
    if session is not None:
        session.end(trainer)
    else:
        for lg in trainer.loggers:
            lg.finalize("success")
    for cb in tracked:
        cb.close(trainer)
