"""A checkpoint from anywhere must not run code when fodl loads it (weights_only loading)."""

import os

import pytest
import torch

from conftest import compose_train, train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.errors import FodlError
from fodl.train import evaluate, train


class _Payload:
    """Unpickling this calls os.system: what a malicious .ckpt does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(tmp_path, marker):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "fodl_config": {"model_name": "x"}, "payload": _Payload(marker)}, path)
    return path


def test_read_checkpoint_refuses_code_and_runs_none(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(FodlError, match=r"weights_only=True.*posix.system|system.*weights_only=True"):
        read_checkpoint(_evil(tmp_path, marker))
    assert not marker.exists()
    # the same file loaded the unsafe way does run the payload: the test's payload is real
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_eval_and_resume_refuse_a_malicious_checkpoint(tmp_path, tiny_mnist):
    marker = tmp_path / "pwned"
    evil = _evil(tmp_path, marker)
    ecfg = compose_train([f"ckpt_path={evil}", f"paths.data_dir={tiny_mnist}"], tmp_path / "ev",
                         config_name="eval")
    with pytest.raises(FodlError, match="weights_only"):
        evaluate(ecfg)
    with pytest.raises(FodlError, match="weights_only"):
        train(train_cfg(tmp_path, tiny_mnist, "model=logreg", f"ckpt_path={evil}"))
    assert not marker.exists()


def test_fodl_checkpoints_load_weights_only(tmp_path, tiny_mnist):
    """Everything fodl itself writes passes the restricted unpickler (scheduler, momentum, config)."""
    train(train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "optimizer=momentum", "scheduler=cosine",
                    "trainer.max_epochs=1"))
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        c = torch.load(ckpt, weights_only=True)
        assert c["fodl_config"]["model"]["net"]["hidden"] == [256, 256]
        assert c["lr_schedulers"] and c["optimizer_states"]
