"""Chapter 4's momentum experiment: minibatches until the training cost reaches a threshold."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fodl.callbacks import StopAtTrainLoss
from fodl.config import compose_run
from fodl.train import build


def steps_to_cost(overrides: list[str], data_dir: str, threshold: float = 0.1, window: int = 100,
                  max_epochs: int = 100) -> int | None:
    """Optimizer steps until the mean minibatch cost over the last ``window`` steps is
    <= ``threshold`` (None if not within ``max_epochs``). The callback sees every minibatch's
    cost (a per-batch callback gets one minibatch per Lightning step)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(["model=mnist_mlp", *overrides, f"paths.data_dir={data_dir}",
                           f"paths.root_dir={tmp}", f"trainer.max_epochs={max_epochs}",
                           "test=false", "callbacks=none",
                           "logger=none", "trainer.enable_model_summary=false",
                           "trainer.check_val_every_n_epoch=1000"], Path(tmp) / "run")
        datamodule, module, trainer = build(cfg)
        stop = StopAtTrainLoss(threshold, window)
        trainer.callbacks.append(stop)
        trainer.fit(module, datamodule=datamodule)
    return stop.reached_at
