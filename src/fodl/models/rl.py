"""What the chapter 9 agents share: the acting interface, sizing nets from the environment,
and the logging of episodes, evaluation and throughput.

A family subclasses :class:`AgentModule` and defines ``act`` (how it chooses actions, for
training and for evaluation) and ``training_loss`` (one minibatch of the shared loop in
:class:`~fodl.models.base.FodlModule`). The environment side lives in :mod:`fodl.data.rl`.

Logged (TensorBoard / CSV):

- ``rollout/*``, against environment steps (TensorBoard's step axis for these tags):
  ``rollout/return`` and ``rollout/length`` of every finished training episode (the raw game
  score on Atari, before reward clipping); every ``log_every_env_steps`` environment steps
  ``rollout/return_mean100`` (last 100 episodes), ``rollout/sps`` (environment steps per second
  of training, evaluation excluded), ``rollout/loss`` (last minibatch) and the family's own
  (DQN: ``rollout/epsilon``, ``rollout/q_mean``, and of the greedy actions taken while
  training ``rollout/greedy_top_action_share``, the share of the most frequent one, and
  ``rollout/greedy_q_gap``, the best minus the mean Q-value; policy gradient:
  ``rollout/entropy``);
- per epoch (on the trainer's step axis, and in ``metrics.json``): ``train/loss``,
  ``train/return`` (mean of the epoch's episodes), ``train/return_last20`` (mean of the last 20
  training episodes, the metric of the fast Pong recipe), ``env/steps``, ``env/sps``,
  ``env/episodes``;
- ``val/return``, ``val/length`` (evaluation episodes after every epoch; ``val/return`` is the
  ``monitor`` that picks the best checkpoint) and ``test/return``, ``test/length``.
"""

from __future__ import annotations

import functools
import inspect
from collections import deque
from typing import Any, Callable

import torch
from torch import nn

from fodl.data.loader import minibatches_of
from fodl.models.base import FodlModule


def build_net(net: nn.Module | Callable[..., nn.Module], env: Any, **extra: Any) -> nn.Module:
    """``net`` itself, or ``net(obs_shape=..., num_actions=...)`` sized for ``env`` when the
    config gives it as a partial (``_partial_: true``)."""
    if isinstance(net, nn.Module):
        return net
    from fodl.rl.envs import env_spaces

    obs_shape, num_actions = env_spaces(env)
    return net(obs_shape=obs_shape, **{"num_actions": num_actions, **extra})


class AgentModule(FodlModule):
    """Base of the RL families (see the module docstring).

    ``log_every_env_steps``: how often the training scalars are written, in environment steps.
    ``fused_optimizer``: build the optimizer with PyTorch's fused kernel (``fused=True``) when
    it has one (Adam, AdamW, SGD, Adagrad): the same update in one kernel instead of a few per
    parameter tensor; the optimizer step of the CartPole MLP measured ~3x faster on the CPU.
    ``torch_threads``: intra-op threads while fitting/testing on the CPU (restored after; null:
    leave PyTorch's setting). The agents' nets are tiny and run one small batch at a time, so
    1 thread is fastest for the MLPs: with 2, every operator pays a thread hand-off, and on a
    busy 2-core machine a step of the CartPole MLP measured 10-20x slower than with 1.
    """

    def __init__(self, optimizer=None, scheduler=None, scheduler_interval: str = "epoch",
                 gradient_clip_val: float | None = None, log_every_env_steps: int = 1000,
                 torch_threads: int | None = None, fused_optimizer: bool = False,
                 cuda_graph: bool = False) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val, cuda_graph)
        self.log_every_env_steps = max(int(log_every_env_steps), 1)
        self.fused_optimizer = fused_optimizer
        self.torch_threads = torch_threads
        self._saved_threads: int | None = None
        self.env_steps = 0                 # as of the current batch (from the data side)
        self._next_log = 0
        self._recent: deque[float] = deque(maxlen=100)
        self._epoch_returns: list[float] = []
        self._epoch_episodes = 0
        self._sps = 0.0

    # -- what a family defines --------------------------------------------------------------
    def act(self, obs: torch.Tensor, generator: torch.Generator, *, explore: bool,
            env_steps: int, episodes: int) -> torch.Tensor:
        """Actions (a CPU LongTensor, one per row of ``obs``): ``explore=True`` while training,
        ``False`` for evaluation episodes. Random draws come from ``generator``."""
        raise NotImplementedError

    def before_update(self, env_steps: int) -> None:
        """Called before the optimizer steps of each batch, with the environment steps taken."""

    def prepare_batch(self, batch) -> None:
        """Called after :meth:`before_update` with the batch (or group of minibatches) about to
        be trained on; may add precomputed entries to its minibatches."""

    def train_scalars(self) -> dict[str, float]:
        """Family-specific training scalars to write now, without the ``rollout/`` prefix
        (e.g. ``{"epsilon": ..., "q_mean": ...}``)."""
        return {}

    # -- optimizer and threads -------------------------------------------------------------
    def configure_optimizers(self):
        factory = self.optimizer_factory
        func = getattr(factory, "func", factory)
        if (self.fused_optimizer and factory is not None and "fused" not in getattr(factory, "keywords", {})
                and "fused" in inspect.signature(func).parameters):
            self.optimizer_factory = functools.partial(factory, fused=True)
            try:
                return super().configure_optimizers()
            finally:
                self.optimizer_factory = factory
        return super().configure_optimizers()

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        if self.torch_threads and device.type == "cpu" and self._saved_threads is None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(self.torch_threads))

    def teardown(self, stage: str) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    # -- logging ----------------------------------------------------------------------------
    @staticmethod
    def rollout(batch) -> dict[str, Any]:
        first = minibatches_of(batch)[0]
        return first.get("rollout") or {} if isinstance(first, dict) else {}

    def _write(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step=step)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        info = self.rollout(batch)
        if info:
            self.env_steps = int(info["env_steps"])
            self._sps = float(info.get("sps", 0.0))
        self.before_update(self.env_steps)
        self.prepare_batch(batch)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        info = self.rollout(batch)
        for ret, length in info.get("episodes", ()):
            self._recent.append(ret)
            self._epoch_returns.append(ret)
            self._epoch_episodes += 1
            self._write({"rollout/return": ret, "rollout/length": float(length)}, self.env_steps)
        if self.env_steps >= self._next_log:
            self._next_log = self.env_steps + self.log_every_env_steps
            scalars = {"sps": self._sps, "loss": float(outputs["loss"]), **self.train_scalars()}
            if self._recent:
                scalars["return_mean100"] = sum(self._recent) / len(self._recent)
            self._write({f"rollout/{k}": v for k, v in scalars.items()}, self.env_steps)
        if self._recent:
            self.log("rollout/return_mean100", sum(self._recent) / len(self._recent), prog_bar=True,
                     logger=False)
        self.log("env_steps", float(self.env_steps), prog_bar=True, logger=False)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self._epoch_returns:
            self.log("train/return", sum(self._epoch_returns) / len(self._epoch_returns))
        if self._recent:
            last = list(self._recent)[-20:]
            self.log("train/return_last20", sum(last) / len(last))
        self.log("env/steps", float(self.env_steps))
        self.log("env/sps", self._sps)
        self.log("env/episodes", float(self._epoch_episodes))
        self._epoch_returns.clear()
        self._epoch_episodes = 0

    def _log_episode(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        self.log(f"{stage}/return", batch["return"].float(), on_epoch=True, batch_size=1,
                 prog_bar=stage == "val")
        self.log(f"{stage}/length", batch["length"].float(), on_epoch=True, batch_size=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._log_episode("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._log_episode("test", batch)
