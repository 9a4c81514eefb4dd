"""DataModules of chapter 9: the environment side of reinforcement learning.

In supervised learning a DataModule reads examples from files; here it steps environments
with the policy being trained, so the trainer's ordinary loop (``training_step`` on the batches
the train loader yields, validation after each epoch) is the RL loop:

- :class:`ReplayDataModule` (DQN): each item of an epoch is at least ``train_freq``
  environment steps of epsilon-greedy acting (one vector step of all ``num_envs``
  environments at a time) written to the replay memory, then ``gradient_steps`` minibatches
  for every ``train_freq`` environment steps taken (one item of several minibatches when
  more than one: one optimizer step each). The replay ratio is per environment step, so
  ``num_envs`` changes how many environments step at once, not what is learnt per step. The
  first item waits until ``learning_starts`` transitions were taken at random.
- :class:`EpisodeDataModule` (policy gradient): each item is ``episodes_per_batch`` whole
  episodes played with the current stochastic policy.
- Validation and test loaders play evaluation episodes (one item per episode) with the
  agent's evaluation policy: ``val/return`` after every epoch picks the best checkpoint and
  ``test/return`` is measured on other seeds.

The policy is the LightningModule being trained (``trainer.lightning_module``, which must have
``act``); it is asked for actions only, and is never handed the environment. Epoch lengths are
fixed (``__len__``), so Lightning never fetches ahead of the policy it is training.

Checkpoints (``state_dict``) keep the counters that make a resumed run continue the same
schedules: environment steps (epsilon, target-network updates), episodes, and the random
generators of acting and of replay sampling. They do not keep the replay memory (up to
gigabytes) or the environments' states: a resumed DQN run starts new episodes and refills
``learning_starts`` transitions with its current policy before it trains again.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import numpy as np
import torch

from fodl.data.loader import derive_seed, one_item
from fodl.errors import FodlError
from fodl.rl.envs import VECTORIZATIONS, EnvSpec, make_vector_env

_VAL, _TEST, _TRAIN = 1, 2, 3  # keys of the seed streams


def _seed31(*keys: int) -> int:
    return derive_seed(*keys) % 2**31


class _EnvDataModule(L.LightningDataModule):
    """What both RL DataModules share: the environment spec, evaluation episodes, seeds,
    the agent lookup and the timing that keeps evaluation out of env-steps-per-second.

    ``data_dir`` / ``cache_dir`` are accepted and unused (environments read no dataset; the
    entry points pass them to every DataModule)."""

    def __init__(self, env: Any, num_envs: int | None = None, vectorization: str = "auto",
                 eval_episodes: int = 10, test_episodes: int | None = None,
                 eval_num_envs: int | None = None, seed: int | None = 0,
                 data_dir: Any = None, cache_dir: Any = None) -> None:
        super().__init__()
        self.env = EnvSpec.from_config(env)
        if vectorization not in VECTORIZATIONS:
            raise FodlError(f"data.vectorization={vectorization!r}: choose one of "
                            f"{', '.join(VECTORIZATIONS)}.")
        if num_envs is None:
            num_envs = self.env.num_envs
        if num_envs < 1:
            raise FodlError(f"data.num_envs={num_envs}: give at least 1.")
        self.num_envs = int(num_envs)
        self.vectorization = vectorization
        self.eval_episodes = int(eval_episodes)
        self.test_episodes = int(test_episodes if test_episodes is not None else eval_episodes)
        self.eval_num_envs = eval_num_envs
        self.seed = int(seed or 0)
        self.eval_seconds = 0.0      # wall time spent in evaluation episodes (excluded from SPS)
        self.fit_clock: tuple[float, float, int] | None = None  # (wall, eval_seconds, env steps) at start
        self._eval_envs: dict[str, Any] = {}
        self._pending_state: dict[str, Any] | None = None

    # -- the agent ------------------------------------------------------------------------
    def agent(self):
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not callable(getattr(module, "act", None)):
            raise FodlError(f"{type(self).__name__} steps environments with the model being "
                            f"trained, and {type(module).__name__} has no act(): use it with "
                            "model=dqn or model=policy_gradient.")
        if self.trainer.world_size > 1:
            raise FodlError("The chapter 9 agents train in one process (each process would step "
                            f"its own environments): trainer.devices={self.trainer.world_size} is "
                            "not supported. Use trainer.devices=1; data.num_envs runs environments "
                            "in parallel.")
        return module

    # -- training's environment steps per second --------------------------------------------
    def start_clock(self) -> None:
        """Start :meth:`sps`'s clock at a fit's first training batch (later calls: nothing)."""
        if self.fit_clock is None:
            self.fit_clock = (time.perf_counter(), self.eval_seconds, self.collector.env_steps)

    def sps(self) -> float:
        """Environment steps per second of training so far (evaluation time excluded)."""
        if self.fit_clock is None:
            return 0.0
        t0, e0, s0 = self.fit_clock
        dt = time.perf_counter() - t0 - (self.eval_seconds - e0)
        return (self.collector.env_steps - s0) / dt if dt > 0 else 0.0

    # -- evaluation episodes ----------------------------------------------------------------
    def eval_env(self, split: str):
        n = self.eval_episodes if split == "val" else self.test_episodes
        k = max(1, min(n, self.eval_num_envs or n))
        if split not in self._eval_envs:
            self._eval_envs[split] = make_vector_env(self.env, k, self.vectorization)
        return self._eval_envs[split]

    def val_dataloader(self) -> "EvalEpisodes":
        return EvalEpisodes(self, "val", self.eval_episodes, _seed31(self.seed, _VAL))

    def test_dataloader(self) -> "EvalEpisodes":
        return EvalEpisodes(self, "test", self.test_episodes, _seed31(self.seed, _TEST))

    def teardown(self, stage: str) -> None:
        for envs in self._eval_envs.values():
            envs.close()
        self._eval_envs.clear()

    # -- checkpointed counters ---------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return self._state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = dict(state_dict)
        self._apply_pending()

    def _apply_pending(self) -> None:
        if self._pending_state is not None and self._restore(self._pending_state):
            self._pending_state = None


class EvalEpisodes:
    """``n`` evaluation episodes, one item ``{"return", "length"}`` each, from environments
    reset with fixed seeds (the same episodes' starts every evaluation)."""

    def __init__(self, dm: _EnvDataModule, split: str, n: int, seed: int) -> None:
        self.dm, self.split, self.n, self.seed = dm, split, n, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        from fodl.rl.rollout import run_episodes

        # time spent playing (excluded from training's steps per second), counted item by item:
        # Lightning stops after len() items without exhausting the generator
        t0 = time.perf_counter()
        agent = self.dm.agent()
        envs = self.dm.eval_env(self.split)
        for ret, length in run_episodes(agent, envs, self.n, self.seed,
                                        torch.Generator().manual_seed(self.seed)):
            self.dm.eval_seconds += time.perf_counter() - t0
            yield {"return": torch.tensor(ret), "length": torch.tensor(float(length))}
            t0 = time.perf_counter()


class ReplayDataModule(_EnvDataModule):
    """Environment steps into a replay memory, and minibatches drawn from it (DQN).

    Args:
        env: the environment spec (``conf/env/*.yaml``).
        buffer_size: replay capacity in transitions.
        batch_size: transitions per minibatch.
        learning_starts: transitions taken at random before the first update (SB3's
            ``learning_starts``, the Nature paper's replay start size).
        train_freq: environment steps (transitions, whatever ``num_envs``) per update.
        gradient_steps: minibatches (optimizer steps) per update: the replay ratio is
            ``gradient_steps / train_freq`` minibatches per environment step.
        steps_per_epoch: environment steps per epoch (rounded up to whole items); the
            first epoch also takes the warm-up. Validation runs after every epoch.
        overlap: with a vector env that can start a step and end it later (ale-py's, the
            Atari default), leave each item's last vector step running while the learner
            trains on the item: the emulators and the update run at the same time, and that
            step's actions come from the policy before the update (one update behind).
        n_step: transitions over up to ``n_step`` environment steps of one environment
            (n-step returns, cut at terminals and episode ends; the agent discounts them, see
            :meth:`~fodl.rl.replay.ReplayBuffer.sample`); 1: one-step transitions.
        num_envs, vectorization: parallel environments (default ``env.num_envs``) and how
            they run (``auto``: ale-py's vector env for Atari with several, else gymnasium's
            sync vector env; ``ale``, ``sync``, ``async``).
        on_device: keep the replay memory on the training device (GPU) and sample it there.
        eval_episodes, test_episodes, eval_num_envs: evaluation episodes per validation /
            test, and how many environments play them side by side (default: all).
        seed: seeds environments, random actions and replay sampling.
    """

    def __init__(self, env: Any, buffer_size: int = 100_000, batch_size: int = 64,
                 learning_starts: int = 1000, train_freq: int = 256, gradient_steps: int = 128,
                 steps_per_epoch: int = 5000, num_envs: int | None = None, vectorization: str = "auto",
                 on_device: bool = True, overlap: bool = True, n_step: int = 1,
                 eval_episodes: int = 10,
                 test_episodes: int | None = None, eval_num_envs: int | None = None,
                 seed: int | None = 0, data_dir: Any = None, cache_dir: Any = None) -> None:
        super().__init__(env, num_envs, vectorization, eval_episodes, test_episodes,
                         eval_num_envs, seed)
        for name, v in (("train_freq", train_freq), ("gradient_steps", gradient_steps),
                        ("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch),
                        ("n_step", n_step)):
            if v < 1:
                raise FodlError(f"data.{name}={v}: give a positive number.")
        self.buffer_size = int(buffer_size)
        self.batch_size = int(batch_size)
        self.learning_starts = int(learning_starts)
        self.train_freq = int(train_freq)
        self.gradient_steps = int(gradient_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.on_device = on_device
        self.n_step = int(n_step)
        self.overlap = bool(overlap)
        self.collector = None
        self.buffer = None

    @property
    def chunk(self) -> int:
        """Environment steps per item: whole vector steps, at least ``train_freq``."""
        return self.num_envs * -(-self.train_freq // self.num_envs)

    @property
    def updates_per_epoch(self) -> int:
        """Items (training batches of the trainer's loop) per epoch."""
        return -(-self.steps_per_epoch // self.chunk)

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.collector is not None:
            return
        from fodl.rl.replay import ReplayBuffer
        from fodl.rl.rollout import StepCollector

        envs = make_vector_env(self.env, self.num_envs, self.vectorization)
        space = envs.single_observation_space
        stacked = bool(self.env.atari and self.env.frame_stack > 1)
        device = "cpu"
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
        self.buffer = ReplayBuffer(
            self.buffer_size, self.num_envs,
            frame_shape=space.shape[1:] if stacked else space.shape,
            frame_dtype=torch.from_numpy(np.zeros((), dtype=space.dtype)).dtype, stack=space.shape[0] if stacked else 1,
            device=device, seed=_seed31(self.seed, _TRAIN, 1))
        self.collector = StepCollector(envs, self.buffer, seed=_seed31(self.seed, _TRAIN),
                                       life_loss=bool(self.env.atari and self.env.life_loss),
                                       stacked=stacked)
        self._buffer_start = 0
        self._is_ready = False
        self.fit_clock = None
        self._learn_start = 0     # env steps when updates started (this run or since resume)
        self._updates = 0         # updates (of gradient_steps minibatches) taken since then
        self._apply_pending()

    def _state(self) -> dict[str, Any]:
        c = self.collector
        if c is None:
            return dict(self._pending_state or {})
        return {"env_steps": c.env_steps, "episodes": c.episodes,
                "act_rng": c.generator.get_state(), "replay_rng": self.buffer.generator.get_state()}

    def _restore(self, state: dict[str, Any]) -> bool:
        c = self.collector
        if c is None or not state:
            return False
        c.env_steps, c.episodes = int(state["env_steps"]), int(state["episodes"])
        c.generator.set_state(state["act_rng"])
        try:
            self.buffer.generator.set_state(state["replay_rng"])
        except RuntimeError:   # saved on another kind of device (CUDA vs CPU generator state)
            self.buffer.generator.manual_seed(_seed31(self.seed, _TRAIN, 1, c.env_steps))
        # new episodes, from seeds that differ from the run's first ones
        c.reset(_seed31(self.seed, _TRAIN, c.env_steps))
        self._buffer_start = c.env_steps
        self._is_ready = False
        return True

    def minibatches_due(self) -> int:
        """Minibatches owed now: ``gradient_steps`` per ``train_freq`` environment steps taken
        since updates (re)started, less those already drawn."""
        due = (self.collector.env_steps - self._learn_start) // self.train_freq - self._updates
        self._updates += due
        return due * self.gradient_steps

    def ready(self) -> bool:
        """Whether updates can start: past the warm-up, and (after a resume) the new memory
        refilled with ``learning_starts`` transitions."""
        if self._is_ready:
            return True
        c = self.collector
        filled = c.env_steps - self._buffer_start
        self._is_ready = (c.env_steps > self.learning_starts
                          and filled > min(self.learning_starts, self.buffer.capacity - 1)
                          and filled >= 2 * self.num_envs and self.buffer.valid_rows > 0)
        if self._is_ready:   # the first update is owed now; the next after train_freq more steps
            self._learn_start, self._updates = c.env_steps - self.train_freq, 0
        return self._is_ready

    def train_dataloader(self) -> "ReplayStream":
        if self.collector is None:
            self.setup("fit")
        return ReplayStream(self)

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if stage == "fit" and self.collector is not None:
            self.collector.close()
            self.collector = self.buffer = None

class ReplayStream:
    """One epoch of DQN updates (see :class:`ReplayDataModule`)."""

    def __init__(self, dm: ReplayDataModule) -> None:
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.updates_per_epoch

    def __iter__(self):
        dm = self.dm
        agent = dm.agent()
        c = dm.collector
        dm.start_clock()
        chunk = dm.chunk
        for _ in range(len(self)):
            c.collect(agent, chunk, random_until=dm.learning_starts, overlap=dm.overlap)
            while not dm.ready():
                c.collect(agent, chunk, random_until=dm.learning_starts, overlap=dm.overlap)
            batches = dm.buffer.sample(dm.batch_size, max(dm.minibatches_due(), 1), dm.n_step)
            batches[0]["rollout"] = {"env_steps": c.env_steps, "episodes": c.drain(),
                                     "sps": dm.sps()}
            yield one_item(batches)


class EpisodeDataModule(_EnvDataModule):
    """Whole episodes played with the current policy (REINFORCE).

    Args:
        env: the environment spec (``conf/env/*.yaml``).
        episodes_per_batch: episodes per policy update (the book: 8).
        batches_per_epoch: updates per epoch; validation runs after every epoch.
        num_envs, vectorization: environments played side by side.
        eval_episodes, test_episodes, eval_num_envs, seed: as for :class:`ReplayDataModule`.
    """

    def __init__(self, env: Any, episodes_per_batch: int = 8, batches_per_epoch: int = 10,
                 num_envs: int | None = None, vectorization: str = "auto", eval_episodes: int = 10,
                 test_episodes: int | None = None, eval_num_envs: int | None = None,
                 seed: int | None = 0, data_dir: Any = None, cache_dir: Any = None) -> None:
        super().__init__(env, num_envs, vectorization, eval_episodes, test_episodes,
                         eval_num_envs, seed)
        if episodes_per_batch < 1 or batches_per_epoch < 1:
            raise FodlError("data.episodes_per_batch and data.batches_per_epoch must be positive "
                            f"(got {episodes_per_batch}, {batches_per_epoch}).")
        self.episodes_per_batch = int(episodes_per_batch)
        self.batches_per_epoch = int(batches_per_epoch)
        self.collector = None

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.collector is not None:
            return
        from fodl.rl.rollout import EpisodeCollector

        envs = make_vector_env(self.env, self.num_envs, self.vectorization)
        self.collector = EpisodeCollector(envs, seed=_seed31(self.seed, _TRAIN))
        self.fit_clock = None
        self._apply_pending()

    def _state(self) -> dict[str, Any]:
        c = self.collector
        if c is None:
            return dict(self._pending_state or {})
        return {"env_steps": c.env_steps, "episodes": c.episodes, "act_rng": c.generator.get_state()}

    def _restore(self, state: dict[str, Any]) -> bool:
        c = self.collector
        if c is None or not state:
            return False
        c.env_steps, c.episodes = int(state["env_steps"]), int(state["episodes"])
        c.generator.set_state(state["act_rng"])
        c.reset(_seed31(self.seed, _TRAIN, c.env_steps))
        return True

    def train_dataloader(self) -> "EpisodeStream":
        if self.collector is None:
            self.setup("fit")
        return EpisodeStream(self)

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if stage == "fit" and self.collector is not None:
            self.collector.envs.close()
            self.collector = None

class EpisodeStream:
    """One epoch of policy-gradient batches (see :class:`EpisodeDataModule`)."""

    def __init__(self, dm: EpisodeDataModule) -> None:
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.batches_per_epoch

    def __iter__(self):
        dm = self.dm
        agent = dm.agent()
        c = dm.collector
        dm.start_clock()
        for _ in range(len(self)):
            batch = c.collect(agent, dm.episodes_per_batch)
            batch["rollout"] = {"env_steps": c.env_steps, "episodes": batch.pop("episodes"),
                                "sps": dm.sps()}
            yield batch
