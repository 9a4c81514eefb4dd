"""Building a run's Hydra config outside ``@hydra.main`` (benchmarks, analysis scripts, tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict, read_write

from fodl.errors import FodlError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_run(overrides: list[str], output_dir: str | Path, config_name: str = "train") -> DictConfig:
    """The config ``scripts/<config_name>.py`` would build for ``overrides``, writing to
    ``output_dir``; HydraConfig is set so ``${hydra:...}`` interpolations resolve. An override
    Hydra refuses (a key or config group option that does not exist) is a ``FodlError``."""
    output_dir = Path(output_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except HydraException as e:  # an override that does not exist / does not parse: the user's input
        why = " ".join(str(e).split("Config search path")[0].split())
        raise FodlError(f"An override does not fit fodl's configs: {why}") from None
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task function sees no hydra node
    return cfg


def default_data_dir() -> str:
    """For the analysis/benchmark scripts: where ``paths.data_dir`` points by default, i.e.
    ``$FODL_DATA_DIR``, else ``data/`` under ``$FODL_ROOT`` (default: the current directory).
    Nothing else is searched: a user's data is where they say it is."""
    import os

    return os.environ.get("FODL_DATA_DIR") or os.path.join(os.environ.get("FODL_ROOT", "."), "data")


def flatten(tree: Mapping, sep: str = ".", skip: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the leaves of nested mappings under their keys
    joined by ``sep``; ``skip(path)`` true leaves that key, and all under it, out."""
    out: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            path = f"{prefix}{k}"
            if skip is not None and skip(path):
                continue
            if isinstance(v, Mapping):
                walk(v, path + sep)
            else:
                out[path] = v

    walk(tree, "")
    return out
