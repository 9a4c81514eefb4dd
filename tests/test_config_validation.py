"""Bad config values stop a run before anything is built, with one paragraph naming the key, the
value and what is allowed (fodl.schema), never a traceback from deep inside torch/Lightning."""

import logging

import pytest

from conftest import ROOT, compose_train, run_script
from fodl.config import CONF_DIR
from fodl.errors import FodlError
from fodl.schema import check_config
from fodl.train import run_entry, train


def _fails_naming(tmp_path, caplog, overrides, key, value=None):
    """As scripts/train.py runs it (run_entry): exit status 2, one error naming ``key`` and the
    value, and nothing built or written."""
    empty = tmp_path / "no-data"
    cfg = compose_train([f"paths.data_dir={empty}", "data.download=false", *overrides],
                        tmp_path / "run")
    caplog.set_level(logging.ERROR, logger="fodl")
    with pytest.raises(SystemExit) as e:
        run_entry(train, cfg)
    assert e.value.code == 2
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert msg.startswith("Invalid configuration") and key in msg, msg
    if value is not None:
        assert value in msg, msg
    assert "\n" not in msg and "Traceback" not in msg          # one paragraph
    assert not (tmp_path / "run").exists() and not empty.exists()  # nothing was started
    return msg


DATA = [
    (["data.batch_size=abc"], "data.batch_size", "'abc'"),
    (["data.batch_size=-1"], "data.batch_size", "-1"),
    (["data.batch_size=0"], "data.batch_size", "0"),
    (["data.batch_size=2.5"], "data.batch_size", "2.5"),
    (["data.eval_batch_size=0"], "data.eval_batch_size", "0"),
    (["data.val_size=-5"], "data.val_size", "-5"),
    (["data.verify=sha1"], "data.verify", "'sha1'"),
    (["data.steps_per_execution=0"], "data.steps_per_execution", "0"),
    (["data.download=maybe"], "data.download", "'maybe'"),
    (["data.standardize=1"], "data.standardize", "1"),
    (["model=cifar_cnn", "data.crop=40"], "data.crop", "40"),
    (["model=cifar_cnn", "data.augment=yes"], "data.augment", "'yes'"),
    (["+data.shuffle=false"], "data.shuffle", None),
]


@pytest.mark.parametrize("overrides,key,value", DATA, ids=[" ".join(o) for o, _, _ in DATA])
def test_bad_data_values(tmp_path, caplog, overrides, key, value):
    msg = _fails_naming(tmp_path, caplog, overrides, key, value)
    if key == "data.batch_size":
        assert "allowed: an integer >= 1" in msg and "e.g. data.batch_size=100" in msg


MODEL = [
    (["model.net.hidden=[0]"], "model.net.hidden", "[0]"),
    (["model.net.hidden=[256,-1]"], "model.net.hidden", "[256, -1]"),
    (["model.net.hidden=wide"], "model.net.hidden", "'wide'"),
    (["model.net.in_features=0"], "model.net.in_features", "0"),
    (["model.net.init=xavier"], "model.net.init", "'xavier'"),
    (["model.net.output_activation=tanh"], "model.net.output_activation", "'tanh'"),
    (["+model.net.dropout=1.5"], "model.net.dropout", "1.5"),
    (["+model.net.foo=3"], "model.net.foo", None),
    (["model.net._target_=fodl.nets.Nope"], "model.net._target_", "'fodl.nets.Nope'"),
    (["model.num_classes=1"], "model.num_classes", "1"),
    (["+model.scheduler_interval=batch"], "model.scheduler_interval", "'batch'"),
    (["+model.gradient_clip_val=-1"], "model.gradient_clip_val", "-1"),
    (["model.cuda_graph=on"], "model.cuda_graph", "'on'"),
    (["model=mnist_cnn", "model.net.in_channels=0"], "model.net.in_channels", "0"),
    (["model=mnist_cnn", "model.net.dropout=-0.1"], "model.net.dropout", "-0.1"),
    (["model=cifar_cnn", "model.net.batch_norm=maybe"], "model.net.batch_norm", "'maybe'"),
    (["model=logreg", "model.net.num_classes=0"], "model.net.num_classes", "0"),
    (["model=lstm_sentiment", "model.net.ngram_dropout=1.0"], "model.net.ngram_dropout", "1.0"),
    (["model=lstm_sentiment", "model.net.ngram_max_norm=0"], "model.net.ngram_max_norm", "0"),
    (["model=lstm_sentiment", "model.ngram_lr_scale=0"], "model.ngram_lr_scale", "0"),
    (["model=lstm_sentiment", "model.ngram_weight_decay=-1e-4"], "model.ngram_weight_decay", "-0.0001"),
    (["model=lstm_sentiment", "model.adversarial=-1"], "model.adversarial", "-1"),
]


