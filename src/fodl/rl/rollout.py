"""Stepping environments with a policy: into a replay memory (DQN), into whole episodes
(policy gradient), and evaluation episodes.

An *agent* is anything with ``device`` and
``act(obs, generator, *, explore, env_steps, episodes) -> LongTensor`` (one action per
environment, on the CPU): the LightningModules of chapter 9 are agents. Every random draw of
acting (epsilon coin flips, random and sampled actions) comes from the ``generator`` the
collector owns, and every environment is reset with a seed derived from the run's seed, so
the same seed gives the same episodes.

The vector environments are gymnasium's, with NEXT_STEP autoreset (see :mod:`fodl.rl.envs`): a
sub-environment whose episode ended is reset by the next ``step`` call, which ignores its
action and is not a transition. ``env_steps`` counts transitions only.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np
import torch

from fodl.rl.replay import ReplayBuffer


class Agent(Protocol):
    device: torch.device

    def act(self, obs: torch.Tensor, generator: torch.Generator, *, explore: bool,
            env_steps: int, episodes: int) -> torch.Tensor: ...


def finished_episodes(info: dict[str, Any]) -> list[tuple[float, int]]:
    """``(return, length)`` of the episodes that ended at this vector step, from
    ``RecordEpisodeStatistics`` (the raw game score on Atari, before reward clipping)."""
    mask = info.get("_episode")
    if mask is None or not mask.any():
        return []
    ep = info["episode"]
    return [(float(ep["r"][i]), int(ep["l"][i])) for i in np.flatnonzero(mask)]


def _as_obs(obs: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(obs).to(device, non_blocking=True)


class ToDevice:
    """Copies a vector env's observations to ``device`` once per step. On CUDA through two
    alternating pinned staging buffers, so the copy is asynchronous (a copy from pageable
    memory waits for the GPU's queue); a staging buffer is reused only after its copy ended."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._stage: list[torch.Tensor] = []
        self._events: list[Any] = [None, None]
        self._k = 0

    def __call__(self, obs: np.ndarray) -> torch.Tensor:
        src = torch.from_numpy(np.asarray(obs))
        if not self.cuda:
            return src.to(self.device)
        if not self._stage or self._stage[0].shape != src.shape or self._stage[0].dtype != src.dtype:
            self._stage = [torch.empty(src.shape, dtype=src.dtype, pin_memory=True) for _ in range(2)]
            self._events = [None, None]
        k, self._k = self._k, 1 - self._k
        if self._events[k] is not None:
            self._events[k].synchronize()
        self._stage[k].copy_(src)
        out = self._stage[k].to(self.device, non_blocking=True)
        self._events[k] = torch.cuda.Event()
        self._events[k].record()
        return out


class StepCollector:
    """Steps a vector environment with an agent and writes every step to a replay memory.

    Args:
        envs: a gymnasium vector environment (NEXT_STEP autoreset).
        buffer: the :class:`~fodl.rl.replay.ReplayBuffer` (``num_envs`` must match).
        seed: seeds the environments (sub-environment ``i`` gets ``seed + i``) and the
            generator of random actions.
        life_loss: a step that loses a life (``info["life_lost"]``, Atari) is terminal for the
            bootstrap target; the game goes on.
        stacked: observations are frame stacks; only the newest frame is stored.
    """

    def __init__(self, envs, buffer: ReplayBuffer, seed: int = 0, life_loss: bool = False,
                 stacked: bool = False) -> None:
        if buffer.num_envs != envs.num_envs:
            raise ValueError(f"buffer has {buffer.num_envs} envs, the vector env {envs.num_envs}")
        self.envs = envs
        self.n = envs.num_envs
        self.num_actions = int(envs.single_action_space.n)
        self.buffer = buffer
        self.life_loss = life_loss
        self.stacked = stacked
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.env_steps = 0       # transitions taken (autoreset steps excluded)
        self.episodes = 0        # episodes finished
        self.finished: list[tuple[float, int]] = []  # (return, length) since the last drain
        self.obs: np.ndarray | None = None
        self.to_device = ToDevice(buffer.device)
        self._pending: tuple[Any, np.ndarray, np.ndarray] | None = None  # a step sent, not ended

    def reset(self, seed: int | None = None) -> None:
        if self._pending is not None and hasattr(self.envs, "recv"):
            self.envs.recv()          # the step under way ends before the reset
        self._pending = None
        s = self.seed if seed is None else int(seed)
        self.obs, _ = self.envs.reset(seed=[s + i for i in range(self.n)])
        self.first = np.ones(self.n, dtype=bool)       # obs starts an episode
        self.autoreset = np.zeros(self.n, dtype=bool)  # next step resets (previous one ended)

    def step(self, agent: Agent | None) -> int:
        """One vector step; ``agent=None`` acts uniformly at random (replay warm-up).
        Returns the number of transitions taken."""
        self.finish()
        k = self.send(agent)
        self.finish()
        return k

    def send(self, agent: Agent | None) -> int:
        """Act on the current observations and start the vector step (with a vector env that
        has ``send`` / ``recv``, such as :class:`~fodl.rl.envs.AtariVector`, the emulators run
        until :meth:`finish`; others step in :meth:`finish`). Counts the step's transitions
        (returned) in ``env_steps`` now: they are known before the step ends."""
        if self.obs is None:
            self.reset()
        valid = ~self.autoreset
        # the observations go to the device once: the agent acts on them there (one batched
        # forward pass for all environments) and the replay stores their newest frames from there
        obs = self.to_device(self.obs[:, -1] if self.stacked and (agent is None or not valid.any())
                             else self.obs)
        if agent is None or not valid.any():
            actions = torch.randint(self.num_actions, (self.n,), generator=self.generator)
            frame = obs
        else:
            if obs.device != agent.device:
                obs = obs.to(agent.device)
            actions = agent.act(obs, self.generator, explore=True,
                                env_steps=self.env_steps, episodes=self.episodes)
            frame = obs[:, -1] if self.stacked else obs
        actions = actions.numpy()
        if hasattr(self.envs, "send"):
            self.envs.send(actions)
        self._pending = (frame, actions, valid)
        k = int(valid.sum())
        self.env_steps += k
        return k

    def finish(self) -> None:
        """End the step :meth:`send` started (if any) and write it to the replay memory."""
        if self._pending is None:
            return
        frame, actions, valid = self._pending
        self._pending = None
        if hasattr(self.envs, "recv"):
            next_obs, reward, terminated, truncated, info = self.envs.recv()
        else:
            next_obs, reward, terminated, truncated, info = self.envs.step(actions)
        terminal = terminated
        if self.life_loss and "life_lost" in info:
            terminal = terminated | info["life_lost"].astype(bool)
        self.buffer.add(frame, actions, reward.astype(np.float32), terminal, self.first, valid)
        done = finished_episodes(info)
        if done:
            self.finished.extend(done)
            self.episodes += len(done)
        self.first = self.autoreset
        self.autoreset = (terminated | truncated) & valid
        self.obs = next_obs

    def collect(self, agent: Agent | None, transitions: int, random_until: int = 0,
                overlap: bool = False) -> int:
        """Step until at least ``transitions`` transitions were taken; steps taken while
        ``env_steps < random_until`` act at random (the replay warm-up). Returns the count.

        ``overlap=True`` and a vector env with ``send`` / ``recv``: the last vector step is
        left running (:meth:`send` without :meth:`finish`), so that the emulators step while
        the caller trains (other vector envs: no effect); the next call
        (or :meth:`finish`) ends it. Its actions were chosen before that training: the policy
        acting is at most one update behind (as in asynchronous actor-learner setups)."""
        self.finish()
        overlap = overlap and hasattr(self.envs, "send")   # other envs step in finish() anyway
        taken = 0
        while taken < transitions:
            taken += self.send(None if (agent is None or self.env_steps < random_until) else agent)
            if not (overlap and taken >= transitions):
                self.finish()
        return taken

    def close(self) -> None:
        """End a step still under way and close the environments."""
        if self._pending is not None and hasattr(self.envs, "recv"):
            self.envs.recv()
        self._pending = None
        self.envs.close()

    def drain(self) -> list[tuple[float, int]]:
        out, self.finished = self.finished, []
        return out


class EpisodeCollector:
    """Whole episodes for policy-gradient updates.

    ``collect(agent, n)`` steps until ``n`` episodes have ended and returns them laid end to
    end: ``obs``, ``action``, ``reward`` and ``done`` (True on each episode's last step). With
    several environments, episodes that end at the same step beyond ``n`` are kept for the next
    call, and episodes still running continue into it (their first steps were taken with the
    policy before the update).
    """

    def __init__(self, envs, seed: int = 0) -> None:
        self.envs = envs
        self.n = envs.num_envs
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.env_steps = 0
        self.episodes = 0
        self.obs: np.ndarray | None = None
        self._traj: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(self.n)]
        self._done: list[tuple[list, float, int]] = []  # (steps, return, length)

    def reset(self, seed: int | None = None) -> None:
        s = self.seed if seed is None else int(seed)
        self.obs, _ = self.envs.reset(seed=[s + i for i in range(self.n)])
        self.autoreset = np.zeros(self.n, dtype=bool)
        self._traj = [[] for _ in range(self.n)]

    def collect(self, agent: Agent, n_episodes: int) -> dict[str, Any]:
        if self.obs is None:
            self.reset()
        while len(self._done) < n_episodes:
            valid = ~self.autoreset
            actions = agent.act(_as_obs(self.obs, agent.device), self.generator, explore=True,
                                env_steps=self.env_steps, episodes=self.episodes)
            next_obs, reward, terminated, truncated, info = self.envs.step(actions.numpy())
            stats = {i: s for i, s in zip(np.flatnonzero(info.get("_episode", np.zeros(self.n, bool))),
                                          finished_episodes(info))}
            for i in np.flatnonzero(valid):
                self._traj[i].append((self.obs[i], int(actions[i]), float(reward[i])))
                if terminated[i] or truncated[i]:
                    ret, length = stats.get(i, (sum(s[2] for s in self._traj[i]), len(self._traj[i])))
                    self._done.append((self._traj[i], ret, length))
                    self._traj[i] = []
                    self.episodes += 1
            self.env_steps += int(valid.sum())
            self.autoreset = (terminated | truncated) & valid
            self.obs = next_obs
        episodes, self._done = self._done[:n_episodes], self._done[n_episodes:]
        steps = [s for ep, _, _ in episodes for s in ep]
        done = np.zeros(len(steps), dtype=bool)
        done[np.cumsum([len(ep) for ep, _, _ in episodes]) - 1] = True
        return {
            "obs": torch.as_tensor(np.stack([s[0] for s in steps])),
            "action": torch.as_tensor([s[1] for s in steps], dtype=torch.long),
            "reward": torch.as_tensor([s[2] for s in steps], dtype=torch.float32),
            "done": torch.as_tensor(done),
            "episodes": [(ret, length) for _, ret, length in episodes],
        }


def run_episodes(agent: Agent, envs, n_episodes: int, seed: int,
                 generator: torch.Generator | None = None,
                 explore: bool = False) -> Iterator[tuple[float, int]]:
    """Play ``n_episodes`` evaluation episodes; yield ``(return, length)`` as each ends.

    The environments are reset with seeds ``seed + i``; sub-environment ``i`` plays episodes
    ``i, i + num_envs, ...`` (later ones continue its random stream), so the same seed and
    weights give the same episodes. ``explore=False``: the agent's evaluation policy
    (DQN: epsilon 0.05).
    """
    n = envs.num_envs
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    obs, _ = envs.reset(seed=[int(seed) + i for i in range(n)])
    quota = np.array([len(range(i, n_episodes, n)) for i in range(n)])
    yielded = 0
    while yielded < n_episodes:
        actions = agent.act(_as_obs(obs, agent.device), g, explore=explore, env_steps=0, episodes=0)
        obs, _, _, _, info = envs.step(actions.numpy())
        mask = info.get("_episode", np.zeros(n, dtype=bool))
        for i, (ret, length) in zip(np.flatnonzero(mask), finished_episodes(info)):
            if quota[i] > 0:
                quota[i] -= 1
                yielded += 1
                yield ret, length
