"""A checkpoint from anywhere must not run code when fodl loads it: neither through pickles
(weights_only loading) nor through the ``_target_``s of the run config stored in it."""

import base64
import copy
import logging
import os
import pickle
import runpy
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, compose_train, make_mnist_like, train_cfg
from fodl.checkpoint import check_stored_config, load_module, read_checkpoint
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
        check_stored_config(c["fodl_config"], ckpt)  # and passes the stored-config check


# -- the stored config: every _target_ in it is checked before anything is built ------------


@pytest.fixture(scope="session")
def real_checkpoint(tmp_path_factory):
    """``(path, contents)`` of one real, tiny fodl checkpoint (logreg, one short epoch), made
    once per session; tests write tampered copies of it."""
    tmp = tmp_path_factory.mktemp("real_ckpt")
    data = make_mnist_like(tmp / "data", n_train=400, n_test=100)
    train(train_cfg(tmp, data, "model=logreg", "trainer.max_epochs=1", "test=false",
                    "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
                    "trainer.num_sanity_val_steps=0", f"paths.cache_dir={tmp / 'cache'}"))
    path = tmp / "run" / "checkpoints" / "last.ckpt"
    return path, torch.load(path, weights_only=True)


def _copyfile(marker):
    return {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)}


def _torch_load(marker):
    """The issue's payload: plain strings and ints that pass weights_only, and that make Hydra
    unpickle (and so run) any pickle through torch.load(weights_only=False)."""
    blob = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    return {"_target_": "torch.load", "weights_only": False,
            "f": {"_target_": "io.BytesIO",
                  "initial_bytes": {"_target_": "base64.b64decode", "s": blob}}}


def _set(cfg, key, value):
    *parents, last = key.split(".")
    for k in parents:
        cfg = cfg[k]
    cfg[last] = value


# name -> (where it goes in fodl_config, the payload, the _target_ and key the error must name)
PAYLOADS = {
    "torch.load-base64": ("model", _torch_load, "torch.load", "model._target_"),
    "copyfile-in-data": ("data", _copyfile, "shutil.copyfile", "data._target_"),
    "nested-model.net": ("model.net", _copyfile, "shutil.copyfile", "model.net._target_"),
    "nested-in-a-list": ("model.net.hidden", lambda m: [16, _copyfile(m)], "shutil.copyfile",
                         "model.net.hidden[1]._target_"),
    "optimizer": ("model.optimizer", _copyfile, "shutil.copyfile", "model.optimizer._target_"),
    "_args_": ("model._args_", lambda m: [_copyfile(m)], "shutil.copyfile", "model._args_[0]._target_"),
    "fodl-re-export": ("model.net", lambda m: {**_copyfile(m), "_target_": "fodl.data.download.shutil.copyfile"},
                       "fodl.data.download.shutil.copyfile", "model.net._target_"),
}


def _tampered(real_checkpoint, tmp_path, payload):
    """A copy of the real checkpoint with ``payload`` planted, laid out as a run directory
    (``<sweep>/0/checkpoints/last.ckpt``, as dead_logits.py looks for them)."""
    key, make, _, _ = PAYLOADS[payload]
    marker = tmp_path / "pwned"
    ckpt = copy.deepcopy(real_checkpoint[1])
    _set(ckpt["fodl_config"], key, make(marker))
    path = tmp_path / "sweep" / "0" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path, marker


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_the_payloads_are_real(real_checkpoint, tmp_path, payload):
    """Built the way load_module did before the check (Hydra's instantiate on the stored
    config), each payload runs its code: the tests below would catch a guard that missed it."""
    path, marker = _tampered(real_checkpoint, tmp_path, payload)
    cfg = OmegaConf.create(torch.load(path, weights_only=True)["fodl_config"])
    try:
        instantiate(cfg.data if PAYLOADS[payload][0] == "data" else cfg.model)
    except Exception:
        pass  # after the payload has run, what it returned does not fit the module
    assert marker.exists()


# every script that reads a checkpoint, with its arguments (CKPT: the file; SWEEP: its sweep dir)
SCRIPTS = {
    "eval.py": ["ckpt_path=CKPT"],
    "train.py (resume)": ["model=logreg", "ckpt_path=CKPT"],
    "tag.py": ["CKPT", "a sentence"],
    "classify.py": ["CKPT", "a review"],
    "translate.py": ["CKPT", "ein Satz ."],
    "play.py": ["CKPT", "--no-video"],
    "interpolate.py": ["CKPT", "--out", "OUT"],
    "tsne.py": ["CKPT", "--out", "OUT/t.png"],
    "dnc_generalisation.py": ["DNC=CKPT", "--out", "OUT"],
    "autoencoder_vs_pca.py": ["--ae2", "CKPT", "--out", "OUT"],
    "dead_logits.py": ["SWEEP"],
    "word_vectors.py": ["neighbours", "CKPT", "king"],
}


