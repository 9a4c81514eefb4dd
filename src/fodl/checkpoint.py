"""Reading checkpoints with clear errors, and rebuilding a trained module from one.

A checkpoint is data, not code, in both of its parts: the file is loaded ``weights_only``
(no pickled objects), and the run config stored in it (``fodl_config``) is checked
(:func:`check_stored_config`) before anything is imported or built from it: every ``_target_``
in it, at any depth (``_args_``, lists, partials), must be one of fodl's own nets, modules, data
modules or schedulers, or a torch optimizer or learning-rate scheduler. Anything else
(``torch.load``, ``shutil.copyfile``, a fodl name that re-exports such a function, an
interpolation) is refused, naming the target, where it sits in the config and the file.
:func:`read_checkpoint`, through which every script and resume reads a checkpoint, runs the
check; :func:`stored_config` (used by :func:`load_module`) runs it again on what it builds from.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fodl.errors import FodlError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, or raise ``FodlError`` saying what is wrong.

    Loading is ``weights_only``: PyTorch's restricted unpickler accepts tensors, numbers,
    strings and plain containers only, so a ``.ckpt`` from an untrusted source cannot run code
    (an ordinary pickle can call any function, e.g. ``os.system``, while it loads). Everything
    fodl writes (weights, optimizer and scheduler states, loop and callback states, the
    resolved config as plain dicts) is of those types; a file that needs anything else is
    refused with a message naming what it asked for. The stored config is checked too
    (:func:`check_stored_config`), so every reader of a checkpoint refuses one whose config
    names anything fodl would not build.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FodlError(
            f"Checkpoint {p} does not exist. Give ckpt_path= the path to a .ckpt file, e.g. "
            "outputs/<model>/runs/<time>/checkpoints/last.ckpt."
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        asked = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(e))
        if asked is None:  # not a refused object: a damaged or foreign file (below)
            raise _unreadable(p, e) from None
        raise FodlError(
            f"Checkpoint {p} holds Python objects beyond tensors and plain containers"
            f" ({asked.group(1)}), and fodl loads checkpoints with "
            "torch.load(weights_only=True) so that a file cannot run code while it loads. fodl's "
            "own checkpoints never need more. If the file comes from a source you trust, load it "
            "yourself with torch.load(path, weights_only=False), keep what you need (state_dict, "
            "fodl_config) as plain tensors/dicts and torch.save that; otherwise do not use it."
        ) from None
    except Exception as e:  # torch raises many kinds for a truncated / foreign file
        raise _unreadable(p, e) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise FodlError(f"{p} is a PyTorch file but not a Lightning checkpoint (no 'state_dict').")
    if ckpt.get("fodl_config") is not None:  # whatever reads the file next (a CLI, resume), a
        check_stored_config(ckpt["fodl_config"], p)  # config that could run code stops it here
    return ckpt


def _unreadable(p: Path, e: Exception) -> FodlError:
    first = next((line for line in str(e).splitlines() if line.strip()), "")[:200]
    return FodlError(
        f"Checkpoint {p} cannot be read ({type(e).__name__}: {first}). It is truncated or not a "
        "PyTorch checkpoint; use another file from the run's checkpoints/ directory (last.ckpt "
        "or the best epoch*.ckpt)."
    )


def check_compatible(module: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Fail early, with the model names, when a checkpoint does not fit the configured module."""
    own = module.state_dict()
    theirs = ckpt["state_dict"]
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shapes = [k for k in own if k in theirs and own[k].shape != theirs[k].shape]
    if missing or unexpected or shapes:
        trained = (ckpt.get("fodl_config") or {}).get("model_name", "another model")
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes))
            if keys
        )
        raise FodlError(
            f"Checkpoint {path} was trained with model={trained} and does not fit this run's model "
            f"({detail}). Pass the same model= (and net overrides) as the run that wrote it."
        )


# -- what a checkpoint's config may build ----------------------------------------------------

# sections of a stored run config that are never rebuilt from a checkpoint (the evaluating run
# brings its own trainer, callbacks and loggers): dropped unread, so nothing can build them
NOT_REBUILT = ("trainer", "callbacks", "logger", "hydra")
_CONVERT = ("none", "partial", "object", "all")


