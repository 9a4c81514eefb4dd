"""n-step DQN targets (``data.n_step``): the replay memory's windows and the agent's targets
against hand computations on scripted trajectories, with terminals, truncations (NEXT_STEP
autoreset rows), the newest row and the wrap-around of the circular memory inside windows,
per environment; ``n_step=1`` is the one-step target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import compose_train

pytest.importorskip("gymnasium")

from fodl.errors import FodlError  # noqa: E402
from fodl.models.dqn import DQNModule  # noqa: E402
from fodl.rl.replay import ReplayBuffer  # noqa: E402

# one environment's steps: (reward, terminal, first, valid). Step 2 ends its episode by
# termination; step 3 is the NEXT_STEP autoreset row (its frame is the final observation, it is
# no transition); step 5 ends by truncation (step 6 is its autoreset row); step 9 is the newest.
SCRIPT = [(1, False, True, True), (2, False, False, True), (4, True, False, True),
          (0, False, False, False), (8, False, True, True), (16, False, False, True),
          (0, False, False, False), (32, False, True, True), (64, False, False, True),
          (128, False, False, True)]


class StateValue(torch.nn.Module):
    """Q-values of state id ``s`` (the frame's value): ``[10 s, 10 s + 1]``."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 2)  # lets the module count actions

    def forward(self, x):
        s = x[:, 0].float()
        return torch.stack([10 * s, 10 * s + 1], 1)


def scripted_buffer(capacity_rows: int, steps: int = len(SCRIPT)) -> ReplayBuffer:
    """Env 0 plays SCRIPT; env 1 a running episode with rewards 100 + step, never ending.
    Frames are state ids: the step (env 0) and 20 + step (env 1)."""
    buf = ReplayBuffer(2 * capacity_rows, num_envs=2, frame_shape=(1,))
    for s in range(steps):
        r, term, first, valid = SCRIPT[s]
        buf.add(np.array([[s], [20 + s]], np.float32), [0, 1], [r, 100 + s], [term, False],
                [first, s == 0], [valid, True])
    return buf


def draw(buf: ReplayBuffer, pairs, n_step: int):
    """``buf.sample`` for the given (step, env) pairs (the draw replaced by them)."""
    t = torch.tensor([s % buf.rows for s, _ in pairs])
    e = torch.tensor([e for _, e in pairs])
    buf.sample_indices = lambda n: (t, e)
    return buf.sample(len(pairs), n_step=n_step)


def targets(batch, double=False):
    m = DQNModule(net=StateValue(), optimizer=None, gamma=0.5, double=double)
    return m.td_target(batch).tolist()


def test_n_step_windows_and_targets_by_hand():
    buf = scripted_buffer(12)
    drawable = [(s, 0) for s in (0, 1, 2, 4, 5, 7, 8)] + [(s, 1) for s in (0, 6, 7, 8)]
    assert buf.drawable()[:, 0].nonzero()[0].tolist() == [0, 1, 2, 4, 5, 7, 8]
    b = draw(buf, drawable, n_step=3)
    assert b["reward"].shape == (11, 3) and b["obs"][:, 0].tolist() == [0, 1, 2, 4, 5, 7, 8, 20, 26, 27, 28]
    # gamma 0.5; V(s) = max Q = 10 s + 1 of the target net (a copy of the online net here)
    expected = {
        (0, 0): (1 + .5 * 2 + .25 * 4, 1, 3, 3),       # ends on the terminal step 2: no bootstrap
        (1, 0): (2 + .5 * 4, 1, 2, 3),
        (2, 0): (4, 1, 1, 3),
        (4, 0): (8 + .5 * 16, 0, 2, 6),                # truncated after step 5: bootstrap from
        (5, 0): (16, 0, 1, 6),                         # its final observation (row 6)
        (7, 0): (32 + .5 * 64, 0, 2, 9),               # the newest row (9) is as far as it goes
        (8, 0): (64, 0, 1, 9),
        (0, 1): (100 + .5 * 101 + .25 * 102, 0, 3, 23),  # env 1 is not cut by env 0's ends
        (6, 1): (106 + .5 * 107 + .25 * 108, 0, 3, 29),
        (7, 1): (107 + .5 * 108, 0, 2, 29),
        (8, 1): (108, 0, 1, 29),
    }
    for i, pair in enumerate(drawable):
        ret, done, m, nxt = expected[pair]
        assert (b["reward"][i] * 0.5 ** torch.arange(3)).sum().item() == ret, pair
        assert (b["done"][i].item(), b["steps"][i].item(), b["next_obs"][i, 0].item()) == (done, m, nxt), pair
    want = [ret + (0 if done else 0.5 ** m * (10 * nxt + 1)) for ret, done, m, nxt in
            (expected[p] for p in drawable)]
    assert targets(b) == pytest.approx(want, abs=1e-5)
    assert targets(b, double=True) == pytest.approx(want, abs=1e-5)  # argmax 1 on both nets
    # n_step=1: today's one-step batch and target, r + gamma (1 - terminal) V(s_{t+1})
    one = draw(buf, drawable, n_step=1)
    assert set(one) == {"obs", "action", "reward", "done", "next_obs"} and one["reward"].dim() == 1
    first = {(0, 0): 1 + .5 * 11, (1, 0): 2 + .5 * 21, (2, 0): 4, (4, 0): 8 + .5 * 51,
             (5, 0): 16 + .5 * 61, (7, 0): 32 + .5 * 81, (8, 0): 64 + .5 * 91}
    got = targets(one)
    for i, pair in enumerate(drawable):
        if pair in first:
            assert got[i] == pytest.approx(first[pair]), pair
        else:
            s = pair[0]
            assert got[i] == pytest.approx(100 + s + .5 * (10 * (21 + s) + 1)), pair
    # n-step windows on a memory that wrapped: 8 rows, steps 8 and 9 overwrote steps 0 and 1
    wrapped = scripted_buffer(8)
    assert wrapped.pos == 2 and wrapped.drawable()[:, 0].nonzero()[0].tolist() == [0, 2, 4, 5, 7]
    w = draw(wrapped, [(7, 0), (8, 0), (2, 0), (6, 1)], n_step=3)
    assert w["next_obs"][:, 0].tolist() == [9, 9, 3, 29]       # across the end of the memory
    assert (w["reward"] * 0.5 ** torch.arange(3)).sum(1).tolist() == [64, 64, 4, 106 + 53.5 + 27]
    assert w["steps"].tolist() == [2, 1, 1, 3] and w["done"].tolist() == [0, 0, 1, 0]


def test_n_step_sampling_draws_only_valid_windows_on_the_sync_free_path():
    """The GPU's sync-free sampler (here on the CPU) with n-step windows: every window ends at
    the newest row at the latest and never crosses an episode end."""
    buf = scripted_buffer(12)
    buf.sync_free = True
    b = buf.sample(256, n_step=4)
    ids = b["obs"][:, 0].long()
    nxt = b["next_obs"][:, 0].long()
    steps = b["steps"].long()
    assert int(buf.bad_draws) == 0 and (steps >= 1).all() and (steps <= 4).all()
    env0 = ids < 20
    assert (nxt - ids == steps).all()                            # frames are consecutive step ids
    assert (nxt[env0] <= 9).all() and (nxt[~env0] <= 29).all()   # never past the newest row
    # env 0's windows stop at its episode ends (steps 2 terminal -> 3, 5 truncated -> 6)
    for a, z in zip(ids[env0].tolist(), nxt[env0].tolist()):
        assert z in (3, 6, 9) or z - a == 4 or (a < 3 and z <= 3) or (3 < a < 6 and z <= 6)
        assert not (a < 3 < z) and not (a < 6 < z)


def test_n_step_config(tmp_path):
    from fodl.schema import check_config

    cfg = compose_train(["model=dqn", "data.n_step=3"], tmp_path / "r")
    assert cfg.data.n_step == 3
    assert compose_train(["model=dqn"], tmp_path / "s").data.n_step == 1
    with pytest.raises(FodlError, match="data.n_step"):
        check_config(compose_train(["model=dqn", "data.n_step=0"], tmp_path / "t"))
