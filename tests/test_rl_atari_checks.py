"""Chapter 9: the Atari learning path checked on real Pong frames (on the CPU; on a GPU too, where
one is present, for the CUDA data path).

- Action semantics end to end: a scripted Q-network that reads the ball's and the agent's
  paddle's heights from the newest frame of the observation it is given, acting through
  ``DQNModule.act`` and the collector (ale-py's vector env, the training path), keeps the ball
  in play where random play, the same policy with up and down swapped, and the same policy
  reading the oldest frame of the stack lose a point every ~40 steps: the action indices the
  net outputs are the moves meant, the stacks are oldest-to-newest in acting and in the replay
  memory, the net is given the observations the env has just returned, and rewards land in the
  column of the game that earned them. The single-env path has the same action set and frames.
- The learning target on real replay: n-step double-DQN targets of minibatches drawn from a
  replay filled through the collector, recomputed by hand from what the environments returned
  (discounts, terminal masking at a game over, windows cut at a time limit, the state
  bootstrapped from being the observation ``m`` steps later in the same game), on both
  samplers (host and the GPU's sync-free one); the uint8 -> float scaling the Q-net applies is
  the same for acting, replay minibatches and the single-environment path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import RecordingVectorEnv

pytest.importorskip("gymnasium")
pytest.importorskip("ale_py")

from fodl.models.dqn import DQNModule  # noqa: E402
from fodl.models.rl import build_net  # noqa: E402
from fodl.nets.rl import NatureCNN  # noqa: E402
from fodl.rl.envs import EnvSpec, make_env, make_vector_env  # noqa: E402
from fodl.rl.replay import ReplayBuffer  # noqa: E402
from fodl.rl.rollout import StepCollector  # noqa: E402

NOOP, UP, DOWN = 0, 2, 3   # Pong's minimal action set: RIGHT moves the paddle up, LEFT down
PONG_ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]


class PongTracker(nn.Module):
    """Q-values whose argmax moves the agent's paddle towards the ball, read from one 84x84
    grey frame of each observation: the ball is the only bright (>= 200) object between the
    walls (rows 14-76), the agent's paddle the non-background pixels in columns 72-76.

    ``modes`` (one per row of the acting batch, i.e. per game): ``"track"`` reads the newest
    frame (the last of the stack); ``"away"`` swaps up and down; ``"oldest"`` reads the first
    frame of the stack (what a reversed stack order would give the net); ``"random"`` picks a
    pseudo-random action from the frame's pixel sum. Keeps a copy of every batch it is given."""

    def __init__(self, modes: list[str]) -> None:
        super().__init__()
        self.head = nn.Linear(1, len(PONG_ACTIONS))   # lets DQNModule count the actions
        self.modes = modes
        self.inputs: list[torch.Tensor] = []

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        self.inputs.append(obs.clone())
        n = obs.shape[0]
        mode, dev = np.array(self.modes[:n]), obs.device
        oldest = torch.as_tensor(mode == "oldest", device=dev)
        frame = torch.where(oldest[:, None, None], obs[:, 0], obs[:, -1])
        play = frame[:, 14:77].int()
        rows = torch.arange(play.shape[1], device=dev)[None, :, None]
        ball = play >= 200
        paddle = torch.zeros_like(ball)
        paddle[:, :, 72:77] = ((play[:, :, 72:77] - 87).abs() > 12) & (play[:, :, 72:77] < 200)
        seen = ball.any(2).any(1) & paddle.any(2).any(1)
        ball_y = (ball * rows).sum((1, 2)) / ball.sum((1, 2)).clamp(min=1)
        paddle_y = (paddle * rows).sum((1, 2)) / paddle.sum((1, 2)).clamp(min=1)
        up, down = seen & (ball_y < paddle_y - 1), seen & (ball_y > paddle_y + 1)
        away = torch.as_tensor(mode == "away", device=dev)
        up, down = torch.where(away, down, up), torch.where(away, up, down)
        q = torch.zeros(n, len(PONG_ACTIONS), device=dev)
        q[:, NOOP] = 0.5
        q[up, UP] = 1.0
        q[down, DOWN] = 1.0
        noise = obs.long().sum((1, 2, 3)) * 2654435761 % len(PONG_ACTIONS)
        rand = torch.as_tensor(mode == "random", device=dev)
        q[rand] = 0.0
        q[rand, noise[rand]] = 1.0
        return q