@pytest.mark.parametrize("overrides,key,value", MODEL, ids=[" ".join(o) for o, _, _ in MODEL])
def test_bad_model_values(tmp_path, caplog, overrides, key, value):
    _fails_naming(tmp_path, caplog, overrides, key, value)


OPTIMIZER = [
    (["optimizer.lr=0"], "optimizer.lr", "0"),
    (["optimizer.lr=-0.1"], "optimizer.lr", "-0.1"),
    (["optimizer.lr=fast"], "optimizer.lr", "'fast'"),
    (["optimizer.lr=nan"], "optimizer.lr", "nan"),
    (["optimizer=momentum", "optimizer.momentum=-0.9"], "optimizer.momentum", "-0.9"),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas", "[0.9]"),
    (["optimizer=adam", "optimizer.betas=[]"], "optimizer.betas", "[]"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], "optimizer.betas", "[0.9, 1.5]"),
    (["optimizer=rmsprop", "optimizer.eps=-1e-10"], "optimizer.eps", "-1e-10"),
    (["optimizer=adagrad", "optimizer.initial_accumulator_value=-1"],
     "optimizer.initial_accumulator_value", "-1"),
    (["optimizer=nesterov", "optimizer.nesterov=sometimes"], "optimizer.nesterov", "'sometimes'"),
    (["+optimizer.momentom=0.9"], "optimizer.momentom", None),
]


@pytest.mark.parametrize("overrides,key,value", OPTIMIZER, ids=[" ".join(o) for o, _, _ in OPTIMIZER])
def test_bad_optimizer_values(tmp_path, caplog, overrides, key, value):
    _fails_naming(tmp_path, caplog, overrides, key, value)


