#!/usr/bin/env python
"""Two reinforcement-learning benchmarks.

Default: fodl's DQN vs Stable-Baselines3's DQN on CartPole-v1: same hyperparameters (SB3
zoo's), same env steps and seeds, one process; prints env steps/s and final evaluation returns.

    pip install -e ".[bench]"
    python scripts/benchmark_rl.py                          # seeds 0 1 2, 49,920 steps each
    python scripts/benchmark_rl.py --seeds 0 --threads 2 trainer.max_epochs=6   # fodl overrides

``--atari``: DQN on Pong (Nature net, conf/rl/dqn_atari.yaml) through the single-environment
path (env.num_envs=1, gymnasium's wrappers) and the vectorised path (ale-py's vector env,
env.num_envs games), alternating in one process; prints training env steps/s of each (after the
random warm-up), the machine's load, and the ratio.

    python scripts/benchmark_rl.py --atari                  # 2,000 training steps per path, 2 rounds
    python scripts/benchmark_rl.py --atari --steps 4000 --rounds 3 env.num_envs=16

``--breakdown``: where one vector step of DQN training goes (act, env step, replay write,
sampling, update: ms each), then env steps/s of the same loop pipelined, with and without the
env step overlapping the update; for any DQN run's overrides:

    python scripts/benchmark_rl.py --breakdown experiment=fast/dqn_pong_gpu --accelerator gpu
"""

import argparse
import sys
import time
from pathlib import Path

from fodl.analysis.rl_bench import atari_benchmark, benchmark, step_breakdown
from fodl.errors import reports_errors


@reports_errors
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for fodl's model=dqn config "
                   "(SB3 is given the same values)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for both (0: PyTorch's default)")
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--skip-fodl", action="store_true")
    p.add_argument("--atari", action="store_true", help="Pong: single-env vs vectorised path")
    p.add_argument("--steps", type=int, default=2000, help="--atari: training env steps per run")
    p.add_argument("--learning-starts", type=int, default=1000, help="--atari: random steps first")
    p.add_argument("--rounds", type=int, default=2, help="--atari: runs of each path, alternating")
    p.add_argument("--breakdown", action="store_true", help="time the parts of a vector step")
    p.add_argument("--vector-steps", type=int, default=100, help="--breakdown: vector steps timed")
    p.add_argument("--accelerator", default="cpu", help="--breakdown: cpu or gpu")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks") / time.strftime("rl_%Y-%m-%d_%H-%M-%S"))
    a = p.parse_intermixed_args()
    if a.breakdown:
        step_breakdown(a.overrides, a.out.resolve(), a.vector_steps, a.accelerator)
        return
    if a.atari:
        atari_benchmark(a.out.resolve(), a.steps, a.learning_starts, a.rounds, a.overrides, a.threads)
        return
    benchmark(a.seeds, a.out.resolve(), a.overrides, a.eval_episodes, a.threads, a.skip_sb3, a.skip_fodl)


if __name__ == "__main__":
    sys.exit(main())
