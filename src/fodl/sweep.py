"""Sweeps that report what failed: a Hydra ``Callback`` (``hydra.callbacks.sweep_report``).

:class:`SweepReport`: each sweep job records how it ended (``job_status.json``: completed, or
failed with its error); when the sweep ends, even when a launcher then raises the first
failure, the jobs are aggregated (``aggregate.md`` / ``.csv`` in the sweep directory,
:mod:`fodl.analysis.aggregate`) and the summary printed, failures named. Before a SLURM sweep
is submitted, its resources are checked against ``trainer.devices`` / ``trainer.num_nodes``
(:func:`fodl.cluster.launcher_problems`).
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fodl.cluster import global_rank, launcher_problems

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Hydra callback: job status files, the end-of-sweep report, the SLURM resource check."""

    def __init__(self) -> None:
        self._sweep_dir: str | None = None
        self._done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problems = launcher_problems(config)
        if problems:
            log.error("The SLURM launcher's resources do not match the trainer: %s. They are derived "
                      "from trainer.devices and trainer.num_nodes by hydra/launcher=slurm; set those "
                      "(not hydra.launcher.*), and do not sweep them within one SLURM sweep.",
                      "; ".join(problems))
            raise SystemExit(2)
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        if launcher.endswith("SlurmLauncher") and config.get("ckpt_path") != "auto":
            log.warning("SLURM requeues preempted and timed-out jobs; without ckpt_path=auto they "
                        "restart from scratch. Add ckpt_path=auto to resume from their last.ckpt.")
        self._sweep_dir = str(config.hydra.sweep.dir)
        self._done = False
        atexit.register(self._finish)  # also when the sweeper raises a job's failure

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        from fodl.analysis.aggregate import write_job_status

        if config.hydra.mode != RunMode.MULTIRUN or global_rank() != 0:
            return
        failed = job_return.status == JobStatus.FAILED
        err = getattr(job_return, "_return_value", None) if failed else None
        write_job_status(config.hydra.runtime.output_dir, config.hydra.job.get("num"),
                         job_return.overrides or [], "failed" if failed else "completed",
                         f"{_error_kind(err)}: {err}" if failed else None)

    def _finish(self) -> None:
        if self._done or not self._sweep_dir:
            return
        self._done = True
        from fodl.analysis.aggregate import report
        from fodl.errors import FodlError

        try:
            rep = report(self._sweep_dir)
            md, csv = rep.write()
        except (FodlError, OSError):
            return
        text = rep.markdown()
        sys.stdout.write(f"\n{text}\nwritten: {md}, {csv}\n")
        sys.stdout.flush()


def _error_kind(err: BaseException | None) -> str:
    """The name a job's error is reported under: a user error (a FodlError, also the sweep's
    traceback-free ``SweepFodlError`` wrapper of one) is a ``FodlError``; anything else keeps its
    own class name."""
    from fodl.errors import FodlError

    return "FodlError" if isinstance(err, FodlError) else type(err).__name__
