"""Chapter 9 (deep reinforcement learning): environments, replay memory, exploration schedules,
returns and the loops that step environments with a policy.

Nothing here knows Lightning. The DataModules in :mod:`fodl.data.rl` drive these parts inside the
trainer's loop; the agents (:mod:`fodl.models.policy_gradient`, :mod:`fodl.models.dqn`) only say
how to act and what loss to minimise.

``gymnasium`` and ``ale-py`` are imported lazily (the ``rl`` extra: ``pip install -e ".[rl]"``),
so ``import fodl`` works without them.
"""

from fodl.rl.replay import ReplayBuffer
from fodl.rl.returns import discounted_returns, normalize
from fodl.rl.schedule import LinearSchedule

__all__ = ["ReplayBuffer", "LinearSchedule", "discounted_returns", "normalize"]