def test_pong_action_sets_and_stacks_agree_between_the_paths_and_the_net():
    """The single-env path, ale-py's vector env and the Q-net sized from the config all use
    Pong's minimal action set of 6, in the same order; with no-op starts off, the two paths give
    the same frame stacks for the same paddle moves, oldest frame first (each stack is the
    previous one shifted by one frame), and the paddle moves up on UP and down on DOWN."""
    spec = EnvSpec.from_config({"id": "ALE/Pong-v5", "noop_max": 0})
    single = make_env(spec)
    vector = make_vector_env(spec, 2)
    try:
        assert single.unwrapped.get_action_meanings() == PONG_ACTIONS
        assert [a.name for a in vector.env.ale.get_action_set()] == PONG_ACTIONS
        assert single.action_space.n == vector.single_action_space.n == len(PONG_ACTIONS)
        net = build_net(lambda obs_shape, num_actions: NatureCNN(obs_shape, num_actions), spec)
        assert DQNModule(net).num_actions == len(PONG_ACTIONS)
        a, _ = single.reset(seed=4)
        b, _ = vector.reset(seed=[4, 5])
        assert np.array_equal(a, b[0])
        heights = []
        for action in [UP] * 6 + [DOWN] * 12:
            a2, *_ = single.step(action)
            b2, *_ = vector.step(np.array([action, NOOP]))
            assert np.array_equal(a2, b2[0])
            assert np.array_equal(a2[:3], a[1:]) and np.array_equal(b2[0, :3], b[0, 1:])
            paddle = np.argwhere((np.abs(a2[-1, 14:77, 72:77].astype(int) - 87) > 12)
                                 & (a2[-1, 14:77, 72:77] < 200))
            heights.append(paddle[:, 0].mean())
            a, b = a2, b2
        assert heights[5] < heights[0] - 10 and heights[17] > heights[6] + 20, heights
    finally:
        single.close()
        vector.close()


