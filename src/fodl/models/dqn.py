"""Deep Q-learning (book chapter 9; Mnih et al. 2015, "Human-level control through deep
reinforcement learning").

The Q-network ``Q(s, .; theta)`` is fitted to the Bellman target computed with a *target
network* ``theta^-`` that is a periodic copy of ``theta``::

    y = r + gamma * (1 - terminal) * max_a' Q(s', a'; theta^-)                  (DQN)
    y = r + gamma * (1 - terminal) * Q(s', argmax_a' Q(s', a'; theta); theta^-)  (double DQN)
    y = sum_k gamma^k r_{t+k} + gamma^m (1 - terminal) * V(s_{t+m})   (n-step, data.n_step)
    loss = mean Huber(Q(s, a; theta) - y)        (the paper's error clipping to [-1, 1])

on minibatches drawn uniformly from the replay memory (:mod:`fodl.data.rl`), acting
epsilon-greedily with epsilon annealed linearly over environment steps.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fodl.data.loader import minibatches_of
from fodl.errors import FodlError
from fodl.models.rl import AgentModule, build_net
from fodl.rl.schedule import LinearSchedule


class DQNModule(AgentModule):
    """DQN / double DQN around an injected Q-network.

    Args:
        net: the Q-network, or a partial taking ``obs_shape`` and ``num_actions`` (sized for
            ``env``): :class:`~fodl.nets.rl.ActionMLP` for CartPole,
            :class:`~fodl.nets.rl.NatureCNN` for Atari.
        env: the environment spec (``${env}``), to size the net.
        optimizer, scheduler, scheduler_interval, gradient_clip_val: the shared loop's
            settings (SB3 clips the gradient norm at 10).
        gamma: discount factor.
        target_update_interval: environment steps between target-network updates, applied
            at the first update after each multiple (SB3's and CleanRL's unit).
        tau: 1.0 copies the weights (hard update); < 1 mixes
            ``theta^- <- tau theta + (1 - tau) theta^-`` (soft / Polyak update), once per
            interval.
        double: double DQN (van Hasselt et al. 2016): the online net picks the next action,
            the target net values it.
        loss: ``huber`` (``huber_delta``, the paper's error clipping) or ``mse``.
        epsilon_start, epsilon_end, epsilon_decay_steps: epsilon-greedy schedule over
            environment steps (the replay warm-up acts at random whatever epsilon says).
        eval_epsilon: epsilon of evaluation episodes (0.05 in the paper).
        log_every_env_steps, torch_threads, fused_optimizer: see :class:`~fodl.models.rl.AgentModule`.
        cuda_graph: on one GPU, the Q-network's forward and backward pass on training
            minibatches as CUDA graphs (:class:`~fodl.models.base.FodlModule`); acting and the
            target network run eagerly, the online net's pass on next states (double DQN)
            replays the forward graph.
    """

    def __init__(
        self,
        net: nn.Module | Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        env: Any = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        gradient_clip_val: float | None = None,
        gamma: float = 0.99,
        target_update_interval: int = 10,
        tau: float = 1.0,
        double: bool = False,
        loss: str = "huber",
        huber_delta: float = 1.0,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_decay_steps: int = 10_000,
        eval_epsilon: float = 0.05,
        log_every_env_steps: int = 1000,
        torch_threads: int | None = None,
        fused_optimizer: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val,
                         log_every_env_steps, torch_threads, fused_optimizer, cuda_graph)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "env"], logger=False)
        self.net = build_net(net, env)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.num_actions = _outputs(self.net)
        self.gamma = gamma
        self.target_update_interval = int(target_update_interval)
        self.tau = float(tau)
        self.double = double
        self.loss_name = loss
        self.huber_delta = huber_delta
        self.epsilon = LinearSchedule(epsilon_start, epsilon_end, epsilon_decay_steps)
        self.eval_epsilon = eval_epsilon
        # target updates done so far, in intervals of environment steps (checkpointed)
        self.register_buffer("target_updates", torch.zeros((), dtype=torch.long))
        self._target_updates: int | None = None   # host copy (reading the buffer syncs a GPU)
        self._q_means: list[torch.Tensor] = []
        self._greedy_counts = torch.zeros(self.num_actions, dtype=torch.long)  # since the last log
        self._q_gaps: list[torch.Tensor] = []

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    # -- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator, *, explore: bool,
            env_steps: int, episodes: int) -> torch.Tensor:
        eps = self.epsilon(env_steps) if explore else self.eval_epsilon
        n = obs.shape[0]
        coin = torch.rand(n, generator=generator)
        random_actions = torch.randint(self.num_actions, (n,), generator=generator)
        explore_mask = coin < eps
        if bool(explore_mask.all()):
            return random_actions  # no forward pass needed
        q = self.run_net(obs)
        greedy = q.argmax(1).cpu()
        if explore:   # what the greedy policy does while training (rollout/greedy_*)
            self._greedy_counts += torch.bincount(greedy, minlength=self.num_actions)
            self._q_gaps.append((q.max(1).values - q.mean(1)).mean().detach())
        return torch.where(explore_mask, random_actions, greedy)

    # -- learning --------------------------------------------------------------------------
    def before_update(self, env_steps: int) -> None:
        due = env_steps // self.target_update_interval
        if self._target_updates is None:
            self._target_updates = int(self.target_updates)
        missed = due - self._target_updates
        if missed <= 0:
            return
        # n soft updates in a row equal one with tau' = 1 - (1 - tau)^n
        tau = 1.0 if self.tau >= 1.0 else 1.0 - (1.0 - self.tau) ** missed
        sync_target(self.target_net, self.net, tau)
        self.target_updates.fill_(due)
        self._target_updates = due

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._target_updates = None   # re-read from the restored buffer

    def prepare_batch(self, batch) -> None:
        """For a group of minibatches (one update of ``gradient_steps`` optimizer steps), compute
        every minibatch's target in one forward pass of the target network: it does not change
        during the update (it is only synchronised between updates), so this is the same target
        as one pass per minibatch, at a fraction of the cost for small nets (SB3 zoo's CartPole
        setting takes 128 steps per update). Double DQN needs the online net, which changes
        after every step, so its targets are computed per minibatch."""
        if self.double or len(minibatches_of(batch)) < 2:
            return
        with torch.no_grad():
            next_v = self.target_net(torch.cat([b["next_obs"] for b in batch])).max(1).values
        for b, v in zip(batch, next_v.split([len(b["reward"]) for b in batch])):
            b["target"] = self.bootstrap(b, v)

    def graph_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["obs"]

    def td_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            next_q = self.target_net(batch["next_obs"])
            if self.double:
                best = self.run_net(batch["next_obs"]).argmax(1, keepdim=True)
                next_v = next_q.gather(1, best).squeeze(1)
            else:
                next_v = next_q.max(1).values
            return self.bootstrap(batch, next_v)

    def bootstrap(self, batch: dict[str, torch.Tensor], next_v: torch.Tensor) -> torch.Tensor:
        """The TD target ``r + gamma * (1 - done) * V(s')`` of a minibatch, given ``V(s')``.
        An n-step minibatch (``data.n_step``: ``reward`` is ``(B, n)``, the rewards of each
        window, ``steps`` its length ``m``) gets
        ``sum_k gamma^k r_{t+k} + gamma^m * (1 - done) * V(s_{t+m})``."""
        r = batch["reward"]
        if r.dim() == 2:
            powers = self.gamma ** torch.arange(r.shape[1], device=r.device, dtype=r.dtype)
            return (r * powers).sum(1) + self.gamma ** batch["steps"] * (1.0 - batch["done"]) * next_v
        return r + self.gamma * (1.0 - batch["done"]) * next_v

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"] if "target" in batch else self.td_target(batch)
        q = self.run_net(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
        self._q_means.append(q.detach().mean())
        if self.loss_name == "huber":
            return F.huber_loss(q, target, delta=self.huber_delta)
        return F.mse_loss(q, target)

    def train_scalars(self) -> dict[str, float]:
        out = {"epsilon": self.epsilon(self.env_steps)}
        if self._q_means:
            out["q_mean"] = float(torch.stack(self._q_means).mean())
            self._q_means.clear()
        total = int(self._greedy_counts.sum())
        if total:   # a policy stuck on one action shows as a share near 1
            out["greedy_top_action_share"] = int(self._greedy_counts.max()) / total
            out["greedy_q_gap"] = float(torch.stack(self._q_gaps).mean())
            self._greedy_counts.zero_()
            self._q_gaps.clear()
        return out

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("train/epsilon", self.epsilon(self.env_steps))


def sync_target(target: nn.Module, online: nn.Module, tau: float = 1.0) -> None:
    """``target <- tau * online + (1 - tau) * target`` (``tau=1``: an exact copy), parameters
    and buffers."""
    with torch.no_grad():
        t = list(target.parameters()) + list(target.buffers())
        o = list(online.parameters()) + list(online.buffers())
        for a, b in zip(t, o):
            if tau >= 1.0 or not a.is_floating_point():
                a.copy_(b)
            else:
                a.lerp_(b, tau)


def _outputs(net: nn.Module) -> int:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise FodlError(f"{type(net).__name__} has no Linear output layer to count actions from.")
    return last[-1].out_features
