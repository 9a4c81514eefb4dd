"""Environments: CartPole and Atari with the Nature DQN preprocessing, single or vectorised.

Atari (``ALE/<Game>-v5``, ROMs shipped with ``ale-py``) goes through gymnasium's own wrappers,
in the order of Mnih et al. 2015 ("Human-level control through deep reinforcement learning"):

1. ``gym.make(id, frameskip=1, repeat_action_probability=p)``: the raw emulator; frame skipping
   is done by the next wrapper (v5's own ``frameskip=4`` would skip without max-pooling).
2. ``AtariPreprocessing``: up to ``noop_max`` no-op actions after each reset, ``frame_skip``
   repeats of every action with a max over the last two frames (flicker), grayscale, resize to
   ``screen_size`` x ``screen_size``, uint8.
3. ``RecordEpisodeStatistics``: the raw game score and length of each game (logged), before
   clipping.
4. :class:`LifeLoss`: ``info["life_lost"]`` on the step that loses a life. The game goes on
   (unlike gymnasium's ``terminal_on_life_loss``, which resets the whole game); the agent treats
   the step as terminal for its bootstrap target, as in the Nature paper.
5. ``ClipReward(-1, 1)``: the learner sees clipped rewards.
6. ``FrameStackObservation(frame_stack, padding_type="zero")``: the last 4 frames, zeros
   before the first frame of a game: observations are ``(4, 84, 84)`` uint8.

``repeat_action_probability`` defaults to 0 (no sticky actions: the Nature paper's and CleanRL's
``NoFrameskip-v4`` setting, whose numbers fodl is compared with); v5's own default is 0.25.

Several Atari environments (``env.num_envs > 1``, 8 by default) run in ale-py's own vector
environment (:class:`AtariVector` around ``ale_py.vector_env.AtariVectorEnv``: the emulators
step in C++ threads and the same Nature preprocessing is done there), with the same semantics
as the wrapper stack above: no-op starts, frame skip with a max over the last two frames,
84x84 grayscale, zero-padded frame stacks, ``info["life_lost"]``, rewards clipped for the
learner and raw game scores in the episode statistics, no FIRE on reset, no sticky actions.
Identical frames, rewards and terminals for the same actions when no-op starts are off
(``tests/test_rl.py``); the differences by design: the no-op counts are drawn from ALE's own
random generator (not gymnasium's), and ``max_episode_steps`` becomes ALE's frame limit
(``max_episode_steps x frame_skip`` frames, no-op frames included).

Other vectorised environments use gymnasium's ``SyncVectorEnv`` / ``AsyncVectorEnv``. All use
``autoreset_mode=NEXT_STEP``: the step that ends an episode returns its true final observation,
and the next ``step`` call resets that sub-environment (its action is ignored, reward 0). The
collectors in :mod:`fodl.rl.rollout` rely on this.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np

from fodl.errors import FodlError


def require_gymnasium():
    """``gymnasium``, or a clear error saying how to install the ``rl`` extra."""
    try:
        import gymnasium
    except ImportError:
        raise FodlError(
            "The reinforcement-learning models (model=policy_gradient, model=dqn) need gymnasium, "
            "which is not installed. Install the rl extra: pip install -e \".[rl]\" (it brings "
            "gymnasium[classic-control], ale-py with the Atari ROMs, and opencv for the Atari "
            "preprocessing).") from None
    return gymnasium


def _require_atari() -> None:
    gym = require_gymnasium()
    try:
        import ale_py
    except ImportError:
        raise FodlError("Atari environments (env=atari) need ale-py, which is not installed. "
                        "Install the rl extra: pip install -e \".[rl]\".") from None
    try:
        import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
    except ImportError:
        raise FodlError("gymnasium's AtariPreprocessing needs OpenCV, which is not installed. "
                        "Install the rl extra: pip install -e \".[rl]\" (opencv-python-headless).") from None
    gym.register_envs(ale_py)


@dataclass
class EnvSpec:
    """What ``conf/env/*.yaml`` says about an environment (``env.id=ALE/Pong-v5`` etc.)."""

    id: str = "CartPole-v1"
    num_envs: int = 1               # environments stepped side by side while training
    num_threads: int = 0            # Atari, ale-py vector env: emulator threads (0: ale-py's choice)
    atari: bool | None = None       # None: decided from the id ("ALE/..." or "...NoFrameskip...")
    frame_stack: int = 4            # Atari: frames per observation
    frame_skip: int = 4             # Atari: emulator frames per action (max over the last two)
    screen_size: int = 84
    noop_max: int = 30              # Atari: up to this many no-ops after each reset
    clip_rewards: bool = True       # Atari: rewards clipped to [-1, 1] for learning
    life_loss: bool = True          # Atari: a lost life is terminal for the bootstrap target
    repeat_action_probability: float = 0.0  # Atari: sticky actions (v5 default 0.25)
    max_episode_steps: int | None = None    # None: the environment's own limit (Atari: agent steps)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra gym.make keyword arguments

    @classmethod
    def from_config(cls, cfg: Any) -> "EnvSpec":
        if isinstance(cfg, EnvSpec):
            return cfg
        if cfg is None:
            raise FodlError("No environment given: add env=cartpole or env=atari (and env.id=...) "
                            "to the command line.")
        d = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FodlError(f"env has unknown key(s) {', '.join(unknown)}; the keys are "
                            f"{', '.join(sorted(known))} (conf/env/*.yaml). Fix the spelling, or "
                            "pass gym.make arguments as env.kwargs.<name>=<value>.")
        d["kwargs"] = dict(d.get("kwargs") or {})
        spec = cls(**d)
        if spec.atari is None:
            spec.atari = spec.id.startswith("ALE/") or "NoFrameskip" in spec.id
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _life_loss_wrapper(gym):
    class LifeLoss(gym.Wrapper):
        """Adds ``info["life_lost"]``: True on the step where the game's life counter drops.
        The episode continues; the learner decides what a lost life means."""

        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            self.lives = int(info.get("lives", 0))
            info["life_lost"] = False
            return obs, info

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            lives = int(info.get("lives", 0))
            info["life_lost"] = lives < self.lives
            self.lives = lives
            return obs, reward, terminated, truncated, info

    return LifeLoss


def make_env(spec: EnvSpec | dict, render_mode: str | None = None):
    """One environment as ``spec`` describes it (Atari: the Nature preprocessing above)."""
    gym = require_gymnasium()
    spec = EnvSpec.from_config(spec)
    kwargs = dict(spec.kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if spec.atari:
        _require_atari()
        from gymnasium.wrappers import (
            AtariPreprocessing,
            ClipReward,
            FrameStackObservation,
            RecordEpisodeStatistics,
            TimeLimit,
        )
        env = _make(gym, spec.id, frameskip=1,
                    repeat_action_probability=spec.repeat_action_probability, **kwargs)
        env = AtariPreprocessing(env, noop_max=spec.noop_max, frame_skip=spec.frame_skip,
                                 screen_size=spec.screen_size, terminal_on_life_loss=False,
                                 grayscale_obs=True, scale_obs=False)
        if spec.max_episode_steps is not None:  # in agent steps (frame_skip frames each)
            env = TimeLimit(env, int(spec.max_episode_steps))
        env = RecordEpisodeStatistics(env)
        env = _life_loss_wrapper(gym)(env)
        if spec.clip_rewards:
            env = ClipReward(env, -1.0, 1.0)
        return FrameStackObservation(env, spec.frame_stack, padding_type="zero")
    from gymnasium.wrappers import RecordEpisodeStatistics

    if spec.max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(spec.max_episode_steps)
    return RecordEpisodeStatistics(_make(gym, spec.id, **kwargs))


def _make(gym, env_id: str, **kwargs):
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise FodlError(f"gymnasium cannot make env.id={env_id!r} ({type(e).__name__}: {e}). Give a "
                        "registered id, e.g. CartPole-v1, ALE/Pong-v5 or ALE/Breakout-v5 (Atari "
                        "ids need env=atari).") from None


VECTORIZATIONS = ("auto", "ale", "sync", "async")


def make_vector_env(spec: EnvSpec | dict, num_envs: int = 1, vectorization: str = "auto"):
    """``num_envs`` environments as ``spec`` describes them, as one vector environment.

    ``vectorization="ale"``: ale-py's C++ vector environment (:class:`AtariVector`, Atari only);
    ``"sync"``: copies of ``make_env(spec)`` stepped one after the other in this process (best
    for cheap environments such as CartPole); ``"async"``: each copy in its own process;
    ``"auto"``: ``ale`` for Atari with more than one environment, else ``sync``.
    """
    gym = require_gymnasium()
    spec = EnvSpec.from_config(spec)
    if num_envs < 1:
        raise FodlError(f"data.num_envs={num_envs}: give at least 1.")
    if vectorization not in VECTORIZATIONS:
        raise FodlError(f"data.vectorization={vectorization!r}: choose one of {', '.join(VECTORIZATIONS)}.")
    if vectorization == "auto":
        vectorization = "ale" if spec.atari and num_envs > 1 else "sync"
    if vectorization == "ale":
        if not spec.atari:
            raise FodlError(f"data.vectorization=ale runs Atari games only, not env.id={spec.id}: "
                            "use data.vectorization=sync (or auto).")
        return AtariVector(spec, num_envs)
    fns: list[Callable] = [lambda: make_env(spec) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.NEXT_STEP
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)


def ale_game(env_id: str) -> str:
    """ale-py's ROM name of a gymnasium Atari id: ``ALE/Pong-v5`` and ``PongNoFrameskip-v4``
    -> ``pong``, ``ALE/MsPacman-v5`` -> ``ms_pacman``."""
    import re

    name = env_id.split("/")[-1].split("-")[0]
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class AtariVector:
    """``num_envs`` Atari games in ale-py's ``AtariVectorEnv`` (C++ threads), with the
    gymnasium vector-env interface and the semantics of :func:`make_env`'s wrapper stack.

    The emulator returns raw rewards (``reward_clipping=False``) so that ``info["episode"]``
    (``"r"``, ``"l"`` and the mask ``info["_episode"]``, as gymnasium's
    ``RecordEpisodeStatistics``) holds the game's score; the rewards returned are clipped to
    [-1, 1] when ``spec.clip_rewards``. ``info["life_lost"]`` is True on a step whose lives
    counter dropped (the game goes on). NEXT_STEP autoreset: the step after an episode's end
    resets that game, returns its first observation and is not a transition. ``send`` /
    ``recv`` split a step in two, so that the emulators run while the learner trains.
    """

    def __init__(self, spec: EnvSpec | dict, num_envs: int) -> None:
        _require_atari()
        from ale_py.vector_env import AtariVectorEnv

        spec = EnvSpec.from_config(spec)
        self.spec = spec
        frames = 108_000 if spec.max_episode_steps is None else int(spec.max_episode_steps) * spec.frame_skip
        try:
            self.env = AtariVectorEnv(
                ale_game(spec.id), int(num_envs), num_threads=int(spec.num_threads),
                repeat_action_probability=spec.repeat_action_probability,
                max_num_frames_per_episode=frames, img_height=spec.screen_size,
                img_width=spec.screen_size, grayscale=True, stack_num=spec.frame_stack,
                frameskip=spec.frame_skip, maxpool=True, noop_max=spec.noop_max,
                episodic_life=False, life_loss_info=False, reward_clipping=False,
                use_fire_reset=False, autoreset_mode="NextStep", **spec.kwargs)
        except (AssertionError, TypeError, RuntimeError) as e:
            raise FodlError(f"ale-py's vector environment cannot run env.id={spec.id!r} with "
                            f"env.kwargs={spec.kwargs} ({type(e).__name__}: {e}). Give an Atari id "
                            "such as ALE/Pong-v5, or use the gymnasium wrappers: "
                            "data.vectorization=sync.") from None
        self.num_envs = int(num_envs)
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space

    def reset(self, *, seed=None, options=None):
        if seed is not None and not isinstance(seed, int):
            seed = np.asarray(seed, dtype=np.int64)
        obs, info = self.env.reset(seed=seed, options=options)
        self._lives = np.asarray(info["lives"]).copy()
        self._return = np.zeros(self.num_envs)
        self._length = np.zeros(self.num_envs, dtype=np.int64)
        self._resetting = np.zeros(self.num_envs, dtype=bool)  # this step autoresets
        return obs, info

    def step(self, actions):
        self.send(actions)
        return self.recv()

    def send(self, actions) -> None:
        """Start a step with ``actions`` and return at once: the emulators run in their C++
        threads while the caller does something else (the learner's update), until
        :meth:`recv`."""
        self.env.send(np.asarray(actions, dtype=np.int64))

    def recv(self):
        """The result of the step :meth:`send` started (what :meth:`step` returns)."""
        obs, reward, terminated, truncated, info = self.env.recv()
        reward = reward.astype(np.float32)
        lives = np.asarray(info["lives"])
        live = ~self._resetting                         # a real transition of a running game
        info["life_lost"] = live & (lives < self._lives)
        self._lives = lives.copy()
        self._return = np.where(live, self._return + reward, 0.0)
        self._length = np.where(live, self._length + 1, 0)
        ended = live & (terminated | truncated)
        info["_episode"] = ended
        info["episode"] = {"r": np.where(ended, self._return, 0.0),
                           "l": np.where(ended, self._length, 0)}
        self._resetting = ended
        if self.spec.clip_rewards:
            reward = np.clip(reward, -1.0, 1.0)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


def env_spaces(spec: EnvSpec | dict) -> tuple[tuple[int, ...], int]:
    """``(observation shape, number of actions)`` of the environment ``spec`` describes (made
    once per spec and process). The agents size their nets with it."""
    import json

    spec = EnvSpec.from_config(spec)
    return _spaces(json.dumps(spec.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=32)
def _spaces(key: str) -> tuple[tuple[int, ...], int]:
    import json

    spec = EnvSpec(**json.loads(key))
    env = make_env(spec)
    try:
        n = getattr(env.action_space, "n", None)
        if n is None:
            raise FodlError(f"env.id={spec.id} has a {type(env.action_space).__name__} action space; "
                            "the chapter 9 agents choose among discrete actions (CartPole, Atari).")
        return tuple(int(s) for s in env.observation_space.shape), int(n)
    finally:
        env.close()
