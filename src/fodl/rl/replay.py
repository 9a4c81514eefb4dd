"""Experience replay that stores every frame once.

A DQN transition is ``(s_t, a_t, r_t, terminal_t, s_{t+1})``, where on Atari ``s_t`` is a stack of
the last 4 frames. Storing ``s_t`` and ``s_{t+1}`` per transition would keep every frame 8 times
(56 GB for a million Atari transitions); here each environment step writes one *row*: the
newest frame of ``s_t`` (84x84 uint8), the action taken, the reward, the terminal flag and two
markers. Stacks are rebuilt by index when a minibatch is drawn:

- ``s_t`` = frames of rows ``t-3 .. t``, and ``s_{t+1}`` = rows ``t-2 .. t+1``;
- ``first[t]``: frame ``t`` is the first of an episode, so frames before it in a stack are zeros
  (what ``FrameStackObservation(padding_type="zero")`` showed the agent);
- ``valid[t]``: the step from row ``t`` is a real transition. With gymnasium's NEXT_STEP
  autoreset, the row of an episode's final observation is followed by a reset step whose action
  is ignored; that row is stored (it is the ``s_{t+1}`` of the last transition) but never drawn.

A million Atari transitions take 1M x 7,056 bytes = 7.1 GB of frames plus 14 MB of the rest,
instead of 56 GB. With ``num_envs`` parallel environments the memory is ``rows x num_envs``:
row ``t`` holds step ``t`` of every environment, so each environment's frames stay consecutive.
Frames live on ``device`` (the GPU when training there); the small per-row fields are numpy
arrays on the CPU (a write is a few microseconds), and minibatch indices are drawn from the
buffer's own seeded torch generator on the CPU, so the same seed draws the same minibatches on
any device.

CartPole uses the same class with ``stack=1``: observations are 4 floats and ``s_{t+1}`` is
still read from the next row rather than stored twice.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


class ReplayBuffer:
    """Circular replay memory of ``capacity`` transitions from ``num_envs`` environments.

    Args:
        capacity: transitions kept (rounded up to a multiple of ``num_envs``); the oldest are
            overwritten first.
        num_envs: environments written side by side (one row per vector step).
        frame_shape, frame_dtype: one stored frame: ``(84, 84)`` uint8 on Atari, ``(4,)``
            float32 for CartPole.
        stack: frames per observation (4 on Atari, 1 otherwise).
        device: where frames live and minibatches are returned.
        seed: seeds the generator that draws minibatch indices.
    """

    def __init__(self, capacity: int, num_envs: int = 1, frame_shape: Sequence[int] = (4,),
                 frame_dtype: torch.dtype = torch.float32, stack: int = 1,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        if capacity < 2 * num_envs:
            raise ValueError(f"replay capacity {capacity} must hold at least 2 steps of "
                             f"{num_envs} environment(s)")
        if stack < 1:
            raise ValueError(f"stack must be >= 1, got {stack}")
        self.num_envs = int(num_envs)
        self.rows = -(-int(capacity) // self.num_envs)
        self.capacity = self.rows * self.num_envs
        self.stack = int(stack)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.device = torch.device(device)
        # torch.empty: pages are only committed as rows are written
        self.frames = torch.empty((self.rows, self.num_envs, *self.frame_shape), dtype=frame_dtype,
                                  device=self.device)
        self._frames_np = self.frames.numpy() if self.device.type == "cpu" else None
        shape = (self.rows, self.num_envs)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminal = np.zeros(shape, dtype=bool)
        self.first = np.zeros(shape, dtype=bool)
        self.valid = np.zeros(shape, dtype=bool)
        self.pos = 0          # next row to write
        self.full = False
        self.generator = torch.Generator().manual_seed(int(seed))

    # -- size ---------------------------------------------------------------------------
    def __len__(self) -> int:
        """Transitions stored (rows written x environments)."""
        return (self.rows if self.full else self.pos) * self.num_envs

    def nbytes(self) -> int:
        """Memory the buffer holds when full, in bytes."""
        meta = sum(a.nbytes for a in (self.actions, self.rewards, self.terminal, self.first, self.valid))
        return self.frames.element_size() * self.frames.numel() + meta

    # -- writing ------------------------------------------------------------------------
    def add(self, frame: Any, action: Any, reward: Any, terminal: Any, first: Any,
            valid: Any) -> None:
        """Write one vector step: for each environment, the newest frame of the observation
        it acted on, the action, the reward and terminal flag of the step (``terminal``: no
        bootstrapping from the next state), whether the frame starts an episode, and whether
        the step is a real transition (False for the reset step after an episode's end)."""
        p = self.pos
        if self._frames_np is not None:
            self._frames_np[p] = frame
        else:
            self.frames[p].copy_(torch.as_tensor(np.asarray(frame)), non_blocking=True)
        self.actions[p] = action
        self.rewards[p] = reward
        self.terminal[p] = terminal
        self.first[p] = first
        self.valid[p] = valid
        self.pos = (p + 1) % self.rows
        if self.pos == 0:
            self.full = True

    # -- sampling -----------------------------------------------------------------------
    def _ok(self, t: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Rows ``t`` (of env ``e``) that can be drawn: a real transition, its next row
        written, and (once the memory has wrapped) its frame history not overwritten."""
        ok = self.valid[t, e] & (t != (self.pos - 1) % self.rows)
        if self.full and self.stack > 1:
            ok &= (t - self.pos) % self.rows >= self.stack - 1
        return ok

    def sample_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (row, env) pairs drawn uniformly, with replacement, among drawable rows."""
        hi = self.rows if self.full else self.pos
        if hi < 2 or not self.valid[:hi].any():
            raise RuntimeError("the replay memory holds no complete transition yet")
        flat = torch.randint(hi * self.num_envs, (n,), generator=self.generator).numpy()
        t, e = flat // self.num_envs, flat % self.num_envs
        bad = ~self._ok(t, e)
        for _ in range(1000):  # rejection sampling: drawable rows are almost all rows
            if not bad.any():
                return t, e
            redraw = torch.randint(hi * self.num_envs, (int(bad.sum()),), generator=self.generator).numpy()
            t[bad], e[bad] = redraw // self.num_envs, redraw % self.num_envs
            bad = ~self._ok(t, e)
        raise RuntimeError("could not draw valid transitions from the replay memory")

    def _stacks(self, t: np.ndarray, e: np.ndarray) -> torch.Tensor:
        """Observations at rows ``t`` of envs ``e``: frames ``t-stack+1 .. t``, zeros before
        the episode's first frame. Shape ``(B, stack, *frame)``, or ``(B, *frame)`` for 1."""
        if self.stack == 1:
            return self.frames[self._index(t), self._index(e)]
        rows = (t[:, None] - np.arange(self.stack - 1, -1, -1)) % self.rows   # (B, k), oldest first
        firsts = self.first[rows, e[:, None]]
        # a frame is kept when no later frame of the window starts an episode
        later = np.cumsum(firsts[:, ::-1], axis=1)[:, ::-1] - firsts
        keep = self._index(later == 0).view(*rows.shape, *([1] * len(self.frame_shape)))
        frames = self.frames[self._index(rows), self._index(e[:, None])]     # (B, k, *frame)
        return torch.where(keep, frames, torch.zeros((), dtype=frames.dtype, device=self.device))

    def _index(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    def sample(self, batch_size: int, n_batches: int | None = None):
        """A minibatch ``{"obs", "action", "reward", "done", "next_obs"}`` on ``device``
        (``done`` is the float terminal flag: 1 means no bootstrap), or a list of
        ``n_batches`` of them drawn in one gather."""
        n = batch_size * (n_batches or 1)
        t, e = self.sample_indices(n)
        batch = {
            "obs": self._stacks(t, e),
            "action": self._index(self.actions[t, e]),
            "reward": self._index(self.rewards[t, e]),
            "done": self._index(self.terminal[t, e].astype(np.float32)),
            "next_obs": self._stacks((t + 1) % self.rows, e),
        }
        if n_batches is None:
            return batch
        parts = {k: v.split(batch_size) for k, v in batch.items()}
        return [{k: parts[k][i] for k in batch} for i in range(n_batches)]

    # -- inspection (tests, debugging) --------------------------------------------------
    def drawable(self) -> np.ndarray:
        """Boolean (rows, envs) array of the rows :meth:`sample` can return."""
        t, e = np.meshgrid(np.arange(self.rows), np.arange(self.num_envs), indexing="ij")
        ok = self._ok(t.reshape(-1), e.reshape(-1)).reshape(self.rows, self.num_envs)
        if not self.full:
            ok[self.pos:] = False
        return ok

    def observation(self, t: int, e: int) -> torch.Tensor:
        """The (rebuilt) observation stored at row ``t`` of env ``e``."""
        return self._stacks(np.array([t]), np.array([e]))[0]
