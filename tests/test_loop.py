"""The shared training loop (fodl.models.base.FodlModule): what a family inherits, and that
grouped minibatches (data.steps_per_execution) are invisible to the user."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import train_cfg
from fodl.callbacks import RichProgressBar
from fodl.checkpoint import read_checkpoint
from fodl.data.loader import StepGroup, TensorLoader
from fodl.models import ClassifierModule
from fodl.models.base import FodlModule
from fodl.nets.init import init_layer, init_weights
from fodl.train import run_entry, train


class _Regression(FodlModule):
    """A family that is not a classifier: only its loss and one validation metric."""

    def __init__(self):
        super().__init__(optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
        self.net = nn.Linear(3, 1)

    def training_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.run_net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/mse", F.mse_loss(self.net(x), y))


def _trainer(**kw):
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", **kw)


def test_a_family_defines_only_its_loss_and_trains_through_the_base():
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    module = _Regression()
    loader = TensorLoader((x, y), 32, shuffle=True)
    trainer = _trainer(max_epochs=20)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=TensorLoader((x, y), 256))
    assert trainer.global_step == 20 * 8
    assert trainer.callback_metrics["val/mse"] < 1e-3
    assert trainer.callback_metrics["train/loss"] < 1e-2


def test_a_plain_list_batch_from_default_collate_is_one_minibatch():
    """A standard DataLoader yields [x, y] lists; only a StepGroup is a group of minibatches."""
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    assert type(next(iter(loader))) is list
    module = _Regression()
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 4


def test_loader_groups_are_step_groups():
    y = torch.arange(50)
    items = list(TensorLoader((y,), 10, steps_per_execution=2))
    assert [type(i) for i in items] == [StepGroup] * 3 and [len(i) for i in items] == [2, 2, 1]
    assert [type(b) for b in TensorLoader((y,), 10)] == [tuple] * 5


def _tb(run_dir):
    return EventAccumulator(str(run_dir / "tensorboard")).Reload()


def test_grouping_is_invisible_steps_limits_and_tensorboard_count_minibatches(tmp_path, tiny_mnist):
    """1000 training images in batches of 32: 32 minibatches an epoch. With groups of 4, the
    limit, the validation interval and TensorBoard's step axis still count minibatches."""
    common = ("model=mnist_mlp", "test=false", "data.batch_size=32", "trainer.max_epochs=2",
              "+trainer.limit_train_batches=12", "trainer.log_every_n_steps=4",
              "callbacks.parameter_summaries.every_n_epochs=100")
    one = train(train_cfg(tmp_path, tiny_mnist, *common, "data.steps_per_execution=1", run="one"))
    grouped = train(train_cfg(tmp_path, tiny_mnist, *common, "data.steps_per_execution=4", run="g"))
    a = read_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "g" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * 12
    assert grouped["train/loss"] == pytest.approx(one["train/loss"], rel=1e-5)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k])
    steps_one = [e.step for e in _tb(tmp_path / "one").Scalars("train/loss_step")]
    steps_g = [e.step for e in _tb(tmp_path / "g").Scalars("train/loss_step")]
    assert steps_g == steps_one and max(steps_g) >= 20  # optimizer steps, not groups
    val_one = [e.step for e in _tb(tmp_path / "one").Scalars("val/loss")]
    assert [e.step for e in _tb(tmp_path / "g").Scalars("val/loss")] == val_one


def test_grouped_val_check_interval_counts_minibatches(tmp_path, tiny_mnist):
    common = ("model=mnist_mlp", "test=false", "data.batch_size=32", "trainer.max_epochs=1",
              "+trainer.val_check_interval=8", "callbacks.parameter_summaries.every_n_epochs=100")
    train(train_cfg(tmp_path, tiny_mnist, *common, "data.steps_per_execution=4", run="g"))
    assert len(_tb(tmp_path / "g").Scalars("val/loss")) == 4  # after minibatches 8, 16, 24, 32


