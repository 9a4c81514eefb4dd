"""Callbacks the multi-process tests inject into subprocess runs (``+callbacks.<name>._target_=
probes.<Class>``, with ``tests/`` on PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class SaveRankWeights(L.Callback):
    """Each process saves its final weights as ``out_dir/rank<global rank>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        d = Path(self.out_dir)
        d.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                   d / f"rank{trainer.global_rank}.pt")
