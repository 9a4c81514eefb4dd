"""Config values checked before anything is built: a wrong type or an impossible value stops
the run with one paragraph naming the key, the value and what is allowed.

**fodl's one validation story.** Every value a run config sets is checked here, on the composed
config, before anything is instantiated: all bad values are reported at once, by their config
key (``model.net.dropout``), and nothing is built, downloaded or written. Constructors do not
check single values again; they check only what this module cannot see: relations to the
objects and data they are given (a net's vocabulary size against the data's, a net without
``encode``), combinations of settings that need the machine (``cuda_graph`` on a CPU), and
the plain ``torch.nn.Module`` nets of ``fodl.nets`` keep their ``ValueError`` argument checks
for Python callers (that layer imports nothing of fodl). The trainer's accelerator and devices
are checked against this machine too (:meth:`_Checker.machine`).

``check_config(cfg)`` resolves the composed config and checks every node that has a
``_target_`` (data, model, model.net, optimizer, scheduler, trainer, each callback and logger,
a trainer profiler ...) against

1. the target's signature: a key that is not one of its parameters is an error (unless it
   takes ``**kwargs`` at the end of its ``__init__`` chain), and so is a missing required one;
2. the parameter's type hints (``int``, ``float``, ``bool``, ``str``, ``Literal``, ``Optional``,
   unions, lists/tuples of those), so families get type checks without writing anything;
3. the explicit rules in :data:`RULES` (ranges, allowed names), which replace the type hint of
   the parameters they name. Rules are looked up along the target's class hierarchy, so a
   rule for ``InMemoryDataModule.batch_size`` applies to every in-memory DataModule and one
   for ``torch.optim.Optimizer.lr`` to every optimizer.

**A new family adds its rules in one place**: one entry per class in :data:`RULES` below
(its net, its LightningModule and its DataModule, keyed by the class's dotted path), with
allowed names imported from the module that defines them, e.g.::

    "fodl.nets.skipgram.SkipGramNet": {"embedding_dim": Number(integer=True, min=1),
                                       "init": Choice(*_SKIPGRAM_INITS)},

plus the top-level keys it introduces, if any, in :data:`ROOT_RULES`.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fodl.data.imdb import VAL_SPLITS as _VAL_SPLITS
from fodl.errors import FodlError
from fodl.models.autoencoder import LOSSES as _AE_LOSSES
from fodl.models.autoencoder import SPARSITY as _SPARSITY
from fodl.models.skipgram import LOSSES as _SKIPGRAM_LOSSES
from fodl.nets.autoencoder import BOOK_INIT as _AE_BOOK_INIT
from fodl.nets.dnc import CONTROLLERS as _CONTROLLERS
from fodl.nets.init import INITS as _INITS
from fodl.nets.lstm import POOLINGS as _POOLINGS
from fodl.nets.seq2seq import ATTENTIONS as _ATTENTIONS
from fodl.nets.skipgram import INITS as _SKIPGRAM_INITS
from fodl.rl.envs import VECTORIZATIONS as _VECTORIZATIONS
from fodl.text.tokenize import TOKENIZERS as _TOKENIZERS

# -- rules ----------------------------------------------------------------------------------


class Rule:
    """A check of one config value."""

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def allowed(self) -> str:
        """What is allowed, as the end of 'allowed: ...' ('' when not worth saying)."""
        raise NotImplementedError


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Number(Rule):
    """A finite number (``integer=True``: an int) in a range; ``also``: extra allowed values
    (e.g. -1 for 'no limit'); ``none``: null allowed too."""

    integer: bool = False
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself not allowed
    max_open: bool = False
    also: tuple = ()
    none: bool = False

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.none
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if v in self.also:
            return True
        if self.integer and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if self.min is not None and (v < self.min or (self.min_open and v == self.min)):
            return False
        if self.max is not None and (v > self.max or (self.max_open and v == self.max)):
            return False
        return True

    def allowed(self) -> str:
        s = "an integer" if self.integer else "a number"
        if self.min is not None and self.max is not None:
            s += (f" in {'(' if self.min_open else '['}{_fmt(self.min)}, {_fmt(self.max)}"
                  f"{')' if self.max_open else ']'}")
        elif self.min is not None:
            s += f" {'>' if self.min_open else '>='} {_fmt(self.min)}"
        elif self.max is not None:
            s += f" {'<' if self.max_open else '<='} {_fmt(self.max)}"
        extra = [repr(a) for a in self.also] + (["null"] if self.none else [])
        return s + (", or " + " or ".join(extra) if extra else "")


@dataclass(frozen=True)
class Choice(Rule):
    """One of the given values (null allowed when None is one of them)."""

    values: tuple

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def ok(self, v: Any) -> bool:
        return any(v == c and type(v) is type(c) for c in self.values)

    def allowed(self) -> str:
        return "one of " + ", ".join("null" if c is None else repr(c) for c in self.values)


@dataclass(frozen=True)
class Flag(Rule):
    none: bool = False

    def ok(self, v: Any) -> bool:
        return isinstance(v, bool) or (v is None and self.none)

    def allowed(self) -> str:
        return "true or false" + (" or null" if self.none else "")


@dataclass(frozen=True)
class Text(Rule):
    none: bool = False
    nonempty: bool = False

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.none
        return isinstance(v, str) and (bool(v.strip()) or not self.nonempty)

    def allowed(self) -> str:
        s = "a non-empty string" if self.nonempty else "a string"
        return s + (" or null" if self.none else "")


@dataclass(frozen=True)
class Seq(Rule):
    """A list whose items each pass ``item``, with ``min_len`` to ``max_len`` items."""

    item: Rule | None = None
    min_len: int = 0
    max_len: int | None = None
    none: bool = False

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.none
        if not isinstance(v, (list, tuple)):
            return False
        if len(v) < self.min_len or (self.max_len is not None and len(v) > self.max_len):
            return False
        return self.item is None or all(self.item.ok(x) for x in v)

    def allowed(self) -> str:
        if self.max_len is not None and self.max_len == self.min_len:
            s = f"a list of exactly {self.min_len}"
        elif self.min_len:
            s = "a non-empty list" if self.min_len == 1 else f"a list of at least {self.min_len}"
        else:
            s = "a list (may be empty)"
        if self.item is not None and self.item.allowed():
            s += f", each {self.item.allowed()}"
        return s + (", or null" if self.none else "")


@dataclass(frozen=True)
class AnyOf(Rule):
    rules: tuple
    text: str = ""  # what is allowed, when the rules' own descriptions would say it badly

    def __init__(self, *rules: Rule, text: str = "") -> None:
        object.__setattr__(self, "rules", tuple(rules))
        object.__setattr__(self, "text", text)

    def ok(self, v: Any) -> bool:
        return any(r.ok(v) for r in self.rules)

    def allowed(self) -> str:
        if self.text:
            return self.text
        choices = [v for r in self.rules if isinstance(r, Choice) for v in r.values]
        parts = [a for r in self.rules if not isinstance(r, Choice) and (a := r.allowed())]
        if choices:
            parts.append(Choice(*choices).allowed())
        return ", or ".join(parts)


@dataclass(frozen=True)
class Pattern(Rule):
    """A string that matches the regular expression ``regex`` as a whole."""

    regex: str

    def ok(self, v: Any) -> bool:
        import re

        return isinstance(v, str) and re.fullmatch(self.regex, v.strip()) is not None

    def allowed(self) -> str:
        return f"a string matching {self.regex}"


@dataclass(frozen=True)
class Object(Rule):
    """A parameter that takes an object (a module, a callable, a tensor): in a config, a node
    with ``_target_`` (checked on its own)."""

    def ok(self, v: Any) -> bool:
        return isinstance(v, dict) and "_target_" in v

    def allowed(self) -> str:
        return ""


@dataclass(frozen=True)
class Anything(Rule):
    def ok(self, v: Any) -> bool:
        return True

    def allowed(self) -> str:
        return "anything"


_ANY = Anything()
POSITIVE_INT = Number(integer=True, min=1)
FRACTION = Number(min=0.0, max=1.0, max_open=True)  # e.g. dropout: [0, 1)

# -- the rules: one entry per class (dotted path of its definition); subclasses inherit --------
# Allowed names come from the modules that define them (never copied here), so a new init,
# loss or attention is allowed as soon as the code has it.


_BATCHES = AnyOf(Number(integer=True, min=0), Number(min=0.0, max=1.0), Choice(None))
_PROBABILITY = Number(min=0.0, max=1.0)  # e.g. epsilon, teacher forcing: [0, 1]
_NONNEG_INT = Number(integer=True, min=0)
_OFF = ("none", "null", "")
_DISCOUNT_AND_EPSILON = {"gamma": _PROBABILITY, "epsilon_start": _PROBABILITY, "epsilon_end": _PROBABILITY}  # a string that switches an option off, as null does

RULES: dict[str, dict[str, Rule]] = {
    # data ------------------------------------------------------------------------------------
    "fodl.data.loader.MinibatchDataModule": {"steps_per_execution": POSITIVE_INT},
    "fodl.data.base.InMemoryDataModule": {
        "batch_size": POSITIVE_INT, "eval_batch_size": POSITIVE_INT,
        "seed": Number(integer=True, min=0, none=True), "on_device": Flag(), "drop_last": Flag(),
    },
    "fodl.data.mnist.MNISTDataModule": {
        "data_dir": Text(none=True, nonempty=True), "cache_dir": Text(none=True),
        "val_size": Number(integer=True, min=0, max=59999), "download": Flag(),
        "verify": Choice("content", "md5"), "standardize": Flag(),
        "shift": Number(integer=True, min=0, max=13),
    },
    "fodl.data.cifar.CIFAR10DataModule": {
        "data_dir": Text(none=True, nonempty=True), "cache_dir": Text(none=True),
        "val_size": Number(integer=True, min=0, max=49999), "download": Flag(),
        "crop": Number(integer=True, min=4, max=32), "augment": Flag(),
    },
    # classifier family: the LightningModules and their nets ----------------------------------
    "fodl.models.base.FodlModule": {
        "optimizer": Object(), "scheduler": AnyOf(Object(), Choice(None)),
        "scheduler_interval": Choice("epoch", "step"),
        "gradient_clip_val": Number(min=0.0, min_open=True, none=True), "cuda_graph": Flag(),
    },
    "fodl.models.classifier.ClassifierModule": {"num_classes": Number(integer=True, min=2),
                                                 "channels_last": Flag(), "compile": Flag(),
                                                 "label_smoothing": FRACTION},
    "fodl.nets.mlp.MLP": {
        "in_features": POSITIVE_INT, "hidden": Seq(POSITIVE_INT),
        "num_classes": Number(integer=True, min=2), "init": Choice(*_INITS),
        "output_activation": Choice(None, "none", "relu"), "dropout": FRACTION,
    },
    "fodl.nets.cnn.MNISTConvNet": {
        "in_channels": POSITIVE_INT, "num_classes": Number(integer=True, min=2),
        "dropout": FRACTION, "init": Choice(*_INITS), "output_activation": Choice(None, "none", "relu"),
    },
    "fodl.nets.cnn.CIFARConvNet": {
        "in_channels": POSITIVE_INT, "num_classes": Number(integer=True, min=2),
        "crop": Number(integer=True, min=4, max=32), "dropout": FRACTION, "batch_norm": Flag(),
        "init": Choice(*_INITS),
    },
    # chapter 8: the DNC, its LSTM baseline, the sequence module, copy task and bAbI -------------
    "fodl.nets.dnc.DNC": {
        "controller": Choice(*_CONTROLLERS), "hidden_size": POSITIVE_INT,
        "memory_size": POSITIVE_INT, "word_size": POSITIVE_INT, "read_heads": POSITIVE_INT,
        "clip": Number(min=0.0), "init": Choice(*_INITS), "compile": Flag(),
    },
    "fodl.nets.dnc.SequenceLSTM": {
        "hidden_size": POSITIVE_INT, "num_layers": POSITIVE_INT, "init": Choice(*_INITS),
        "embedding_size": Number(integer=True, min=0), "forget_bias": Number(none=True),
    },
    "fodl.models.memory.MemoryModule": {
        "net": Object(), "width": Number(integer=True, min=1, none=True),
        "vocab_size": Number(integer=True, min=6, none=True), "log_memory": Flag(),
    },
    "fodl.data.copy_task.CopyTaskDataModule": {
        "width": POSITIVE_INT, "min_length": POSITIVE_INT, "max_length": POSITIVE_INT,
        "min_repeats": POSITIVE_INT, "max_repeats": POSITIVE_INT, "batch_size": POSITIVE_INT,
        "batches_per_epoch": POSITIVE_INT, "eval_batch_size": POSITIVE_INT,
        "eval_batches": POSITIVE_INT, "val_lengths": Seq(POSITIVE_INT, 2, 2, none=True),
        "test_lengths": Seq(POSITIVE_INT, 2, 2, none=True), "seed": Number(integer=True, min=0, none=True),
    },
    "fodl.data.babi.BabiDataModule": {
        "tasks": AnyOf(Number(integer=True, min=1, max=20), Seq(Number(integer=True, min=1, max=20), 1)),
        "missing": Choice("error", "skip"), "val_fraction": FRACTION,
        "max_size": Number(integer=True, min=6), "bucket": Number(integer=True, min=0),
        "data_dir": Text(none=True, nonempty=True), "cache_dir": Text(none=True),
        "path": Text(nonempty=True), "url": Text(none=True), "md5": Text(none=True),
        "unit": Choice("word", "sentence"),
        "permute": Seq(Seq(Text(nonempty=True), 2), none=True),
    },
    # chapter 6: autoencoders, skip-gram and its corpus -----------------------------------------
    "fodl.nets.autoencoder.Autoencoder": {
        "in_features": POSITIVE_INT, "hidden": Seq(POSITIVE_INT), "code_size": POSITIVE_INT,
        "init": Choice(_AE_BOOK_INIT, *_INITS), "hidden_dropout": FRACTION,
    },
    "fodl.models.autoencoder.AutoencoderModule": {
        "noise_fraction": FRACTION, "eval_noise_fraction": Number(min=0.0, max=1.0, max_open=True, none=True),
        "loss": Choice(*_AE_LOSSES), "sparsity": Choice(*_SPARSITY, *_OFF),
        "sparsity_weight": Number(min=0.0),
        "sparsity_target": Number(min=0.0, max=1.0, min_open=True, max_open=True),
        "log_images": _NONNEG_INT, "projector_size": _NONNEG_INT,
    },
    "fodl.nets.skipgram.SkipGramNet": {
        "vocab_size": POSITIVE_INT, "embedding_dim": POSITIVE_INT, "init": Choice(*_SKIPGRAM_INITS),
    },
    "fodl.models.skipgram.SkipGramModule": {
        "loss": Choice(*_SKIPGRAM_LOSSES), "reduction": Choice("mean", "sum"),
        "negatives_per_pair": POSITIVE_INT, "neighbours": _NONNEG_INT,
        "neighbours_from": POSITIVE_INT, "top_k": POSITIVE_INT, "seed": _NONNEG_INT,
    },
    "fodl.data.corpus.CorpusDataModule": {
        "data_dir": Text(none=True, nonempty=True), "cache_dir": Text(none=True),
        "min_count": POSITIVE_INT, "max_size": Number(integer=True, min=1, none=True),
        "max_documents": Number(integer=True, min=1, none=True), "subsample": Number(min=0.0),
        "window": POSITIVE_INT, "num_skips": Number(integer=True, min=1, none=True),
        "batch_size": POSITIVE_INT, "block_size": POSITIVE_INT, "noise_samples": POSITIVE_INT,
        "noise_power": Number(min=0.0), "analogy_restrict": POSITIVE_INT,
        "eval_batch_size": POSITIVE_INT, "seed": Number(integer=True, min=0, none=True),
    },
    # chapter 7: the POS tagger, the sentiment LSTM, seq2seq and their data ----------------------
    "fodl.nets.tagger.WindowTaggerNet": {
        "vocab_size": POSITIVE_INT, "embedding_dim": POSITIVE_INT, "left": _NONNEG_INT,
        "right": _NONNEG_INT, "num_tags": Number(integer=True, min=2),
        "hidden": Seq(POSITIVE_INT, none=True), "suffix_lengths": Seq(POSITIVE_INT, none=True),
        "suffix_vocab_size": POSITIVE_INT, "suffix_dim": _NONNEG_INT, "shape_dim": _NONNEG_INT,
        "style": Choice("book", "modern"), "dropout": FRACTION, "word_dropout": FRACTION,
    },
    "fodl.data.conll.CoNLLDataModule": {
        "data_dir": Text(none=True, nonempty=True), "cache_dir": Text(none=True),
        "layout": Choice("pos", "official"), "verify": Choice("content", "md5"),
        "val_size": _NONNEG_INT, "split_seed": _NONNEG_INT, "left": _NONNEG_INT,
        "right": _NONNEG_INT, "suffix_lengths": Seq(POSITIVE_INT, none=True),
        "min_count": POSITIVE_INT, "max_words": POSITIVE_INT, "max_suffixes": POSITIVE_INT,
        "vectors_limit": Number(integer=True, min=1, none=True),
    },
    "fodl.nets.lstm.LSTMClassifierNet": {
        "vocab_size": POSITIVE_INT, "embedding_dim": POSITIVE_INT, "hidden_size": POSITIVE_INT,
        "num_layers": POSITIVE_INT, "dropout": FRACTION, "num_classes": Number(integer=True, min=2),
        "output": Choice("linear", "book"), "pooling": Choice(*_POOLINGS),
        "word_dropout": FRACTION, "bigram_buckets": _NONNEG_INT, "trigram_buckets": _NONNEG_INT,
        "ngram_dropout": FRACTION, "ngram_max_norm": Number(min=0.0, min_open=True, none=True),
    },
    "fodl.models.sentiment.TextClassifierModule": {
        "ngram_weight_decay": Number(min=0.0), "ngram_lr_scale": Number(min=0.0, min_open=True),
        "adversarial": Number(min=0.0),
    },
    "fodl.data.imdb.IMDBDataModule": {
        "data_dir": Text(none=True, nonempty=True), "cache_dir": Text(none=True),
        "tokenizer": Choice(*_TOKENIZERS), "max_len": POSITIVE_INT, "max_size": POSITIVE_INT,
        "min_count": POSITIVE_INT, "val_size": _NONNEG_INT, "split_seed": _NONNEG_INT,
        "bucket_batches": _NONNEG_INT, "val_split": Choice(*_VAL_SPLITS),
    },
    "fodl.nets.seq2seq.Seq2SeqNet": {
        "src_vocab_size": POSITIVE_INT, "tgt_vocab_size": POSITIVE_INT,
        "embedding_dim": POSITIVE_INT, "hidden_size": POSITIVE_INT,
        "decoder_hidden_size": Number(integer=True, min=1, none=True), "num_layers": POSITIVE_INT,
        "attention": Choice(*_ATTENTIONS), "attention_dim": Number(integer=True, min=1, none=True),
        "dropout": FRACTION, "teacher_forcing": _PROBABILITY,
    },
    "fodl.models.seq2seq.Seq2SeqModule": {
        "label_smoothing": FRACTION, "decode": Choice("greedy", "beam"), "beam_size": POSITIVE_INT,
        "length_penalty": Number(min=0.0), "max_decode_len": POSITIVE_INT, "samples": _NONNEG_INT,
    },
    "fodl.data.parallel.ParallelTextDataModule": {
        "data_dir": Text(none=True, nonempty=True), "cache_dir": Text(none=True),
        "corpus": Choice("multi30k", "files"), "src": Text(nonempty=True), "tgt": Text(nonempty=True),
        "min_count": POSITIVE_INT, "src_max_size": Number(integer=True, min=5, none=True),
        "tgt_max_size": Number(integer=True, min=5, none=True), "max_len": Number(integer=True, min=2),
        "val_size": _NONNEG_INT, "split_seed": _NONNEG_INT, "bucket_batches": _NONNEG_INT,
    },
    # chapter 9: the agents, their nets and environments' data ----------------------------------
    "fodl.nets.rl.ActionMLP": {"hidden": Seq(POSITIVE_INT), "init": Choice(*_INITS),
                               "num_actions": POSITIVE_INT},
    "fodl.nets.rl.NatureCNN": {"hidden": POSITIVE_INT, "padding": Choice("valid", "same"),
                               "init": Choice(*_INITS), "num_actions": POSITIVE_INT},
    "fodl.models.rl.AgentModule": {
        "log_every_env_steps": POSITIVE_INT, "torch_threads": Number(integer=True, min=1, none=True),
        "fused_optimizer": Flag(),
    },
    "fodl.models.dqn.DQNModule": {
        **_DISCOUNT_AND_EPSILON, "target_update_interval": POSITIVE_INT, "tau": Number(min=0.0, max=1.0, min_open=True),
        "loss": Choice("huber", "mse"), "huber_delta": Number(min=0.0, min_open=True),
        "epsilon_decay_steps": _NONNEG_INT, "eval_epsilon": _PROBABILITY,
        # one H200 run trained with them (1.3x the env steps/s), but the graphed loss has not
        # been checked against the eager one on a GPU since the static-input fix
        "cuda_graph": AnyOf(Choice(False), text=(
            "false: CUDA graphs of the DQN update are not supported yet (a graphed Pong run "
            "trained faster on an H200, but no GPU check has yet shown that the graphed loss "
            "equals the eager one; docs/ch09_rl.md). Remove model.cuda_graph=true")),
    },
    "fodl.models.policy_gradient.PolicyGradientModule": {
        **_DISCOUNT_AND_EPSILON, "baseline": Choice(None, "none", "value"), "value_coef": Number(min=0.0),
        "entropy_coef": Number(min=0.0), "exploration": Choice("sample", "epsilon_greedy"),
        "epsilon_decay_episodes": _NONNEG_INT, "eval_mode": Choice("greedy", "sample"),
    },
    "fodl.data.rl._EnvDataModule": {
        "num_envs": POSITIVE_INT, "vectorization": Choice(*_VECTORIZATIONS),
        "eval_episodes": POSITIVE_INT, "test_episodes": Number(integer=True, min=1, none=True),
        "eval_num_envs": Number(integer=True, min=1, none=True),
        "seed": Number(integer=True, min=0, none=True),
    },
    "fodl.data.rl.ReplayDataModule": {
        "buffer_size": POSITIVE_INT, "batch_size": POSITIVE_INT, "learning_starts": _NONNEG_INT,
        "train_freq": POSITIVE_INT, "gradient_steps": POSITIVE_INT, "steps_per_epoch": POSITIVE_INT,
        "on_device": Flag(), "overlap": Flag(), "n_step": POSITIVE_INT,
    },
    "fodl.data.rl.EpisodeDataModule": {"episodes_per_batch": POSITIVE_INT,
                                       "batches_per_epoch": POSITIVE_INT},
    # optimizers and schedules (every torch optimizer / scheduler) ------------------------------
    "torch.optim.optimizer.Optimizer": {
        "lr": Number(min=0.0, min_open=True), "momentum": Number(min=0.0),
        "dampening": Number(min=0.0), "weight_decay": Number(min=0.0),
        "eps": Number(min=0.0), "alpha": Number(min=0.0), "lr_decay": Number(min=0.0),
        "initial_accumulator_value": Number(min=0.0), "nesterov": Flag(), "centered": Flag(),
        "amsgrad": Flag(), "betas": Seq(Number(min=0.0, max=1.0, max_open=True), 2, 2),
    },
    "torch.optim.lr_scheduler.LRScheduler": {
        "step_size": POSITIVE_INT, "gamma": Number(min=0.0, min_open=True),
        "T_max": POSITIVE_INT, "eta_min": Number(min=0.0), "last_epoch": Number(integer=True, min=-1),
        "milestones": Seq(POSITIVE_INT, 1),
    },
    # the trainer --------------------------------------------------------------------------------
    "lightning.pytorch.trainer.trainer.Trainer": {
        "max_epochs": Number(integer=True, min=1, also=(-1,), none=True),
        "min_epochs": Number(integer=True, min=0, none=True),
        "max_steps": Number(integer=True, min=1, also=(-1,)),
        "devices": AnyOf(Number(integer=True, min=1, also=(-1,)), Seq(Number(integer=True, min=0), 1),
                         Pattern(r"auto|-1|\d+|\d+(,\d*)+"),
                         text="a number of devices >= 1 (-1: all), a non-empty list of device "
                              "indices, or a string such as 'auto' or '0,1'"),
        "num_nodes": POSITIVE_INT,
        "accelerator": AnyOf(Choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"), Object()),
        "log_every_n_steps": Number(integer=True, min=1, none=True),
        "check_val_every_n_epoch": Number(integer=True, min=1, none=True),
        "num_sanity_val_steps": Number(integer=True, min=0, also=(-1,), none=True),
        "limit_train_batches": _BATCHES, "limit_val_batches": _BATCHES,
        "limit_test_batches": _BATCHES, "limit_predict_batches": _BATCHES,
        "overfit_batches": AnyOf(Number(integer=True, min=0), Number(min=0.0, max=1.0)),
        "fast_dev_run": AnyOf(Flag(), Number(integer=True, min=0)),
        "accumulate_grad_batches": POSITIVE_INT,
        "gradient_clip_val": Number(min=0.0, none=True),
        "val_check_interval": AnyOf(Number(integer=True, min=1), Number(min=0.0, max=1.0, min_open=True),
                                    Choice(None)),
    },
    # callbacks and loggers ---------------------------------------------------------------------
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint": {
        "mode": Choice("min", "max"), "save_top_k": Number(integer=True, min=0, also=(-1,)),
        "every_n_epochs": Number(integer=True, min=0, none=True),
    },
    "fodl.callbacks.RichProgressBar": {"redraws_per_second": Number(min=0.0, min_open=True)},
    "fodl.progress.progress_bar": {"redraws_per_second": Number(min=0.0, min_open=True),
                                   "refresh_rate": Number(integer=True, min=0, none=True)},
    "fodl.callbacks.ParameterSummaries": {"every_n_epochs": POSITIVE_INT, "filters": Flag()},
    "fodl.callbacks.EMAWeightAveraging": {
        "decay": Number(min=0.0, max=1.0, min_open=True, max_open=True),
        "update_every_n_steps": POSITIVE_INT, "update_starting_at_step": Number(integer=True, min=0, none=True),
        "update_starting_at_epoch": Number(integer=True, min=0, none=True), "use_buffers": Flag(),
    },
}

# top-level keys of conf/train.yaml and conf/eval.yaml
ROOT_RULES: dict[str, Rule] = {
    "seed": Number(integer=True, min=0, max=2**32 - 1, none=True),
    "test": Flag(),
    "ckpt_path": Text(none=True, nonempty=True),
    "monitor": Text(nonempty=True),
    "monitor_mode": Choice("min", "max"),
    "optimized_metric": Text(none=True),
    "split": Choice("test", "val"),
}

# -- type hints -> rules ---------------------------------------------------------------------


def rule_from_hint(hint: Any) -> Rule:
    """The check implied by a parameter's type hint (anything unknown passes)."""
    if hint is None or hint is Any or hint is inspect.Parameter.empty:
        return _ANY
    if hint is type(None):
        return Choice(None)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        rules = [rule_from_hint(a) for a in args]
        return _ANY if any(r is _ANY for r in rules) else AnyOf(*rules)
    if origin is typing.Literal:
        return Choice(*args)
    if hint is bool:
        return Flag()
    if hint is int:
        return Number(integer=True)
    if hint is float:
        return Number()
    if hint is str:
        return Text()
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return Text()
    if origin in (list, tuple, Sequence, Iterable, set, frozenset):
        if origin is tuple and args and args[-1] is not Ellipsis:
            item = AnyOf(*(rule_from_hint(a) for a in args))
            item = _ANY if any(r is _ANY for r in item.rules) else item
            return Seq(None if item is _ANY else item, len(args), len(args))
        item = rule_from_hint(args[0]) if args else _ANY
        return Seq(None if item is _ANY else item)
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        return _Dict()
    if hint is typing.Callable or hint is Callable or origin is Callable:
        return Object()
    if inspect.isclass(hint):
        return Object()
    return _ANY


