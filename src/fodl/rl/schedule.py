"""Exploration schedules."""

from __future__ import annotations


class LinearSchedule:
    """``start`` at step 0, linearly to ``end`` at step ``duration``, then ``end``.

    The epsilon of epsilon-greedy exploration (DQN: 1.0 -> 0.1 over the first million frames in
    the Nature paper; SB3 zoo's CartPole: 1.0 -> 0.04 over 16% of 50k steps). The step is
    whatever counter the caller passes: environment steps for DQN, episodes for the book's
    policy-gradient exploration. ``duration=0`` is the constant ``end``.
    """

    def __init__(self, start: float = 1.0, end: float = 0.05, duration: int = 10_000) -> None:
        if duration < 0:
            raise ValueError(f"duration must be >= 0, got {duration}")
        self.start = float(start)
        self.end = float(end)
        self.duration = int(duration)

    def __call__(self, step: int) -> float:
        if self.duration == 0 or step >= self.duration:
            return self.end
        if step <= 0:
            return self.start
        return self.start + (self.end - self.start) * (step / self.duration)

    def __repr__(self) -> str:
        return f"LinearSchedule({self.start} -> {self.end} over {self.duration})"
