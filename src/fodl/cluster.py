"""Running beyond one process: run directories shared by the processes of a multi-node job,
this process's rank, and SLURM launcher settings derived from the trainer.

Everything here plugs into existing engines: Hydra resolvers; the launching itself is
Lightning's cluster environments (SLURM, torchrun), hydra-submitit-launcher and
hydra-joblib-launcher. The sweep's report (a Hydra ``Callback``) is :mod:`fodl.sweep`.

- ``${fodl_run_id:<default>}`` names a run directory. Every process of one job must write to
  the same one, but under ``srun`` or ``torchrun`` each process composes its own config, and a
  timestamp differs between them. The id is therefore ``$FODL_RUN_ID`` when set, else
  ``slurm-<job id>.<step id>`` inside a SLURM job step, else ``torchrun-<rdzv id>`` under
  ``torchrun --rdzv-id=...``, else ``<default>`` (the timestamp). A requeued SLURM job keeps
  its job id, so it continues in (and its TensorBoard logger appends to) the same directory.
- ``${fodl_gpus_per_node:<accelerator>,<devices>}``: GPUs to request per node for a trainer
  (``hydra/launcher=slurm``): ``devices`` unless the accelerator is the CPU.
- :func:`launcher_problems`: a SLURM sweep's resources against ``trainer.devices`` /
  ``trainer.num_nodes`` (checked by :class:`fodl.sweep.SweepReport` before submission).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_SPECIAL_STEPS = 4294967290  # SLURM's batch / extern / interactive steps are 0xFFFFFFFA and up


def run_id(default: str) -> str:
    """The run-directory name shared by every process of one job (module docstring)."""
    explicit = os.environ.get("FODL_RUN_ID")
    if explicit:
        return explicit
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID", "")
    if job and step.isdigit() and int(step) < _SPECIAL_STEPS:
        return f"slurm-{job}.{step}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if rdzv and rdzv != "none":
        return f"torchrun-{rdzv}"
    return str(default)


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to request per node: ``devices`` (an int) unless the trainer runs on the CPU."""
    if str(accelerator).lower() == "cpu":
        return None
    try:
        return int(devices)
    except (TypeError, ValueError):
        return None  # "auto" or a list of device ids: set hydra.launcher.gpus_per_node yourself


OmegaConf.register_new_resolver("fodl_run_id", run_id, replace=True)
OmegaConf.register_new_resolver("fodl_gpus_per_node", gpus_per_node, replace=True)


def global_rank() -> int:
    """This process's rank in a multi-process job, from the launcher's environment (0 alone)."""
    for var in ("RANK", "SLURM_PROCID"):
        v = os.environ.get(var, "")
        if v.isdigit():
            return int(v)
    return 0


def launcher_problems(config: DictConfig) -> list[str]:
    """Where a SLURM sweep's resources disagree with its trainer (empty when they agree)."""
    launcher = OmegaConf.select(config, "hydra.launcher") or {}
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return []
    trainer = config.get("trainer") or {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    problems = []
    if not isinstance(devices, int):
        problems.append(f"trainer.devices={devices!r} must be a number of processes per node on "
                        "SLURM (one task per device)")
    elif launcher.get("tasks_per_node") != devices:
        problems.append(f"hydra.launcher.tasks_per_node={launcher.get('tasks_per_node')} but "
                        f"trainer.devices={devices} (Lightning runs one task per device)")
    if launcher.get("nodes") != nodes:
        problems.append(f"hydra.launcher.nodes={launcher.get('nodes')} but trainer.num_nodes={nodes}")
    gpus = launcher.get("gpus_per_node")
    if str(trainer.get("accelerator")) in ("gpu", "cuda") and isinstance(devices, int) and (gpus or 0) < devices:
        problems.append(f"hydra.launcher.gpus_per_node={gpus} is fewer than trainer.devices={devices} "
                        "GPUs")
    return problems