SCHEDULER = [
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size", "0"),
    (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma", "0"),
    (["scheduler=step", "scheduler.gamma=half"], "scheduler.gamma", "'half'"),
    (["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max", "0"),
    (["scheduler=cosine", "scheduler.eta_min=-1"], "scheduler.eta_min", "-1"),
]


@pytest.mark.parametrize("overrides,key,value", SCHEDULER, ids=[" ".join(o) for o, _, _ in SCHEDULER])
def test_bad_scheduler_values(tmp_path, caplog, overrides, key, value):
    _fails_naming(tmp_path, caplog, overrides, key, value)


TRAINER = [
    (["trainer.max_epochs=0"], "trainer.max_epochs", "0"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs", "'ten'"),
    (["trainer.devices=0"], "trainer.devices", "0"),
    (["trainer.devices=[]"], "trainer.devices", "[]"),
    (["trainer.precision=31"], "trainer.precision", "31"),
    (["trainer.accelerator=quantum"], "trainer.accelerator", "'quantum'"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", "0"),
    (["trainer.num_sanity_val_steps=-2"], "trainer.num_sanity_val_steps", "-2"),
    (["+trainer.limit_train_batches=1.5"], "trainer.limit_train_batches", "1.5"),
    (["+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", "-1"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch", None),
]


@pytest.mark.parametrize("overrides,key,value", TRAINER, ids=[" ".join(o) for o, _, _ in TRAINER])
def test_bad_trainer_values(tmp_path, caplog, overrides, key, value):
    _fails_naming(tmp_path, caplog, overrides, key, value)


CALLBACKS_LOGGER = [
    (["callbacks.progress_bar.refresh_rate=-1"], "callbacks.progress_bar.refresh_rate", "-1"),
    (["callbacks.progress_bar.redraws_per_second=0"], "callbacks.progress_bar.redraws_per_second", "0"),
    (["callbacks.parameter_summaries.every_n_epochs=0"], "callbacks.parameter_summaries.every_n_epochs", "0"),
    (["callbacks.model_checkpoint.save_top_k=-2"], "callbacks.model_checkpoint.save_top_k", "-2"),
    (["+callbacks.model_checkpoint.every_n_epoch=1"], "callbacks.model_checkpoint.every_n_epoch", None),
    (["logger.tensorboard.default_hp_metric=maybe"], "logger.tensorboard.default_hp_metric", "'maybe'"),
]


@pytest.mark.parametrize("overrides,key,value", CALLBACKS_LOGGER,
                         ids=[" ".join(o) for o, _, _ in CALLBACKS_LOGGER])
def test_bad_callback_and_logger_values(tmp_path, caplog, overrides, key, value):
    _fails_naming(tmp_path, caplog, overrides, key, value)


TOP = [
    (["seed=-1"], "seed", "-1"),
    (["seed=abc"], "seed", "'abc'"),
    (["test=maybe"], "test", "'maybe'"),
    (["monitor_mode=maximum"], "monitor_mode", "'maximum'"),
    (["monitor="], "monitor", "''"),
    (["seed=${nothing}"], "seed", None),
]


@pytest.mark.parametrize("overrides,key,value", TOP, ids=[" ".join(o) for o, _, _ in TOP])
def test_bad_top_level_values(tmp_path, caplog, overrides, key, value):
    msg = _fails_naming(tmp_path, caplog, overrides, key, value)
    if overrides == ["seed=-1"]:
        assert "data.seed" not in msg  # ${seed} copies are not reported again


CHOICES = [("model=no_such_model", "model"), ("optimizer=no_such_optimizer", "optimizer"),
           ("scheduler=no_such_schedule", "scheduler"), ("trainer=no_such_trainer", "trainer"),
           ("data=no_such_dataset", "data"), ("logger=no_such_logger", "logger"),
           ("experiment=book/no_such_experiment", "experiment"), ("debug=no_such_mode", "debug")]


@pytest.mark.parametrize("override,group", CHOICES, ids=[c for c, _ in CHOICES])
def test_unknown_choices_list_the_options(tmp_path, override, group):
    """Hydra's own message (printed without a traceback by the entry point; a FodlError with
    it from fodl.config.compose_run, which the analysis scripts build their runs with): the
    group, then its options."""
    with pytest.raises(FodlError) as e:
        compose_train([override], tmp_path / "run")
    msg = str(e.value)
    assert f"Could not find '{group}/{override.split('=')[1]}'" in msg
    if group != "experiment":  # Hydra lists the options of a flat group (--help lists them all)
        assert f"Available options in '{group}'" in msg
        assert all(p.stem in msg for p in (CONF_DIR / group).glob("*.yaml"))


def test_bad_values_are_all_named_at_once(tmp_path, caplog):
    msg = _fails_naming(tmp_path, caplog, ["data.batch_size=abc", "optimizer.lr=-1", "model.net.hidden=[0]"],
                        "data.batch_size")
    assert "3 values" in msg and "optimizer.lr=-1" in msg and "model.net.hidden=[0]" in msg


def _shipped():
    sets = [[f"model={p.stem}"] for p in sorted((CONF_DIR / "model").glob("*.yaml"))]
    sets += [[f"experiment={p.relative_to(CONF_DIR / 'experiment').with_suffix('').as_posix()}"]
             for p in sorted((CONF_DIR / "experiment").rglob("*.yaml"))]
    sets += [[f"optimizer={p.stem}", f"scheduler={s.stem}"] for p in sorted((CONF_DIR / "optimizer").glob("*.yaml"))
             for s in sorted((CONF_DIR / "scheduler").glob("*.yaml"))]
    for group in ("trainer", "logger", "callbacks", "debug", "hparams_search"):
        sets += [[f"{group}={p.stem}"] for p in sorted((CONF_DIR / group).glob("*.yaml"))]
    return sets


def test_every_shipped_config_passes(tmp_path):
    """... the schema, and the check of a checkpoint's stored config (what ConfigInCheckpoint
    stores: every shipped config can be rebuilt from its checkpoints)."""
    from omegaconf import OmegaConf

    from fodl.checkpoint import check_stored_config

    for overrides in _shipped():
        cfg = compose_train(overrides, tmp_path / "run")
        check_config(cfg, machine=False)
        check_stored_config(OmegaConf.to_container(cfg, resolve=True), "x.ckpt")


def test_the_user_sees_one_paragraph_and_no_traceback(tmp_path):
    """The whole path of `python scripts/train.py data.batch_size=abc`: exit status 2, the key
    named, no traceback, and nothing run (no model summary, no checkpoint)."""
    r = run_script("train.py", ["data.batch_size=abc"], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "data.batch_size='abc'" in out and "allowed: an integer >= 1" in out
    assert "Traceback" not in out and "Total params" not in out
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))
    assert str(ROOT) not in out  # no frames of fodl's own code either


def test_every_rule_names_a_class_where_it_is_defined():
    """A rule keyed by a re-export or a misspelled path would never apply: each key of RULES
    is the dotted path where its class is defined, and each rule of a fodl class names one of
    its parameters (torch's Optimizer / LRScheduler entries name their subclasses')."""
    from hydra._internal.utils import _locate

    from fodl.schema import RULES, signature_of

    for key, rules in RULES.items():
        target = _locate(key)
        assert f"{target.__module__}.{target.__qualname__}" == key
        params, _, any_keyword = signature_of(target)
        if key.startswith("fodl."):
            assert any_keyword or set(rules) <= set(params), (key, set(rules) - set(params))
