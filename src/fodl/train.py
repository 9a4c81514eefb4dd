"""The logic behind ``scripts/train.py``: build everything from the config and fit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fodl import tracking
from fodl.callbacks import ConfigInCheckpoint
from fodl.checkpoint import check_compatible, load_module, read_checkpoint
from fodl.cluster import global_rank  # also registers the run-directory resolvers
from fodl.compat import cpu_has_bf16
from fodl.config import flatten
from fodl.errors import FodlError, user_error
from fodl.hparams import HParamsSession, finish_run
from fodl.resume import continue_tensorboard, resolve_ckpt_path
from fodl.schema import check_config

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None, name: str) -> list[Any]:
    """Instantiate every entry of the callbacks/logger group ``name`` (empty group -> []; an
    entry set to null is switched off). An entry without ``_target_`` (e.g. a misspelled key)
    is an error, not silently dropped."""
    if not group:
        return []
    out = []
    for key, c in group.items():
        if c is None:
            continue
        if not isinstance(c, DictConfig) or "_target_" not in c:
            keys = ", ".join(map(str, c.keys())) if isinstance(c, DictConfig) else repr(c)
            raise FodlError(
                f"{name}.{key} has no _target_ (it has: {keys}), so it cannot be built. Give the "
                f"class to build as {name}.{key}._target_=<module.Class>, or switch the entry off "
                f"with {name}.{key}=null.")
        obj = instantiate(c)
        if obj is not None:  # e.g. a tracker left out of logger=many (fodl.tracking)
            out.append(obj)
    return out


#: the trainer settings that fix a run's number of optimizer steps
RUN_LENGTH = ("max_epochs", "max_steps", "accumulate_grad_batches")


def _check_resume(ckpt: dict[str, Any], resolved: dict[str, Any], path: str) -> None:
    """Resume continues a run as it was configured. Lightning restores the optimizer's and
    the scheduler's state from the checkpoint, so a changed learning rate or schedule (e.g.
    a cosine T_max tied to a larger trainer.max_epochs, or a one-cycle horizon filled in from
    the run's length) would be silently replaced by the old one, or a schedule would step
    past its end. Refuse such a resume, naming the differences; extending a run without a
    schedule tied to its length is fine."""
    stored = ckpt.get("fodl_config") or {}
    if not stored:
        return

    def part(cfg: dict) -> dict:
        out = {"optimizer": cfg.get("optimizer"), "scheduler": cfg.get("scheduler") or None,
               "model.scheduler_interval": (cfg.get("model") or {}).get("scheduler_interval")}
        if (cfg.get("scheduler") or {}).get("total_steps", 0) is None:
            # the horizon is filled in from the run's length (one-cycle, linear decay), and the
            # restored scheduler keeps the checkpoint's: it would step past its end
            trainer = cfg.get("trainer") or {}
            out.update({f"trainer.{k}": trainer.get(k) for k in RUN_LENGTH})
            out["data.batch_size"] = (cfg.get("data") or {}).get("batch_size")
        return out

    old, new = _flat(part(stored)), _flat(part(resolved))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in diff[:6])
        raise FodlError(
            f"Cannot resume from {path} with a different optimizer or schedule, or a different "
            f"length of a run whose schedule is tied to it ({shown}). Resume restores the optimizer "
            "and scheduler state of the checkpoint, so the new values would be ignored or the "
            "schedule would run past its end. Resume with the run's own settings (drop those "
            "overrides), or start a new run for a new schedule.")


def _flat(d: dict) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten(d, sep="/").items()}


def _floats(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


class MonitoredMetrics(L.Callback):
    """At the end of the first validation of training (not the sanity check: a family may log
    some of its metrics only then), every metric a callback monitors (``monitor``: the best checkpoint, early stopping ...) must have
    been logged; a misspelled one stops the run there with one paragraph listing what was
    logged, before any checkpoint is written (Lightning would raise at the first checkpoint,
    with a traceback)."""

    def __init__(self) -> None:
        self.checked = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.checked or trainer.sanity_checking:
            return
        self.checked = True
        logged = set(trainer.callback_metrics)
        wanted = {m for c in trainer.callbacks if isinstance(m := getattr(c, "monitor", None), str)}
        missing = sorted(wanted - logged)
        if missing:
            shown = ", ".join(sorted(k for k in logged if "/" in k) or sorted(logged))
            raise FodlError(
                f"monitor={missing[0]} is not a metric this model logs (logged: {shown}), so the "
                "best checkpoint (and early stopping, if on) cannot follow it. Set monitor= to one "
                "of those names (and monitor_mode=min or max to match it).")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the datamodule, module and trainer of a run config (seeded first).

    ``seed=null`` draws a fresh seed and writes it into ``cfg`` (so the data seed and the
    config stored in checkpoints have it); DDP workers that Lightning starts take their
    parent's through ``PL_GLOBAL_SEED``."""
    check_config(cfg)  # wrong types / impossible values stop here, naming the key (fodl.schema)
    if "seed" in cfg and cfg.seed is None:
        import os
        import secrets

        worker = os.environ.get("LOCAL_RANK", "0") != "0" or global_rank() != 0  # not rank 0
        if worker and not os.environ.get("PL_GLOBAL_SEED"):
            raise FodlError("seed=null cannot be used when the processes of a multi-process run "
                            "are started outside Lightning (torchrun, SLURM): each would draw a "
                            "different seed and shuffle differently. Give a seed, e.g. seed=42.")
        cfg.seed = int(os.environ["PL_GLOBAL_SEED"]) if worker else secrets.randbelow(2**31)
        log.info("seed=%d (drawn, since seed=null)", cfg.seed)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        resolved["model_name"] = HydraConfig.get().runtime.choices.get("model")
    except ValueError:  # not under Hydra (e.g. compose API in a notebook)
        resolved["model_name"] = None

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    loop_settings = _loop_settings(cfg.trainer, model)
    loggers = _instantiate_all(cfg.get("logger"), "logger")
    session = HParamsSession(resolved)
    callbacks = [MonitoredMetrics(), *_instantiate_all(cfg.get("callbacks"), "callbacks"),
                 ConfigInCheckpoint(resolved), session]
    callbacks += tracking.callbacks_for(loggers, resolved, session.hparams)  # MLflow / W&B
    trainer = _trainer(cfg, callbacks=callbacks, logger=loggers or False, **loop_settings)
    _warn_slow_cpu_precision(trainer)
    return datamodule, model, trainer


