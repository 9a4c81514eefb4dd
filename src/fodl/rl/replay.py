"""Experience replay that stores every frame once, on the training device, sampled there.

A DQN transition is ``(s_t, a_t, r_t, terminal_t, s_{t+1})``, where on Atari ``s_t`` is a stack of
the last 4 frames. Storing ``s_t`` and ``s_{t+1}`` per transition would keep every frame 8 times
(56 GB for a million Atari transitions); here each environment step writes one *row*: the
newest frame of ``s_t`` (84x84 uint8), the action taken, the reward, the terminal flag and two
markers. Stacks are rebuilt by index when a minibatch is drawn:

- ``s_t`` = frames of rows ``t-3 .. t``, and ``s_{t+1}`` = rows ``t-2 .. t+1``;
- ``first[t]``: frame ``t`` is the first of an episode, so frames before it in a stack are zeros
  (what ``FrameStackObservation(padding_type="zero")`` and ale-py's vector env showed the agent);
- ``valid[t]``: the step from row ``t`` is a real transition. With NEXT_STEP autoreset, the row
  of an episode's final observation is followed by a reset step whose action is ignored; that
  row is stored (it is the ``s_{t+1}`` of the last transition) but never drawn.

A million Atari transitions take 1M x 7,056 bytes = 7.1 GB of frames plus ~11 MB of the rest,
instead of 56 GB. With ``num_envs`` parallel environments the memory is ``rows x num_envs``:
row ``t`` holds step ``t`` of every environment, so each environment's frames stay consecutive.

Everything lives on ``device`` (the GPU when training there): frames, the per-row fields, and
the seeded generator that draws minibatch indices. On a GPU a draw takes no host round trip
(``sync_free``): it draws ``2n + 64`` candidate indices, keeps the first ``n`` drawable ones
(rejection sampling without asking the host how many were rejected; the chance that fewer than
``n`` of the candidates are drawable is below 1e-30 once most rows are, and such draws are
counted in :attr:`ReplayBuffer.bad_draws`), and gathers the stacks with index tensors that never
leave the device. On the CPU, where asking costs nothing, rejected indices are redrawn until
all are drawable (the draws of earlier fodl versions: same seed, same minibatches). Writing a
vector step is two copies to the device: the frames (from the observation the agent already
acted on there) and one packed row of the small fields.

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
        device: where everything lives and minibatches are returned.
        seed: seeds the generator (on ``device``) that draws minibatch indices.
        sync_free: draw without reading anything back to the host (default: on CUDA).
    """

    def __init__(self, capacity: int, num_envs: int = 1, frame_shape: Sequence[int] = (4,),
                 frame_dtype: torch.dtype = torch.float32, stack: int = 1,
                 device: str | torch.device = "cpu", seed: int = 0,
                 sync_free: bool | None = None) -> None:
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
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        # torch.empty: pages are only committed as rows are written
        self.frames = torch.empty((self.rows, self.num_envs, *self.frame_shape), dtype=frame_dtype,
                                  device=self.device)
        shape = (self.rows, self.num_envs)
        dev = self.device
        self.actions = torch.zeros(shape, dtype=torch.long, device=dev)
        self.rewards = torch.zeros(shape, dtype=torch.float32, device=dev)
        self.terminal = torch.zeros(shape, dtype=torch.bool, device=dev)
        self.first = torch.zeros(shape, dtype=torch.bool, device=dev)
        self.valid = torch.zeros(shape, dtype=torch.bool, device=dev)
        self.bad_draws = torch.zeros((), dtype=torch.long, device=dev)  # see the module docstring
        self.pos = 0          # next row to write
        self.full = False
        self.valid_rows = 0   # transitions written as valid (host count: no device read)
        self.generator = torch.Generator(device=dev).manual_seed(int(seed))
        self.sync_free = dev.type != "cpu" if sync_free is None else bool(sync_free)
        self._window = torch.arange(self.stack - 1, -1, -1, device=dev)  # oldest frame first
        # one packed row of the small fields per vector step, staged in pinned memory on CUDA
        pin = dev.type == "cuda"
        self._meta = [torch.zeros((5, self.num_envs), dtype=torch.float32, pin_memory=pin)
                      for _ in range(2 if pin else 1)]
        self._meta_events: list[Any] = [None] * len(self._meta)
        self._writes = 0

    # -- size ---------------------------------------------------------------------------
    def __len__(self) -> int:
        """Transitions stored (rows written x environments)."""
        return (self.rows if self.full else self.pos) * self.num_envs

    def nbytes(self) -> int:
        """Memory the buffer holds when full, in bytes."""
        meta = sum(a.element_size() * a.numel()
                   for a in (self.actions, self.rewards, self.terminal, self.first, self.valid))
        return self.frames.element_size() * self.frames.numel() + meta

    # -- writing ------------------------------------------------------------------------
    def add(self, frame: Any, action: Any, reward: Any, terminal: Any, first: Any,
            valid: Any) -> None:
        """Write one vector step: for each environment, the newest frame of the observation
        it acted on (a numpy array or a tensor, ideally already on ``device``), the action, the
        reward and terminal flag of the step (``terminal``: no bootstrapping from the next
        state), whether the frame starts an episode, and whether the step is a real transition
        (False for the reset step after an episode's end)."""
        p = self.pos
        if not torch.is_tensor(frame):
            frame = torch.from_numpy(np.asarray(frame))
        self.frames[p].copy_(frame, non_blocking=True)
        k = self._writes % len(self._meta)
        if self._meta_events[k] is not None:
            self._meta_events[k].synchronize()   # the copy from this staging row has finished
        meta = self._meta[k]
        valid = np.asarray(valid, dtype=bool)
        meta.numpy()[:] = np.stack([np.asarray(action, dtype=np.float32).reshape(-1),
                                    np.asarray(reward, dtype=np.float32).reshape(-1),
                                    np.asarray(terminal, dtype=np.float32).reshape(-1),
                                    np.asarray(first, dtype=np.float32).reshape(-1),
                                    valid.astype(np.float32).reshape(-1)])
        m = meta.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self._meta_events[k] = torch.cuda.Event()
            self._meta_events[k].record()
        self._writes += 1
        self.actions[p] = m[0].long()
        self.rewards[p] = m[1]
        self.terminal[p] = m[2] > 0
        self.first[p] = m[3] > 0
        self.valid[p] = m[4] > 0
        self.valid_rows += int(valid.sum())
        self.pos = (p + 1) % self.rows
        if self.pos == 0:
            self.full = True

    # -- sampling -----------------------------------------------------------------------
    def _ok(self, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Whether rows ``t`` of envs ``e`` can be drawn: a real transition whose next row is
        written (not the newest row) and (once the memory has wrapped) whose frame history is
        not overwritten."""
        ok = self.valid[t, e] & (t != (self.pos - 1) % self.rows)
        if self.full and self.stack > 1:
            ok &= (t - self.pos) % self.rows >= self.stack - 1
        return ok

    def sample_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` (row, env) pairs drawn uniformly, with replacement, among drawable rows, as
        index tensors on ``device`` (no host round trip)."""
        hi = self.rows if self.full else self.pos
        if hi < 2 or self.valid_rows == 0:
            raise RuntimeError("the replay memory holds no complete transition yet")
        if not self.sync_free:
            return self._sample_indices_host(n, hi)
        m = 2 * n + 64
        flat = torch.randint(hi * self.num_envs, (m,), generator=self.generator, device=self.device)
        t, e = flat // self.num_envs, flat % self.num_envs
        ok = self._ok(t, e)
        # the first n drawable candidates, in draw order (a stable sort puts them first)
        pick = torch.sort((~ok).to(torch.uint8), stable=True).indices[:n]
        self.bad_draws += (~ok[pick]).sum()
        return t[pick], e[pick]

    def _sample_indices_host(self, n: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rejection sampling that redraws rejected indices (reads the rejection count)."""
        flat = torch.randint(hi * self.num_envs, (n,), generator=self.generator, device=self.device)
        t, e = flat // self.num_envs, flat % self.num_envs
        bad = ~self._ok(t, e)
        for _ in range(1000):  # drawable rows are almost all rows
            if not bool(bad.any()):
                return t, e
            redraw = torch.randint(hi * self.num_envs, (int(bad.sum()),), generator=self.generator,
                                   device=self.device)
            t[bad], e[bad] = redraw // self.num_envs, redraw % self.num_envs
            bad = ~self._ok(t, e)
        raise RuntimeError("could not draw valid transitions from the replay memory")

    def _stacks(self, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Observations at rows ``t`` of envs ``e``: frames ``t-stack+1 .. t``, zeros before
        the episode's first frame. Shape ``(B, stack, *frame)``, or ``(B, *frame)`` for 1."""
        if self.stack == 1:
            return self.frames[t, e]
        rows = (t[:, None] - self._window) % self.rows                      # (B, k), oldest first
        firsts = self.first[rows, e[:, None]].to(torch.int32)
        # a frame is kept when no later frame of the window starts an episode
        later = firsts.flip(1).cumsum(1).flip(1) - firsts
        keep = (later == 0).view(*rows.shape, *([1] * len(self.frame_shape)))
        frames = self.frames[rows, e[:, None]]                              # (B, k, *frame)
        return frames * keep.to(frames.dtype)

    def _n_step_window(self, t: torch.Tensor, e: torch.Tensor, n_step: int):
        """The n-step window of each drawn transition (row ``t`` of env ``e``): the rewards
        ``r_t .. r_{t+m-1}`` (zeros after the window's end), whether the window ends on a
        terminal step, the number ``m`` of steps in it and the row of the state bootstrapped
        from, ``s_{t+m}``. The window stops after ``n_step`` steps, after a terminal step
        (``done``), before a row that is not a transition of the same episode (the reset step
        after a truncated episode: its row holds the final observation, bootstrapped from) and
        at the newest row written (a shorter window, bootstrapped from the newest state)."""
        k = torch.arange(n_step, device=self.device)
        rows = (t[:, None] + k) % self.rows                                  # (B, n)
        ec = e[:, None]
        # rows written after t: the window may use rows t .. t+avail-1, bootstrap at <= t+avail
        avail = (self.pos - 1 - t) % self.rows
        ok = self.valid[rows, ec] & (k < avail[:, None])
        term = self.terminal[rows, ec]
        # step k is in the window when steps 0..k-1 are and none of them was terminal
        stop_before = torch.zeros_like(ok)
        stop_before[:, 1:] = term[:, :-1]
        inside = (ok & ~stop_before).to(torch.int32).cumprod(1).bool()
        inside[:, 0] = True                                                  # a drawn transition
        m = inside.sum(1)
        last = rows.gather(1, (m - 1)[:, None]).squeeze(1)
        rewards = self.rewards[rows, ec] * inside
        return rewards, self.terminal[last, e], m, (last + 1) % self.rows

    def sample(self, batch_size: int, n_batches: int | None = None, n_step: int = 1):
        """A minibatch ``{"obs", "action", "reward", "done", "next_obs"}`` on ``device``
        (``done`` is the float terminal flag: 1 means no bootstrap), or a list of
        ``n_batches`` of them drawn in one gather.

        ``n_step > 1``: n-step transitions (Sutton 1988; Rainbow, Hessel et al. 2018), all on
        ``device``: ``reward`` is ``(B, n_step)``, the rewards ``r_t .. r_{t+m-1}`` of each
        transition's window (zeros after its end, see :meth:`_n_step_window`), ``steps`` the float
        ``m`` (the bootstrap is discounted by ``gamma ** m``), ``done`` whether the window
        ends on a terminal step and ``next_obs`` the state ``s_{t+m}``. ``n_step=1`` is the
        one-step batch above."""
        n = batch_size * (n_batches or 1)
        t, e = self.sample_indices(n)
        if n_step > 1:
            rewards, done, m, nxt = self._n_step_window(t, e, int(n_step))
            batch = {"obs": self._stacks(t, e), "action": self.actions[t, e], "reward": rewards,
                     "done": done.float(), "steps": m.float(), "next_obs": self._stacks(nxt, e)}
        else:
            batch = {
                "obs": self._stacks(t, e),
                "action": self.actions[t, e],
                "reward": self.rewards[t, e],
                "done": self.terminal[t, e].float(),
                "next_obs": self._stacks((t + 1) % self.rows, e),
            }
        if n_batches is None:
            return batch
        parts = {k: v.split(batch_size) for k, v in batch.items()}
        return [{k: parts[k][i] for k in batch} for i in range(n_batches)]

    # -- inspection (tests, debugging) --------------------------------------------------
    def drawable(self) -> np.ndarray:
        """Boolean (rows, envs) numpy array of the rows :meth:`sample` can return."""
        t = torch.arange(self.rows, device=self.device).repeat_interleave(self.num_envs)
        e = torch.arange(self.num_envs, device=self.device).repeat(self.rows)
        ok = self._ok(t, e).view(self.rows, self.num_envs).cpu().numpy().copy()
        if not self.full:
            ok[self.pos:] = False
        return ok

    def observation(self, t: int, e: int) -> torch.Tensor:
        """The (rebuilt) observation stored at row ``t`` of env ``e``."""
        idx = torch.tensor([t], device=self.device), torch.tensor([e], device=self.device)
        return self._stacks(*idx)[0]
