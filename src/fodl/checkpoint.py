"""Reading checkpoints with clear errors, and rebuilding a trained module from one."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fodl.errors import FodlError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, or raise ``FodlError`` saying what is wrong.

    Loading is ``weights_only``: PyTorch's restricted unpickler accepts tensors, numbers,
    strings and plain containers only, so a ``.ckpt`` from an untrusted source cannot run code
    (an ordinary pickle can call any function, e.g. ``os.system``, while it loads). Everything
    fodl writes (weights, optimizer and scheduler states, loop and callback states, the
    resolved config as plain dicts) is of those types; a file that needs anything else is
    refused with a message naming what it asked for.
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


def load_module(path: str | Path, data_overrides: dict[str, Any] | None = None,
                ckpt: dict[str, Any] | None = None):
    """Rebuild ``(module, datamodule_config, config)`` from a fodl checkpoint (``ckpt``: its
    contents, when already read)."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    config = ckpt.get("fodl_config")
    if config is None:
        raise FodlError(
            f"{path} has no fodl_config: it was not written by fodl's train.py, so the net it "
            "holds is unknown. Train with scripts/train.py or load it in your own code."
        )
    cfg = OmegaConf.create(config)
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