def test_grouping_happens_only_where_nothing_can_tell(tmp_path):
    """A step limit, a profiler, a callback that acts per batch or a checkpointer that saves
    within an epoch would see a group as one batch: they get one minibatch per Lightning step.
    Progress bars and per-epoch checkpointers do not stop grouping; an int validation interval
    cuts the group to a divisor of it."""
    from datetime import timedelta

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from fodl.callbacks import StopAtTrainLoss
    from fodl.data.loader import invisible_grouping

    def k(**kw):
        return invisible_grouping(L.Trainer(logger=False, accelerator="cpu", **kw), 4,
                                  kw.get("val_check_interval"))

    quiet = [RichProgressBar(), ModelCheckpoint(dirpath=tmp_path)]
    assert k(callbacks=quiet) == 4 and k(val_check_interval=0.5) == 4
    assert k(val_check_interval=6) == 2 and k(val_check_interval=7) == 1
    assert k(max_steps=100) == 1 and k(profiler="simple") == 1
    for per_batch in (StopAtTrainLoss(0.1), LearningRateMonitor(),
                      ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5),
                      ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(minutes=5))):
        assert k(callbacks=[*quiet, per_batch]) == 1, per_batch


def test_a_per_batch_callback_sees_every_minibatch_of_a_grouped_config(tmp_path, tiny_mnist):
    from fodl.train import build

    class Seen(L.Callback):
        def __init__(self):
            self.batches = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.batches.append(type(batch))

    cfg = train_cfg(tmp_path, tiny_mnist, "model=logreg", "test=false", "data.batch_size=100",
                    "trainer.max_epochs=1", "data.steps_per_execution=4", "logger=none")
    datamodule, module, trainer = build(cfg)
    seen = Seen()
    trainer.callbacks.append(seen)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 10 and seen.batches == [tuple] * 10  # 1000 images, no groups


def test_progress_bar_counts_minibatches_of_groups(monkeypatch):
    drawn = []
    monkeypatch.setattr(L.pytorch.callbacks.RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, module, out, batch, i: drawn.append(i))
    loader = TensorLoader((torch.arange(100),), 10, steps_per_execution=4)  # 10 minibatches, 3 groups

    class T:
        num_training_batches = 3
        train_dataloader = loader

    bar = RichProgressBar()
    bar._trainer = T()
    assert bar.total_train_batches == 10
    for i in range(3):
        bar._next_draw = 0.0
        bar.on_train_batch_end(T(), None, None, None, i)
    assert drawn == [3, 7, 9]  # minibatches done: 4, 8, 10


