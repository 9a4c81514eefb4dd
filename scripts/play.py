#!/usr/bin/env python
"""Play a trained chapter 9 agent and record a video.

    python scripts/play.py outputs/dqn/runs/<time>/checkpoints/<best>.ckpt            # -> play.gif next to it
    python scripts/play.py CKPT --episodes 5 --out pong.gif --every 2 --scale 0.5 --epsilon 0.0
"""

import argparse
import json
import sys
from pathlib import Path

from fodl.errors import reports_errors
from fodl.rl.play import play


@reports_errors
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", type=Path)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="video file (.gif, or .mp4 with PyAV); "
                   "default: play.gif next to the checkpoint")
    p.add_argument("--no-video", action="store_true", help="only play and print the returns")
    p.add_argument("--seed", type=int, default=0, help="episode k is reset with seed + k")
    p.add_argument("--epsilon", type=float, default=None, help="DQN: exploration while playing "
                   "(default: the agent's eval_epsilon)")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--every", type=int, default=1, help="keep every n-th frame")
    p.add_argument("--scale", type=float, default=1.0, help="resize frames by this factor")
    p.add_argument("--max-steps", type=int, default=None, help="cut episodes at this many steps")
    a = p.parse_args()
    out = None if a.no_video else (a.out or a.ckpt.parent / "play.gif")
    result = play(a.ckpt, a.episodes, out, a.seed, a.epsilon, a.fps, a.every, a.scale, a.max_steps)
    for ep in result["episodes"]:
        print(json.dumps(ep))
    if result["video"]:
        print(f"video: {result['video']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