def _trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """``instantiate(cfg.trainer, **kwargs)``; settings that Lightning refuses (a combination
    fodl.schema does not know, e.g. a strategy for this accelerator) end in a FodlError with
    Lightning's reason, not its traceback."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(cfg.trainer, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if not isinstance(cause, (MisconfigurationException, ValueError)) or isinstance(cause, FodlError):
            raise
        reason = " ".join(str(cause).split())
        raise FodlError(f"Lightning refused the trainer settings (trainer.*): {reason} Change the "
                        "trainer.* values it names (python scripts/train.py --cfg job shows them), "
                        "or pick a trainer config: trainer=cpu, trainer=gpu, trainer=ddp.") from None


# what Lightning refuses for manual optimisation (every fodl family): fodl's loop does it instead
_LOOP_SETTINGS = {"gradient_clip_val": None, "gradient_clip_algorithm": None,
                  "accumulate_grad_batches": 1}


def _loop_settings(trainer_cfg: DictConfig, model: L.LightningModule) -> dict[str, Any]:
    """Hand ``trainer.gradient_clip_val`` / ``gradient_clip_algorithm`` /
    ``accumulate_grad_batches`` to the module's own loop (Lightning raises on them under
    manual optimisation); returns the trainer arguments that replace them (their defaults)."""
    given = {k: trainer_cfg.get(k) for k in _LOOP_SETTINGS if trainer_cfg.get(k) is not None}
    if not given or given == {"accumulate_grad_batches": 1}:
        return {}
    use = getattr(model, "use_trainer_settings", None)
    if use is None:  # not a fodl loop: Lightning's own handling applies
        return {}
    use(**given)
    return dict(_LOOP_SETTINGS)


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX512 or AMX)."""
    return cpu_has_bf16()


