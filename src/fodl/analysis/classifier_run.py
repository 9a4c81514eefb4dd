"""Loading an image classifier's run for the analyses that study one (``interpolate.py``,
``tsne.py``). It sits in the analysis layer because it names a model family; fodl.checkpoint
below it knows no family."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate

from fodl.checkpoint import load_module
from fodl.errors import FodlError
from fodl.models.classifier import ClassifierModule


def load_classifier_run(path: str | Path, data_dir: str | None, stage: str, script: str):
    """:func:`fodl.checkpoint.load_run` for the analyses of an image classifier (``interpolate.py``,
    ``tsne.py``): another family's checkpoint is refused before its data is read."""
    module, data_cfg, cfg = load_module(path, {"data_dir": data_dir} if data_dir else None)
    if type(module) is not ClassifierModule:
        raise FodlError(
            f"{path} is not a classifier checkpoint: it holds a {type(module).__name__} "
            f"(model={cfg.get('model_name') or '?'}), and {script} analyses an image classifier. "
            "Give a checkpoint of a run with model=logreg, mnist_mlp, mnist_cnn, cifar_cnn or "
            "cifar_cnn_bn.")
    datamodule = instantiate(data_cfg)
    datamodule.setup(stage)
    return module, datamodule, cfg