def _run_script_in_process(script, args, monkeypatch, capfd):
    """``python scripts/<script> args`` in this process (no interpreter start-up per case):
    ``(exit status, its output)``: stderr, and stdout too, where Hydra's console log goes."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / script), *args])
    GlobalHydra.instance().clear()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    finally:  # Hydra configured logging for its run (a file in tmp_path, capfd's stream): undo it
        GlobalHydra.instance().clear()
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
    out = capfd.readouterr()
    return e.value.code, out.out + out.err


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_no_script_builds_what_a_checkpoint_config_names(real_checkpoint, tmp_path, monkeypatch, capfd,
                                                         script, payload):
    path, marker = _tampered(real_checkpoint, tmp_path, payload)
    monkeypatch.chdir(tmp_path)  # Hydra's run directories land here
    sub = {"CKPT": str(path), "SWEEP": str(tmp_path / "sweep"), "OUT": str(tmp_path / "out")}
    args = [next((a.replace(k, v) for k, v in sub.items() if k in a), a) for a in SCRIPTS[script]]
    code, err = _run_script_in_process(script.split()[0], args, monkeypatch, capfd)
    assert not marker.exists(), "the payload ran"
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    _, _, target, key = PAYLOADS[payload]
    assert f"_target_='{target}'" in err and f"at {key}." in err and str(path) in err, err


GUARD = [
    ({"model": {"_target_": "fodl.models.base.torch.load"}}, "model._target_", "fodl.models.base.torch.load"),
    ({"model": {"_target_": "fodl.checkpoint_io.atomic_save"}}, "model._target_", "function"),
    ({"model": {"_target_": "fodl.callbacks.ResumableModelCheckpoint"}}, "model._target_", "not a net, module"),
    ({"model": {"_target_": "fodl.nets.MLP", "_partial_": True,
                "init": {"_target_": "os.system", "_args_": ["true"]}}}, "model.init._target_", "os.system"),
    ({"model": {"_target_": "torch.optim.sgd.torch.load"}}, "model._target_", "torch optimizer"),
    ({"model": {"_target_": "torch.nn.Linear"}}, "model._target_", "torch.nn.Linear"),
    ({"model": {"_target_": "fodl.nets.MLP", "hidden": "${oc.decode:'[1]'}"}}, "model.hidden", "interpolation"),
    ({"model": {"_target_": 3}}, "model._target_", "int"),
    ({"model": {"_target_": "fodl.nets.MLP", "_recursive_": "yes"}}, "model._recursive_", "'yes'"),
    ({"extra": [[{"_target_": "subprocess.run"}]]}, "extra[0][0]._target_", "subprocess.run"),
    ({"model": {"_target_": "fodl.nets.MLP", "w": torch.zeros(1)}}, "model.w", "Tensor"),
]


@pytest.mark.parametrize("config,key,what", GUARD, ids=[k for _, k, _ in GUARD])
def test_the_stored_config_check(config, key, what):
    with pytest.raises(FodlError) as e:
        check_stored_config(config, "x.ckpt")
    msg = str(e.value)
    assert f"at {key}." in msg and what in msg and "x.ckpt" in msg and "\n" not in msg, msg


def test_what_fodl_writes_passes_and_is_rebuilt(real_checkpoint):
    """Nets, modules, data modules, torch optimizers and schedulers (also fodl's own) pass; the
    trainer, callbacks and loggers of the stored config are never rebuilt, so they are dropped."""
    check_stored_config({"optimizer": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1},
                         "s": {"_target_": "fodl.models.skipgram.LinearDecayLR", "_partial_": True},
                         "trainer": {"_target_": "lightning.pytorch.Trainer"}}, "x.ckpt")
    module, data_cfg, cfg = load_module(real_checkpoint[0])
    assert type(module).__name__ == "ClassifierModule" and data_cfg._target_.endswith("MNISTDataModule")
    assert "trainer" not in cfg and "callbacks" not in cfg and cfg.model_name == "logreg"


@pytest.mark.parametrize("script", ["interpolate.py", "tsne.py"])
def test_the_classifier_analyses_refuse_another_familys_checkpoint(real_checkpoint, tmp_path, monkeypatch,
                                                                   capfd, script):
    """A real checkpoint of another family (an autoencoder): "not a classifier checkpoint",
    exit status 2, before its data is read."""
    ckpt = copy.deepcopy(real_checkpoint[1])
    model = {"_target_": "fodl.models.AutoencoderModule", "optimizer": ckpt["fodl_config"]["model"]["optimizer"],
             "net": {"_target_": "fodl.nets.Autoencoder", "in_features": 784, "hidden": [8], "code_size": 2}}
    ckpt["fodl_config"].update(model=model, model_name="autoencoder")
    ckpt["fodl_config"]["data"]["data_dir"] = str(tmp_path / "no-data")
    ckpt["state_dict"] = instantiate(OmegaConf.create(model)).state_dict()
    path = tmp_path / "ae.ckpt"
    torch.save(ckpt, path)
    code, out = _run_script_in_process(script, [str(path), "--out", str(tmp_path / "out")], monkeypatch, capfd)
    assert code == 2 and "Traceback" not in out, out
    assert f"{path} is not a classifier checkpoint: it holds a AutoencoderModule (model=autoencoder)" in out
    assert not (tmp_path / "out").exists()