def _warn_slow_cpu_precision(trainer: L.Trainer) -> None:
    """bf16 on a CPU without native bfloat16 kernels runs, emulated, and is usually slower
    than fp32 (on one with them, e.g. AVX512-BF16, bf16-mixed trains the CIFAR net's epochs
    markedly faster at equal accuracy; docs/performance.md): say so, with the fix. Lightning
    runs 16-mixed as bf16-mixed on a CPU, so this covers it too."""
    precision = str(trainer.precision)
    if trainer.strategy.root_device.type == "cpu" and precision.startswith("bf16") and not _cpu_has_bf16():
        log.warning("trainer.precision=%s on a CPU without native bfloat16 kernels (oneDNN has "
                    "none for this CPU): it runs, emulated, and is usually slower than 32-true. "
                    "Set trainer.precision=32-true.", precision)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured model; return the final metrics as floats."""
    datamodule, model, trainer = build(cfg)
    resolved = next(c.config for c in trainer.callbacks if isinstance(c, ConfigInCheckpoint))

    ckpt_path = resolve_ckpt_path(cfg)  # a path, or ckpt_path=auto: this experiment's newest last.ckpt
    if ckpt_path:
        ckpt = read_checkpoint(ckpt_path)
        check_compatible(model, ckpt, ckpt_path)
        _check_resume(ckpt, resolved, ckpt_path)
        continue_tensorboard(trainer, ckpt, cfg.paths.output_dir)  # one curve across the resume
        tracking.continue_trackers(trainer, ckpt, cfg.paths.output_dir)  # the same MLflow / W&B run
        log.info("resuming from %s", ckpt_path)

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _floats(trainer.callback_metrics)
    if ckpt_path and not metrics:
        # the resumed run had already finished (killed after its last checkpoint, or relaunched
        # with ckpt_path=auto): report the validation metrics of its final weights
        log.info("the resumed checkpoint had already reached trainer.max_epochs=%s: nothing left "
                 "to train; validating its weights", trainer.max_epochs)
        trainer.validate(model, datamodule=datamodule, verbose=False)
        metrics = _floats(trainer.callback_metrics)

    if cfg.get("test"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        if getattr(datamodule, "validation_is_test", False):
            # a checkpoint chosen on the test split must not report its test number
            log.warning("validation ran on the test split (data.val_size=0, the book's setup): "
                        "testing the weights of the last epoch, not the best checkpoint")
            best = None
        elif best is None:
            log.warning("no best checkpoint; testing the weights at the end of training")
        test_metrics = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=True,
                                    weights_only=True)
        metrics.update(_floats(test_metrics[0] if test_metrics else {}))

    if trainer.is_global_zero:
        finish_run(trainer)  # HPARAMS trial ends; every logger flushed and closed (fodl.hparams)
        write_metrics(Path(cfg.paths.output_dir) / "metrics.json", metrics)
        log.info("metrics: %s", json.dumps(metrics, sort_keys=True))
    return metrics


def write_metrics(target: Path, metrics: dict[str, float]) -> None:
    """A run's ``metrics.json`` (a training run's, or a benchmark script's ``--metrics-json``),
    written atomically; a full disk or read-only directory is a FodlError naming the file (the
    metrics are logged too)."""
    from fodl.checkpoint_io import unwritable

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tmp.replace(target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.info("metrics: %s", json.dumps(metrics, sort_keys=True))
        raise unwritable(target, e) from None


def eval_overrides(args: list[str]) -> list[str]:
    """``scripts/eval.py``'s command line with every ``data.<key>=<value>`` made ``++data.<key>=..``:
    conf/eval.yaml's ``data`` is empty (the data config comes from the checkpoint), so Hydra
    would refuse a plain ``data.<key>`` as a key not in the config."""
    return [f"++{a}" if a.startswith("data.") and "=" in a else a for a in args]


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on the split ``cfg.split`` with the config stored inside it, its data
    settings overridden by ``cfg.data`` (checked against the data module's settings)."""
    check_config(cfg)
    if cfg.split not in ("test", "val"):
        raise FodlError(f"split={cfg.split!r}: choose test or val.")
    overrides = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    module, data_cfg, stored = load_module(cfg.ckpt_path, overrides)
    for key in ("data_dir", "cache_dir"):  # this machine's paths, for data modules that read files
        if key in stored.data and key not in overrides:
            data_cfg[key] = cfg.paths[key]
    check_config(OmegaConf.create({"data": data_cfg}), machine=False)  # data.* given here, named
    datamodule = instantiate(data_cfg)
    trainer = _trainer(cfg, logger=False, callbacks=[])
    run = trainer.test if cfg.split == "test" else trainer.validate
    result = run(module, datamodule=datamodule, verbose=True)
    metrics = _floats(result[0] if result else {})
    if trainer.is_global_zero:
        write_metrics(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics


class _RankZeroLogs(logging.Filter):
    """Under DDP every process runs the entry point and would write every line to the console
    and the run's log: processes other than rank 0 keep only warnings and errors, marked
    with their rank."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "fodl_rank", False):
            record.msg = f"[rank {self.rank}] {record.msg}"
            record.fodl_rank = True
        return True


def _rank_aware_logging() -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    root = logging.getLogger()
    if rank and not any(isinstance(f, _RankZeroLogs) for h in root.handlers for f in h.filters):
        for h in root.handlers:
            h.addFilter(_RankZeroLogs(rank))


def _in_sweep() -> bool:
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


class WritableOutputs(Callback):
    """Hydra callback (conf/hydra/default.yaml): before Hydra creates the run (or sweep)
    directory, make sure it can be written, so a read-only or missing mount ends in one
    paragraph naming the directory (exit status 2), not in Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(config.hydra.sweep.dir, "hydra.sweep.dir")


def _check_writable(directory: str, key: str) -> None:
    import tempfile

    d = Path(directory).expanduser().absolute()
    existing = next((p for p in (d, *d.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        with tempfile.TemporaryDirectory(dir=existing, prefix=".fodl-write-check-"):
            pass
    except OSError as e:
        import sys

        print(f"error: Cannot write the run's outputs to {d} ({key}={directory}): "
              f"{e.strerror or e}. Nothing was run, and nothing already written was changed. Give "
              f"a writable directory: paths.log_dir=<dir> (all runs) or {key}=<dir> (this one).",
              file=sys.stderr)
        raise SystemExit(2) from None


class SweepFodlError(FodlError, CompactHydraException):
    """A sweep job's FodlError as it is handed to the launcher: Hydra prints a
    ``CompactHydraException`` as its message alone when it ends the sweep, without a traceback."""


def run_entry(fn, cfg: DictConfig):
    """Run ``fn(cfg)``; a ``FodlError`` prints its one-paragraph message and exits with 2. Any
    other exception is written to the run's log (train.log) with its traceback, then raised.
    In a sweep (``-m``) a job never exits the process: its error is raised to the launcher,
    which records the job as failed while the other jobs go on (fodl.sweep.SweepReport)."""
    torch.set_float32_matmul_precision("high")
    _rank_aware_logging()
    try:
        metrics = fn(cfg)
    except Exception as raised:
        e = user_error(raised)  # also a FodlError that Hydra's instantiate wrapped
        if e is None:
            log.exception("the run failed with an unexpected error (traceback above); please report it "
                          "with this log if it is not caused by your configuration")
            raise
        log.error("%s", e)
        if _in_sweep():
            raise SweepFodlError(str(e)) from None
        raise SystemExit(2) from None
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        msg = (f"optimized_metric={name} was not logged by this run (logged: "
               f"{', '.join(sorted(metrics))}). Set optimized_metric to one of those names.")
        log.error("%s", msg)
        if _in_sweep():
            raise SweepFodlError(msg)
        raise SystemExit(2)
    return metrics[name]