def test_monitor_is_part_of_the_model_config(tmp_path, tiny_mnist):
    """A family that minimises a loss picks its best checkpoint by that loss."""
    train(train_cfg(tmp_path, tiny_mnist, "model=logreg", "trainer.max_epochs=2", "test=false",
                    "monitor=val/loss", "monitor_mode=min"))
    (best,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    state = read_checkpoint(best)
    cb = next(v for k, v in state["callbacks"].items() if "'monitor': 'val/loss'" in k)
    assert cb["best_model_score"] == min(cb["best_k_models"].values())
    assert f"best{float(cb['best_model_score']):.4f}" in best.name


def test_misspelled_optimized_metric_is_an_error_not_none(tmp_path, tiny_mnist):
    cfg = train_cfg(tmp_path, tiny_mnist, "model=logreg", "trainer.max_epochs=1", "test=false",
                    "optimized_metric=val/acuracy")
    with pytest.raises(SystemExit) as e:
        run_entry(train, cfg)
    assert e.value.code == 2
    cfg = train_cfg(tmp_path, tiny_mnist, "model=logreg", "trainer.max_epochs=1", "test=false", run="ok")
    assert 0 <= run_entry(train, cfg) <= 1


def test_init_covers_embeddings_and_lstms():
    torch.manual_seed(0)
    emb = nn.Embedding(1000, 64)
    init_layer(emb, "uniform")
    assert emb.weight.abs().max() <= 1 / 64 ** 0.5 and emb.weight.std() > 0.05
    lstm = nn.LSTM(32, 128)
    init_weights(nn.Sequential(lstm), "he_normal")
    assert abs(lstm.weight_hh_l0.std().item() - (2 / 128) ** 0.5) < 0.01
    assert abs(lstm.weight_ih_l0.std().item() - (2 / 32) ** 0.5) < 0.01
    assert torch.all(lstm.bias_ih_l0 == 0) and torch.all(lstm.bias_hh_l0 == 0)
    bn = nn.BatchNorm1d(4)
    init_weights(nn.Sequential(nn.Linear(3, 4), bn), "zeros")
    assert torch.all(bn.weight == 1)  # normalisation layers keep their defaults


def test_classifier_is_one_family_of_the_base():
    m = ClassifierModule(nn.Linear(4, 3), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    assert isinstance(m, FodlModule) and "training_step" not in ClassifierModule.__dict__


class _CountsBackward(L.Callback):
    def __init__(self):
        self.calls = 0

    def on_after_backward(self, trainer, pl_module):
        self.calls += 1


def test_direct_steps_skip_only_empty_hooks_and_train_identically():
    """Without step hooks to call, each minibatch runs loss.backward() and optimizer.step()
    directly (Lightning's dispatch costs ~10% of a small step); a callback that defines
    on_after_backward switches back to Lightning's path and is called for every minibatch
    of the groups. Both paths (gradient clipping included) reach the same weights and the
    same global_step."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g), torch.randn(64, 1, generator=g)
    weights, steps = [], []
    for callbacks in ([], [_CountsBackward()]):
        torch.manual_seed(0)
        module = _Regression()
        module.gradient_clip_val = 0.05  # clipping takes the same two paths
        trainer = _trainer(max_epochs=2, callbacks=callbacks, num_sanity_val_steps=0,
                           limit_val_batches=0)
        trainer.fit(module, train_dataloaders=TensorLoader((x, y), batch_size=8, shuffle=True,
                                                           steps_per_execution=4))
        assert module._direct is (not callbacks)
        weights.append({k: v.clone() for k, v in module.state_dict().items()})
        steps.append(trainer.global_step)
    assert callbacks[0].calls == 2 * 8
    assert steps == [16, 16]
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=0)


class _GradNorms(L.Callback):
    """The total gradient norm each optimizer step takes (after the loop's clipping)."""

    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.seen.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))


def test_trainer_clipping_and_accumulation_are_the_loops(tmp_path, tiny_mnist):
    """`+trainer.gradient_clip_val` / `+trainer.accumulate_grad_batches` (which Lightning
    refuses under manual optimisation) become the loop's: every step's gradient norm is
    clipped to 0.5 (unclipped they are larger), and 6 minibatches make 3 optimizer steps."""
    from fodl.train import build

    common = ("model=mnist_mlp", "trainer.max_epochs=1", "+trainer.limit_train_batches=6",
              "test=false", "data.steps_per_execution=1", "optimizer.lr=0.5")
    seen = {}
    for run, extra in (("plain", ()), ("clipped", ("+trainer.gradient_clip_val=0.5",
                                                    "+trainer.accumulate_grad_batches=2"))):
        dm, model, trainer = build(train_cfg(tmp_path, tiny_mnist, *common, *extra, run=run))
        norms = _GradNorms()
        trainer.callbacks.append(norms)
        trainer.fit(model, datamodule=dm)
        seen[run] = (norms.seen, trainer.global_step, model, trainer)
    plain, clipped = seen["plain"], seen["clipped"]
    assert plain[1] == 6 and max(plain[0]) > 0.5
    norms, steps, model, trainer = clipped
    assert steps == 3 and len(norms) == 3 and max(norms) <= 0.5 + 1e-5
    assert model.gradient_clip_val == 0.5 and model.accumulate_grad_batches == 2
    assert trainer.gradient_clip_val is None and trainer.accumulate_grad_batches == 1


def test_accumulation_steps_every_k_minibatches_on_their_mean_gradient():
    """Two minibatches of 8 accumulated = one of 16 (mean losses, plain SGD); an epoch's odd
    last minibatch still steps (9 minibatches: 5 steps)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(72, 3, generator=g), torch.randn(72, 1, generator=g)
    weights, steps = [], []
    for batch_size, k, n in ((8, 2, 64), (16, 1, 64), (8, 2, 72)):
        torch.manual_seed(0)
        module = _Regression()
        module.use_trainer_settings(accumulate_grad_batches=k)
        trainer = _trainer(max_epochs=1, num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(module, train_dataloaders=TensorLoader((x[:n], y[:n]), batch_size))
        weights.append(module.net.weight.detach().clone())
        steps.append(trainer.global_step)
    assert steps == [4, 4, 5]
    torch.testing.assert_close(weights[0], weights[1])


def test_trainer_and_model_clipping_that_disagree_are_refused(tmp_path, tiny_mnist):
    from fodl.errors import FodlError
    from fodl.train import build

    cfg = train_cfg(tmp_path, tiny_mnist, "model=mnist_mlp", "+trainer.gradient_clip_val=0.5",
                    "+model.gradient_clip_val=1.0")
    with pytest.raises(FodlError, match="trainer.gradient_clip_val=0.5 and model.gradient_clip_val"):
        build(cfg)
