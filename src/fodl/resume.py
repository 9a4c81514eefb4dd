"""``ckpt_path=auto`` and the TensorBoard curves of a resumed run.

``ckpt_path=auto`` resumes from the ``last.ckpt`` of the run's own directory when it has one,
else from the newest ``last.ckpt`` of *the same experiment*: a run under
``paths.log_dir`` (single runs and sweep jobs alike) whose Hydra overrides
(``.hydra/overrides.yaml``) equal this run's, apart from the keys that may change between an
interrupted run and its continuation (:data:`IGNORED`: ``ckpt_path``, ``trainer.max_epochs``
and Hydra's own ``hydra.*`` settings). With none, the run starts from scratch, so the same
command serves the first launch and every restart (a requeued SLURM job, a crashed laptop run,
a resubmitted sweep).

TensorBoard: a resumed run writes a new run directory (the old one is never touched). So that
its ``tensorboard/`` holds the *whole* curve, not a disconnected second half, the event files of
the run it resumes are copied into it, and its writer starts with ``purge_step`` at the
checkpoint's step: TensorBoard hides whatever the interrupted run logged after the checkpoint
(the epoch it did not finish), so each step appears once. A run resumed in the directory it was
interrupted in (a requeued SLURM job step) keeps writing to the same logger directory, with the
same purge.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import yaml

from fodl.compat import logged_steps_in, set_purge_step, tensorboard_started
from fodl.errors import FodlError

log = logging.getLogger(__name__)

AUTO = "auto"
_INHERITED = "FODL_AUTO_CKPT_PATH"  # rank 0's resolution of ckpt_path=auto, for its DDP children
#: override keys that do not change which experiment a run belongs to
IGNORED = ("ckpt_path", "trainer.max_epochs")


def experiment_key(overrides: Iterable[str]) -> tuple[str, ...]:
    """The overrides that identify an experiment: ``+``/``++`` dropped, :data:`IGNORED` and
    ``hydra`` keys left out, order ignored."""
    out = []
    for o in overrides:
        o = str(o).lstrip("+")
        key = o.split("=", 1)[0]
        if key in IGNORED or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        out.append(o)
    return tuple(sorted(out))


def checkpoint_dirs(cfg) -> list[str]:
    """Where this config writes checkpoints, relative to its run directory."""
    out_dir = Path(str(cfg.paths.output_dir)).resolve()
    rel = []
    for c in (cfg.get("callbacks") or {}).values():
        d = c.get("dirpath") if hasattr(c, "get") else None
        if d:
            try:
                r = str(Path(str(d)).resolve().relative_to(out_dir))
            except ValueError:
                continue
            if r not in rel:
                rel.append(r)
    return rel or ["checkpoints"]


def _override_files(roots: Iterable[str | Path]) -> Iterable[Path]:
    """Every run's ``.hydra/overrides.yaml`` under ``roots``, following symbolic links (a user
    may link ``outputs/`` or a part of it, e.g. ``outputs/reproduce``, to a larger disk:
    ``Path.glob("**")`` does not descend into those), each real directory once."""
    seen: set[str] = set()
    for top in roots:
        for root, dirs, files in os.walk(top, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:  # a link back up the tree, or a run reached twice
                dirs[:] = []
                continue
            seen.add(real)
            if os.path.basename(root) == ".hydra" and "overrides.yaml" in files:
                yield Path(root) / "overrides.yaml"


def find_last_checkpoint(log_dir: str | Path, overrides: Iterable[str],
                         ckpt_dirs: Iterable[str] = ("checkpoints",),
                         run_dir: str | Path | None = None) -> Path | None:
    """The ``last.ckpt`` of ``run_dir``, this run's own directory (wherever ``hydra.run.dir``
    put it), when it holds one of the same experiment key: a run relaunched in its directory
    continues itself, even when another run of that key (one that differed only in
    ``trainer.max_epochs``, say) saved later. Else the newest such ``last.ckpt`` under
    ``log_dir`` (links followed)."""
    want, ckpt_dirs = experiment_key(overrides), list(ckpt_dirs)  # an iterator is read once
    if run_dir is not None:
        own = _newest_last_checkpoint([run_dir], want, ckpt_dirs)
        if own is not None:
            return own
    return _newest_last_checkpoint([log_dir], want, ckpt_dirs)


def _newest_last_checkpoint(roots: list[str | Path], want: tuple[str, ...],
                            ckpt_dirs: list[str]) -> Path | None:
    newest: tuple[float, Path] | None = None
    for f in _override_files(roots):
        try:
            theirs = yaml.safe_load(f.read_text()) or []
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(theirs, list) or experiment_key(theirs) != want:
            continue
        for d in ckpt_dirs:
            c = f.parent.parent / d / "last.ckpt"
            try:
                mtime = c.stat().st_mtime
            except OSError:
                continue
            if newest is None or mtime > newest[0]:
                newest = (mtime, c)
    return newest[1] if newest else None


def resolve_ckpt_path(cfg) -> str | None:
    """``cfg.ckpt_path``, with ``auto`` replaced by the newest ``last.ckpt`` of this experiment
    (or None: start from scratch)."""
    path = cfg.get("ckpt_path")
    if path != AUTO:
        return path
    # DDP processes that Lightning starts (LOCAL_RANK > 0) re-run the entry point from the
    # parent's saved config, without its command-line overrides: they take rank 0's choice,
    # which it leaves in the environment they inherit.
    if os.environ.get("LOCAL_RANK", "0") != "0" and _INHERITED in os.environ:
        return os.environ[_INHERITED] or None
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        raise FodlError("ckpt_path=auto finds the run to resume by its Hydra overrides, so it needs "
                        "a run started through scripts/train.py. Give the checkpoint's path instead.") from None
    log_dir = Path(str(cfg.paths.log_dir))
    found = find_last_checkpoint(log_dir, overrides, checkpoint_dirs(cfg), cfg.paths.output_dir)
    if found is not None and found.is_absolute() and found.is_relative_to(Path.cwd()):
        found = found.relative_to(Path.cwd())  # as the log_dir search gives it (outputs/...)
    os.environ[_INHERITED] = str(found or "")
    if found is None:
        log.info("ckpt_path=auto: no last.ckpt of this experiment under %s; starting from scratch",
                 log_dir)
        return None
    log.info("ckpt_path=auto: resuming from %s, the newest last.ckpt of this experiment", found)
    return str(found)


def _logged_step(ckpt: dict[str, Any]) -> int:
    """The step axis value of the checkpoint (Lightning logs against the number of batches that
    stepped, which fodl counts in minibatches)."""
    step = logged_steps_in(ckpt)
    return int(ckpt.get("global_step", 0)) if step is None else step


def continue_tensorboard(trainer, ckpt: dict[str, Any], output_dir: str | Path) -> None:
    """Make the trainer's TensorBoard loggers continue the resumed run's curves (module
    docstring). Call before training starts (the writer is created on first use)."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.utilities import rank_zero_only

    step = _logged_step(ckpt)
    old_out = ((ckpt.get("fodl_config") or {}).get("paths") or {}).get("output_dir")
    new_out = Path(str(output_dir))
    for lg in trainer.loggers:
        if not isinstance(lg, TensorBoardLogger):
            continue
        if tensorboard_started(lg):  # already writing: too late to purge
            continue
        # Lightning logs a step's metrics (and the epoch-end ones) at step index < `step` for
        # everything the checkpoint holds; the resumed run logs from `step` on
        set_purge_step(lg, step)
        if rank_zero_only.rank != 0 or not old_out:
            continue
        try:
            rel = Path(lg.log_dir).resolve().relative_to(new_out.resolve())
        except ValueError:
            continue
        src, dst = Path(old_out) / rel, Path(lg.log_dir)
        if not src.is_dir() or src.resolve() == dst.resolve():
            continue
        n = 0
        for f in sorted(src.rglob("events.out.tfevents.*")):
            target = dst / f.relative_to(src)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part{os.getpid()}")
            shutil.copy2(f, tmp)
            os.replace(tmp, target)
            n += 1
        if n:
            log.info("TensorBoard: copied %d event file(s) of the resumed run from %s, so %s holds "
                     "the whole curve", n, src, dst)
