"""Reading fodl run directories: TensorBoard scalars, metrics.json, the Hydra config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fodl.errors import FodlError


@dataclass
class Run:
    path: Path
    label: str
    config: dict
    metrics: dict[str, float]
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 1}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_run(path: Path) -> Run:
    """A finished run directory (``metrics.json``, ``tensorboard/``, ``.hydra/``)."""
    path = Path(path)
    if not (path / "metrics.json").is_file():
        raise FodlError(f"{path} is not a finished fodl run (no metrics.json).")
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    config_file = path / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    hydra_file = path / ".hydra" / "hydra.yaml"
    choices = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {}).get(
        "choices", {}) if hydra_file.is_file() else {}
    label = next((o.split("=", 1)[1] for o in overrides if o.startswith("optimizer=")),
                 choices.get("model") or path.name)
    tb = path / "tensorboard"
    return Run(path, label, config, json.loads((path / "metrics.json").read_text()),
               read_scalars(tb) if tb.is_dir() else {})


def read_sweep(sweep_dir: Path) -> list[Run]:
    runs = [read_run(p) for p in sorted(Path(sweep_dir).iterdir())
            if p.is_dir() and (p / "metrics.json").is_file()]
    if not runs:
        raise FodlError(f"{sweep_dir} holds no finished runs (sub-directories with metrics.json).")
    return runs


def latest(parent: Path) -> Path:
    dirs = sorted(p for p in Path(parent).glob("*") if p.is_dir())
    if not dirs:
        raise FodlError(f"No sweep under {parent}. Run: python scripts/train.py experiment=book/ch4_optimizers")
    return dirs[-1]