@dataclass(frozen=True)
class _Dict(Rule):
    def ok(self, v: Any) -> bool:
        return isinstance(v, dict)

    def allowed(self) -> str:
        return "a mapping (key: value)"


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a hint that does not resolve: check that class without types
        return {}


def signature_of(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """``(parameters, type hints, takes any keyword)`` of what ``instantiate`` calls: a class's
    ``__init__``, following ``**kwargs`` up the class hierarchy, or a function."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    fns = ([c.__dict__["__init__"] for c in target.__mro__ if c is not object and "__init__" in c.__dict__]
           if inspect.isclass(target) else [target])
    for fn in fns:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin: nothing to check
            return params, hints, True
        fn_hints = _hints(fn)
        more = False
        for i, (name, p) in enumerate(sig.parameters.items()):
            if inspect.isclass(target) and i == 0:
                continue  # self
            if p.kind is p.VAR_KEYWORD:
                more = True
            elif p.kind is not p.VAR_POSITIONAL and name not in params:
                if params and p.default is p.empty:  # a base class's required argument is
                    p = p.replace(default=None)      # the subclass's to pass, not the config's
                params[name] = p
                if name in fn_hints:
                    hints[name] = fn_hints[name]
        if not more:
            return params, hints, False
    return params, hints, True


def rules_of(target: Any) -> dict[str, Rule]:
    """The explicit rules for ``target``: its own entry in RULES and its base classes'."""
    classes = reversed(target.__mro__) if inspect.isclass(target) else [target]
    out: dict[str, Rule] = {}
    for c in classes:
        out.update(RULES.get(f"{c.__module__}.{c.__qualname__}", {}))
    return out


# -- checking a config -----------------------------------------------------------------------


def _show(v: Any, quote: bool = True) -> str:
    """A value as it is written in an override (strings quoted when ``quote``)."""
    if isinstance(v, str):
        return repr(v) if quote else v
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x, quote) for x in v) + "]"
    return str(v)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return "null" if v is None else type(v).__name__