# the collector and the replay memory on every device here (a GPU: pinned staging, the sync-free
# sampler and acting there, as in GPU training)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_scripted_pong_policy_through_the_agent_keeps_the_ball_in_play(device):
    """Eight Pong games through the training path (ale-py's vector env, the collector with
    overlapped steps, DQNModule.act with epsilon 0). A Q-net that moves the paddle towards the
    ball loses far fewer points than random play; the same net with up and down swapped, or
    reading the oldest frame of the stack as if it were the newest, loses at least as fast as
    random play. So: the net's action indices are the moves meant, the stack's newest frame is
    last, and each game's rewards land in its own column of the replay memory (the policy
    differs per game). The net is given, at every step, exactly the observations the vector env
    returned at the step before (current, in the env's order, uint8), and every stored action is
    the net's greedy action on the stack the replay memory rebuilds for it."""
    modes = ["track", "random", "away", "oldest"] * 2
    steps = 400
    tracker = PongTracker(modes)
    agent = DQNModule(tracker, epsilon_start=0.0, epsilon_end=0.0).to(device)
    spec = EnvSpec.from_config({"id": "ALE/Pong-v5", "num_threads": 4})   # several emulator threads
    envs = RecordingVectorEnv(make_vector_env(spec, len(modes)))
    assert envs.envs.num_envs == 8 and hasattr(envs.envs, "send")   # ale-py's vector env
    buf = ReplayBuffer(8 * (steps + 2), num_envs=8, frame_shape=(84, 84), frame_dtype=torch.uint8,
                       stack=4, device=device)
    col = StepCollector(envs, buf, seed=5, life_loss=True, stacked=True)
    for _ in range(steps // 4):
        col.collect(agent, 32, overlap=True)
    col.finish()
    col.close()
    lost = (buf.rewards[:buf.pos] < 0).sum(0).cpu().numpy()
    by_mode = {m: int(sum(lost[i] for i in range(8) if modes[i] == m)) for m in set(modes)}
    assert by_mode["random"] >= 10, by_mode              # random play loses a point every ~40 steps
    assert by_mode["track"] <= by_mode["random"] / 2, by_mode   # measured: 6 vs 18
    assert by_mode["away"] >= 0.8 * by_mode["random"], by_mode
    assert by_mode["oldest"] >= 0.8 * by_mode["random"], by_mode
    # ale-py returns the games in their order (row i is game i, whatever thread stepped it)
    assert all(np.array_equal(info["env_id"], np.arange(8)) for *_, info in envs.log)
    # what the net was given: the observations returned by the step before, uint8
    assert len(tracker.inputs) == len(envs.log) == steps
    for i in range(1, steps):
        assert torch.equal(tracker.inputs[i].cpu(), torch.as_tensor(envs.log[i - 1][0]))
    assert tracker.inputs[0].dtype == torch.uint8
    # every transition's stored action is the greedy action on its rebuilt observation (the
    # games as one batch: the net's policy differs per row)
    del tracker.inputs[:]
    rows = np.flatnonzero(buf.drawable().all(1))
    assert len(rows) > 0.95 * steps
    obs = torch.stack([torch.stack([buf.observation(int(t), e) for e in range(8)]) for t in rows])
    greedy = torch.stack([tracker(o).argmax(1) for o in obs])
    assert torch.equal(greedy, buf.actions[torch.as_tensor(rows, device=buf.device)])
    assert (greedy[:, 0] != NOOP).float().mean() > 0.3    # the tracking paddle moved


def _replay_with_log(spec: EnvSpec, steps: int, seed: int, device: str):
    """A replay memory filled through the collector from 2 Pong games (the first 10 vector
    steps at random, then the paddle moved away from the ball, with epsilon 0.2: a game is
    over in ~770 steps), with the actions sent and everything each step returned."""
    envs = RecordingVectorEnv(make_vector_env(spec, 2, "ale"))
    buf = ReplayBuffer(2 * (steps + 2), num_envs=2, frame_shape=(84, 84), frame_dtype=torch.uint8,
                       stack=4, seed=seed, device=device)
    col = StepCollector(envs, buf, seed=seed, life_loss=True, stacked=True)
    agent = DQNModule(PongTracker(["away", "away"]), epsilon_start=0.2, epsilon_end=0.2).to(device)
    col.reset()
    seen = []        # the observation each vector step acted on
    for _ in range(steps):
        seen.append(col.obs.copy())
        col.step(None if len(seen) <= 10 else agent)
    col.close()
    return buf, seen, envs


def _hand_window(log, t: int, e: int, n: int, gamma: float, newest: int):
    """The n-step return, terminal flag, length m and bootstrap state of the transition taken
    at vector step ``t`` in game ``e``, and whether a time limit cut its window, from what the
    environment returned (``newest``: the last step whose next observation the replay holds)."""
    g, m = 0.0, 0
    for k in range(n):
        j = t + k
        if j > newest:
            break
        _, reward, term, trunc, info = log[j]
        g += gamma ** k * float(reward[e])
        m += 1
        if term[e] or info["life_lost"][e]:
            return g, True, m, log[j][0][e], False
        if trunc[e]:
            return g, False, m, log[j][0][e], True   # bootstrap from the cut game's final frame
    return g, False, m, log[t + m - 1][0][e], False


@pytest.mark.parametrize("device", DEVICES)
def test_n_step_double_dqn_targets_on_real_pong_replay(device):
    """Minibatches drawn from a replay filled with real Pong steps through the collector, by
    the host sampler and by the GPU's sync-free one: observations, actions, n-step rewards,
    terminal flags, window lengths and the state bootstrapped from (the observation m steps
    later in the same game) equal what the environment returned, and DQNModule's double-DQN
    target equals sum_k gamma^k r_{t+k} + gamma^m (1 - done) Q_target(s', argmax Q_online(s'))
    computed here. Game overs (whole games) and time-limit cuts (a second run of 150-step
    games) are both drawn."""
    n, gamma = 3, 0.9
    online, target = NatureCNN((4, 84, 84), 6), NatureCNN((4, 84, 84), 6)
    module = DQNModule(online, gamma=gamma, double=True)
    module.target_net.load_state_dict(target.state_dict())
    module.to(device)
    target.to(device)
    cases = {"terminal": 0, "cut": 0, "short": 0, "rewarded": 0}
    for spec, steps in ((EnvSpec.from_config({"id": "ALE/Pong-v5"}), 800),
                        (EnvSpec.from_config({"id": "ALE/Pong-v5", "max_episode_steps": 50}), 130)):
        buf, seen, envs = _replay_with_log(spec, steps, seed=3, device=device)
        # the steps up to n before every game's end (game over or time limit), drawn for sure
        ends = [(j - k, i) for j, (_, _, term, trunc, _) in enumerate(envs.log)
                for i in np.flatnonzero(term | trunc) for k in range(n)]
        assert ends
        for sync_free in (False, True):
            buf.sync_free = sync_free
            t, e = buf.sample_indices(64)
            assert buf.drawable()[t.cpu().numpy(), e.cpu().numpy()].all()
            t = torch.cat([t, torch.tensor([j for j, _ in ends], device=buf.device)])
            e = torch.cat([e, torch.tensor([i for _, i in ends], device=buf.device)])
            drawn = buf.sample_indices
            buf.sample_indices = lambda k: (t, e)
            batch = {k: v.cpu() for k, v in buf.sample(len(t), n_step=n).items()}
            buf.sample_indices = drawn
            want = [_hand_window(envs.log, ti, ei, n, gamma, buf.pos - 2)
                    for ti, ei in zip(t.tolist(), e.tolist())]
            g = torch.tensor([w[0] for w in want])
            done = torch.tensor([w[1] for w in want], dtype=torch.float32)
            m = torch.tensor([w[2] for w in want], dtype=torch.float32)
            nxt = torch.as_tensor(np.stack([w[3] for w in want]))
            cases["terminal"] += int(done.sum())
            cases["cut"] += sum(w[4] for w in want)
            cases["short"] += int((m < n).sum())
            cases["rewarded"] += int((g != 0).sum())
            assert np.array_equal(batch["obs"].numpy(),
                                  np.stack([seen[ti][ei] for ti, ei in zip(t.tolist(), e.tolist())]))
            assert batch["action"].tolist() == [int(envs.sent[ti][ei])
                                                for ti, ei in zip(t.tolist(), e.tolist())]
            assert torch.equal(batch["next_obs"], nxt)
            assert batch["obs"].dtype == batch["next_obs"].dtype == torch.uint8
            powers = gamma ** torch.arange(n, dtype=torch.float32)
            assert torch.allclose((batch["reward"] * powers).sum(1), g, atol=1e-6)
            assert torch.equal(batch["done"], done) and torch.equal(batch["steps"], m)
            assert set(batch["reward"].unique().tolist()) <= {-1.0, 0.0, 1.0}
            # the module's target, and the same computed here from the states built by hand
            with torch.no_grad():
                s2 = nxt.to(device)
                v = target(s2).gather(1, online(s2).argmax(1, keepdim=True)).squeeze(1).cpu()
                y = g + gamma ** m * (1 - done) * v
                on_device = {k: x.to(device) for k, x in batch.items()}
                assert torch.allclose(module.td_target(on_device).cpu(), y, atol=1e-4)
                # uint8 -> float is x / 255 for replay minibatches (and acting: same net, same dtype)
                x = batch["obs"][:8].to(device)
                assert torch.allclose(online(x), online(x.float() / 255.0))
    assert cases["terminal"] >= 4 and cases["cut"] >= 4 and cases["rewarded"] >= 10, cases
    # the single-env path gives the net the same uint8 stacks (scaled by the same net)
    single = make_env(EnvSpec.from_config({"id": "ALE/Pong-v5"}))
    obs, _ = single.reset(seed=0)
    single.close()
    assert obs.dtype == np.uint8 and obs.shape == (4, 84, 84) and obs.max() > 200
