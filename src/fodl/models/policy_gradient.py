"""Policy gradient (REINFORCE) as in book chapter 9: a net maps states to a softmax over
actions, episodes are played with it, and the loss is

    loss = - mean_t [ log pi(a_t | s_t) * A_t ]

where ``A_t`` is the discounted return ``G_t = sum_k gamma^k r_{t+k}`` of the step,
standardised over the batch (``normalize_returns``: subtracting the batch mean is a baseline),
or ``G_t - V(s_t)`` with a learned state-value baseline (``baseline: value``; Sutton & Barto
13.4), optionally plus an entropy bonus.

The book's code acts epsilon-greedily on the softmax (argmax, or a random action with an
epsilon annealed over episodes) and uses the raw returns with gamma 0.98;
``exploration=epsilon_greedy normalize_returns=false`` reproduces that
(``experiment=book/ch9_policy_gradient``). Sampling from the softmax (the default) is what the
REINFORCE gradient assumes.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fodl.errors import FodlError
from fodl.models.rl import AgentModule, build_net
from fodl.rl.returns import discounted_returns, normalize
from fodl.rl.schedule import LinearSchedule


class PolicyGradientModule(AgentModule):
    """REINFORCE around an injected policy net (logits out).

    Args:
        net: the policy net, or a partial taking ``obs_shape`` and ``num_actions``.
        env: the environment spec (``${env}``), to size the nets.
        optimizer, scheduler, scheduler_interval, gradient_clip_val: the shared loop's settings.
        gamma: discount factor of the returns.
        normalize_returns: standardise the advantages over each batch.
        baseline: ``null`` or ``value`` (a learned ``V(s)`` subtracted from the returns).
        value_net: the value net (partial, one output) when ``baseline=value``.
        value_coef: weight of the value net's squared error in the loss.
        entropy_coef: weight of the entropy bonus (0: none).
        exploration: ``sample`` (from the softmax) or ``epsilon_greedy`` (the book's code:
            argmax, or a random action with probability epsilon).
        epsilon_start, epsilon_end, epsilon_decay_episodes: the book's annealed epsilon, over
            episodes.
        eval_mode: evaluation episodes act ``greedy`` (the most likely action) or ``sample``.
        log_every_env_steps, torch_threads, fused_optimizer: see :class:`~fodl.models.rl.AgentModule`.
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
        normalize_returns: bool = True,
        baseline: str | None = None,
        value_net: nn.Module | Callable[..., nn.Module] | None = None,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        exploration: str = "sample",
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.001,
        epsilon_decay_episodes: int = 3000,
        eval_mode: str = "greedy",
        log_every_env_steps: int = 1000,
        torch_threads: int | None = None,
        fused_optimizer: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, gradient_clip_val,
                         log_every_env_steps, torch_threads, fused_optimizer)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "value_net", "env"], logger=False)
        self.net = build_net(net, env)
        self.baseline = None if baseline in (None, "none") else baseline
        if self.baseline == "value":
            if value_net is None:
                raise FodlError("model.baseline=value needs model.value_net (a net with one output).")
            self.value_net = build_net(value_net, env, num_actions=1)
        self.gamma = gamma
        self.normalize_returns = normalize_returns
        self.value_coef = value_coef
        self.entropy_coef = entropy_coef
        self.exploration = exploration
        self.epsilon = LinearSchedule(epsilon_start, epsilon_end, epsilon_decay_episodes)
        self.eval_mode = eval_mode
        self._entropies: list[torch.Tensor] = []
        self._episodes = 0

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    # -- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator, *, explore: bool,
            env_steps: int, episodes: int) -> torch.Tensor:
        logits = self.net(obs).float().cpu()
        self._episodes = episodes
        mode = (self.exploration if explore else
                ("sample" if self.eval_mode == "sample" else "greedy"))
        if mode == "sample":
            return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(1)
        greedy = logits.argmax(1)
        if mode == "greedy":
            return greedy
        n = obs.shape[0]
        coin = torch.rand(n, generator=generator)
        random_actions = torch.randint(logits.shape[1], (n,), generator=generator)
        return torch.where(coin < self.epsilon(episodes), random_actions, greedy)

    # -- learning --------------------------------------------------------------------------
    def returns(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        g = discounted_returns(batch["reward"].cpu().numpy(), self.gamma, batch["done"].cpu().numpy())
        return torch.from_numpy(g).to(batch["reward"].device)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        g = self.returns(batch)
        logits = self.run_net(batch["obs"])
        logp_all = F.log_softmax(logits, -1)
        logp = logp_all.gather(1, batch["action"][:, None]).squeeze(1)
        loss = logits.new_zeros(())
        advantage = g
        if self.baseline == "value":
            v = self.value_net(batch["obs"]).squeeze(-1)
            loss = loss + self.value_coef * F.mse_loss(v, g)
            advantage = g - v.detach()
        if self.normalize_returns:
            advantage = normalize(advantage)
        loss = loss - (logp * advantage).mean()
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        self._entropies.append(entropy.detach())
        if self.entropy_coef:
            loss = loss - self.entropy_coef * entropy
        return loss

    def train_scalars(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.exploration == "epsilon_greedy":
            out["epsilon"] = self.epsilon(self._episodes)
        if self._entropies:
            out["entropy"] = float(torch.stack(self._entropies).mean())
            self._entropies.clear()
        return out