class _Checker:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.errors: list[tuple[str, str]] = []  # (key, message)
        self.interpolations: dict[str, str] = {}
        self._find_interpolations(cfg, "")

    def _find_interpolations(self, node: Any, path: str) -> None:
        if isinstance(node, DictConfig):
            items = [(str(k), k) for k in node.keys()]
        elif isinstance(node, ListConfig):
            items = [(str(i), i) for i in range(len(node))]
        else:
            return
        raw = None  # the unresolved values, read once a container holds an interpolation
        for name, k in items:
            full = f"{path}.{name}" if path else name
            if OmegaConf.is_interpolation(node, k):
                if raw is None:
                    raw = OmegaConf.to_container(node, resolve=False, throw_on_missing=False)
                self.interpolations[full] = str(raw[k])
            elif not OmegaConf.is_missing(node, k):
                self._find_interpolations(node[k], full)

    def bad(self, key: str, value: Any, rule: Rule, example: Any = inspect.Parameter.empty,
            what: str = "") -> None:
        via = f" (set through {self.interpolations[key]})" if key in self.interpolations else ""
        msg = f"{key}={_show(value)}{via} is {_kind(value)}"
        allowed = rule.allowed()
        msg += f"; allowed: {allowed}" if allowed else " and cannot be used here"
        if what:
            msg += f" ({what})"
        if example is not inspect.Parameter.empty and rule.ok(example) and example is not None:
            msg += f", e.g. {key}={_show(example, quote=False)}"
        self.errors.append((key, msg))

    def error(self, key: str, msg: str) -> None:
        self.errors.append((key, msg))

    def messages(self) -> list[str]:
        """The errors, less those of a value copied from a key already reported (data.seed
        is ${seed}: only seed is named)."""
        keys = {k for k, _ in self.errors}
        return [m for k, m in self.errors
                if self.interpolations.get(k, "").removeprefix("${").removesuffix("}") not in keys]

    def root(self, resolved: dict[str, Any]) -> None:
        for key, rule in ROOT_RULES.items():
            if key in resolved and not rule.ok(resolved[key]):
                self.bad(key, resolved[key], rule)

    def machine(self, resolved: dict[str, Any]) -> None:
        """An accelerator this machine does not have (Lightning would stop deep inside its
        Trainer), or more GPUs than it has."""
        trainer = resolved.get("trainer")
        if not isinstance(trainer, dict):
            return
        import torch

        acc, devices = trainer.get("accelerator"), trainer.get("devices")
        have = {"gpu": torch.cuda.device_count(), "cuda": torch.cuda.device_count(),
                "mps": int(torch.backends.mps.is_available())}.get(acc)
        if have == 0:
            self.error("trainer.accelerator", f"trainer.accelerator={acc} but this machine has no "
                       f"{'CUDA GPU' if acc != 'mps' else 'Apple MPS device'} that PyTorch can use; "
                       "use trainer.accelerator=cpu (or auto, which takes what there is)")
        elif have and isinstance(devices, int) and not isinstance(devices, bool) and devices > have:
            self.error("trainer.devices", f"trainer.devices={devices} but this machine has {have} "
                       f"{acc} device{'s' if have > 1 else ''}; give at most {have} (or -1: all)")

    def walk(self, node: Any, path: str) -> None:
        if isinstance(node, dict):
            if path and path in self.interpolations:
                return  # e.g. model.optimizer: ${optimizer}, checked where it is defined
            if "_target_" in node:
                self.target(node, path)
            for k, v in node.items():
                if isinstance(v, (dict, list)) and not str(k).startswith("_"):
                    self.walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, dict):
                    self.walk(v, f"{path}.{i}")

    def target(self, node: dict[str, Any], path: str) -> None:
        from hydra._internal.utils import _locate  # what instantiate uses, without its logging

        name = node["_target_"]
        if not isinstance(name, str) or not name.strip():
            self.error(f"{path}._target_", f"{path}._target_={_show(name)} is {_kind(name)}; allowed: "
                       "the dotted path of a class or function, e.g. torch.optim.SGD")
            return
        try:
            target = _locate(name)
        except Exception as e:  # ImportError, AttributeError ... as Hydra reports them
            reason = " ".join(str(e).split()) or type(e).__name__
            self.error(f"{path}._target_", f"{path}._target_={name!r} cannot be imported ({reason}); "
                       "allowed: the dotted path of a class or function")
            return
        if not callable(target):
            self.error(f"{path}._target_", f"{path}._target_={name!r} is not a class or function")
            return
        params, hints, any_keyword = signature_of(target)
        rules = rules_of(target)
        short = name.rsplit(".", 1)[-1]
        for key, value in node.items():
            key = str(key)
            if key.startswith("_"):
                continue
            full = f"{path}.{key}"
            if key not in params:
                if not any_keyword:
                    known = ", ".join(params) or "none"
                    self.error(full, f"{full} is not a setting of {name} (its settings: {known}); "
                               "remove it or fix its spelling")
                continue
            if isinstance(value, dict) and ("_target_" in value or full in self.interpolations):
                continue  # an object built from its own node (or ${optimizer}): checked there
            rule = rules.get(key) or rule_from_hint(hints.get(key))
            if not rule.ok(value):
                self.bad(full, value, rule, params[key].default, f"{short}'s {key}")
        if not node.get("_partial_", False):
            missing = [k for k, p in params.items() if p.default is p.empty and k not in node
                       and p.kind is not p.VAR_POSITIONAL]
            for k in missing:
                self.error(f"{path}.{k}", f"{path}.{k} is missing: {name} needs it (add "
                           f"+{path}.{k}=<value>)")


def check_config(cfg: DictConfig, machine: bool = True) -> None:
    """Raise a :class:`FodlError` naming every bad value of a composed run config (see the
    module docstring); return None when all is well. Nothing is built. ``machine``: also
    check the trainer's accelerator and devices against this machine (off: whether the config
    is valid anywhere, e.g. a GPU config checked on a CPU machine)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "the config"
        reason = str(e).splitlines()[0]
        raise FodlError(f"Invalid configuration: {key} cannot be resolved ({reason}). Give it a "
                        f"value on the command line ({key}=<value>) or fix the interpolation in "
                        "the YAML that sets it.") from None
    checker = _Checker(cfg)
    checker.root(resolved)
    checker.walk(resolved, "")
    if machine:
        checker.machine(resolved)
    errors = checker.messages()
    if errors:
        n = len(errors)
        raise FodlError(
            f"Invalid configuration ({n} value{'s' if n > 1 else ''}, nothing was run): "
            + "; ".join(errors)
            + ". Fix it on the command line (key=value) or in the YAML file that sets it; "
              "`python scripts/train.py --help` lists the groups and options, and "
              "`python scripts/train.py --cfg job` prints the composed config.")