def _buildable_bases() -> tuple[type, ...]:
    import lightning as L

    return (torch.nn.Module, L.LightningDataModule, torch.optim.Optimizer,
            torch.optim.lr_scheduler.LRScheduler)


def _locate(name: str, base: str) -> Any:
    """What Hydra's ``instantiate`` would call for ``_target_=name`` (the same lookup: attribute
    by attribute, importing a submodule where an attribute is missing), except that the lookup
    never leaves the package ``base`` (``fodl`` or ``torch.optim``): it stops at the first
    module outside it, or at anything but a module before the last part, so resolving a name
    imports and touches nothing but that package's own modules. None when not found there."""
    parts = name.split(".")
    n = len(base.split("."))
    if ".".join(parts[:n]) != base or len(parts) <= n or not all(p.isidentifier() for p in parts):
        return None
    try:
        obj: Any = importlib.import_module(base)
        for m in range(n, len(parts)):
            if not isinstance(obj, ModuleType) or not (obj.__name__ == base
                                                       or obj.__name__.startswith(base + ".")):
                return None  # e.g. fodl.models.base.torch.load: torch is not fodl's
            try:
                obj = getattr(obj, parts[m])
            except AttributeError:
                obj = importlib.import_module(".".join(parts[: m + 1]))
    except Exception:  # not importable: not one of the package's names
        return None
    return obj


def _refusal(name: Any) -> str | None:
    """Why ``_target_=name`` may not be built from a checkpoint, or None when it may."""
    if not isinstance(name, str):
        return f"a {type(name).__name__}, not the dotted name of a class"
    if name.startswith("fodl."):
        obj = _locate(name, "fodl")
        if obj is None:
            return "not found among fodl's modules"
        if isinstance(obj, ModuleType):
            return f"the module {obj.__name__}, not a class"
        if not inspect.isclass(obj) or not (obj.__module__ or "").startswith("fodl."):
            what = "class" if inspect.isclass(obj) else type(obj).__name__
            return (f"a {what} defined in {getattr(obj, '__module__', None) or 'another package'}, "
                    "not one of fodl's own classes")
        if not issubclass(obj, _buildable_bases()):
            return "a fodl class that is not a net, module, data module or scheduler"
        return None
    if name.startswith("torch.optim."):
        obj = _locate(name, "torch.optim")
        if inspect.isclass(obj) and issubclass(obj, (torch.optim.Optimizer,
                                                     torch.optim.lr_scheduler.LRScheduler)):
            return None
        return "not a torch optimizer or learning-rate scheduler class"
    return "neither one of fodl's classes nor a torch optimizer or learning-rate scheduler"


def _untrusted(path: str | Path, key: str, what: str, fix: str) -> FodlError:
    return FodlError(
        f"Checkpoint {path} cannot be used: its stored run config (fodl_config) {what} at {key}. "
        "fodl builds only its own nets, modules, data modules and schedulers and torch "
        "optimizers and learning-rate schedulers from a checkpoint, since anything else named "
        "in a file could run code on this machine; nothing was built or run. fodl's train.py "
        f"never writes this, so the file was edited or made elsewhere: {fix}"
    )


def _check_node(node: Any, key: str, path: str | Path) -> None:
    """Depth-first through every dict and list of a stored config; raise on the first thing
    that could make ``instantiate`` (or OmegaConf) call code."""
    here = key or "the top level"
    if isinstance(node, dict):
        if "_target_" in node:
            name = node["_target_"]
            why = _refusal(name)
            if why is not None:
                shown = repr(name) if isinstance(name, str) else type(name).__name__
                raise _untrusted(path, f"{key}._target_" if key else "_target_",
                                 f"asks to build _target_={shown} ({why})",
                                 "do not use it unless you trust its source, and then only after "
                                 "restoring the _target_ its run was trained with.")
            for flag in ("_partial_", "_recursive_"):
                if flag in node and not isinstance(node[flag], bool):
                    raise _untrusted(path, f"{key}.{flag}", f"has {flag}={node[flag]!r}, not true "
                                     "or false", "train again, or use another checkpoint.")
            if "_convert_" in node and node["_convert_"] not in _CONVERT:
                raise _untrusted(path, f"{key}._convert_", f"has _convert_={node['_convert_']!r}",
                                 "train again, or use another checkpoint.")
            if "_args_" in node and not isinstance(node["_args_"], list):
                raise _untrusted(path, f"{key}._args_", "has _args_ that is not a list",
                                 "train again, or use another checkpoint.")
        for k, v in node.items():
            if not isinstance(k, str):
                raise _untrusted(path, here, f"has a key that is not a string ({k!r})",
                                 "train again, or use another checkpoint.")
            _check_node(v, f"{key}.{k}" if key else k, path)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_node(v, f"{key}[{i}]", path)
    elif isinstance(node, str):
        if "${" in node:  # OmegaConf would resolve it when the node is read: a resolver call
            raise _untrusted(path, here, f"has an interpolation ({node[:80]!r})",
                             "do not use it unless you trust its source.")
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise _untrusted(path, here, f"holds a {type(node).__name__}, not a plain value",
                         "train again, or use another checkpoint.")


def check_stored_config(config: Any, path: str | Path) -> None:
    """Raise a ``FodlError`` unless everything a checkpoint's stored config (``fodl_config``)
    could build is allowed (see the module docstring): checked through every nested dict and
    list, including ``_args_`` and partials, before anything is imported or instantiated.
    The sections in :data:`NOT_REBUILT` are not checked: :func:`stored_config` drops them."""
    if not isinstance(config, dict):
        raise _untrusted(path, "fodl_config", f"is a {type(config).__name__}, not a mapping",
                         "train again, or use another checkpoint.")
    _check_node({k: v for k, v in config.items() if k not in NOT_REBUILT}, "", path)


def stored_config(ckpt: dict[str, Any], path: str | Path) -> DictConfig:
    """The run config a fodl checkpoint was trained with, checked (:func:`check_stored_config`),
    without the sections it is never rebuilt from (:data:`NOT_REBUILT`). The only way fodl
    reads a checkpoint's config for building anything."""
    config = ckpt.get("fodl_config")
    if config is None:
        raise FodlError(
            f"{path} has no fodl_config: it was not written by fodl's train.py, so the net it "
            "holds is unknown. Train with scripts/train.py or load it in your own code."
        )
    check_stored_config(config, path)
    kept = {k: v for k, v in config.items() if k not in NOT_REBUILT}
    for part in ("model", "data"):
        if not isinstance(kept.get(part), dict) or "_target_" not in kept[part]:
            raise FodlError(f"Checkpoint {path} has no {part} in its stored run config "
                            "(fodl_config), so its model cannot be rebuilt: use a checkpoint "
                            "written by fodl's train.py.")
    return OmegaConf.create(kept)


def load_module(path: str | Path, data_overrides: dict[str, Any] | None = None,
                ckpt: dict[str, Any] | None = None):
    """Rebuild ``(module, datamodule_config, config)`` from a fodl checkpoint (``ckpt``: its
    contents, when already read). ``config`` is the checked stored config
    (:func:`stored_config`): building anything else from it is safe too."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    cfg = stored_config(ckpt, path)
    module = instantiate(cfg.model)
    check_compatible(module, ckpt, path)
    module.load_state_dict(ckpt["state_dict"])
    data_cfg = OmegaConf.merge(cfg.data, data_overrides or {})
    return module, data_cfg, cfg


def load_trained(path: str | Path, kind: type, what: str):
    """The trained module of class ``kind`` in a checkpoint, in eval mode, with everything it
    kept besides weights (a text family's vocabularies and tokenisation settings), so a CLI
    needs only the file. ``what`` names the expected kind in the error for another family's
    checkpoint, e.g. ``"POS tagger's (model=pos_tagger)"``."""
    ckpt = read_checkpoint(path)
    module, _, _ = load_module(path, ckpt=ckpt)
    if not isinstance(module, kind):
        raise FodlError(f"{path} is a {type(module).__name__} checkpoint, not a {what}.")
    from fodl.text.state import load_text_state

    module.set_text_state(*load_text_state(ckpt, str(path)))
    return module.eval()


def load_run(path: str | Path, data_dir: str | None = None, stage: str = "test"):
    """``(module, datamodule, config)`` of a fodl checkpoint, the datamodule set up for ``stage``
    and reading from ``data_dir`` when given (else the directory stored in the checkpoint)."""
    module, data_cfg, cfg = load_module(path, {"data_dir": data_dir} if data_dir else None)
    datamodule = instantiate(data_cfg)
    datamodule.setup(stage)
    return module, datamodule, cfg
