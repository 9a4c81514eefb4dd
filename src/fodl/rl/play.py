"""Play a trained agent and record a video (``scripts/play.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fodl.errors import FodlError


def play(ckpt_path: str | Path, episodes: int = 3, out: str | Path | None = None,
         seed: int = 0, epsilon: float | None = None, fps: int = 30, every: int = 1,
         scale: float = 1.0, max_steps: int | None = None) -> dict[str, Any]:
    """Play ``episodes`` episodes with the agent of a fodl checkpoint, rendering every
    ``every``-th frame into ``out`` (``.gif``; ``.mp4`` when PyAV is installed).

    The agent acts with its evaluation policy (DQN: ``eval_epsilon``, or ``epsilon`` given
    here; policy gradient: its ``eval_mode``). Returns the episodes' returns and lengths and
    the video path.
    """
    from fodl.checkpoint import load_module
    from fodl.rl.envs import make_env

    module, _, cfg = load_module(ckpt_path)
    if not callable(getattr(module, "act", None)) or "env" not in cfg:
        raise FodlError(f"{ckpt_path} holds a {type(module).__name__}, not a chapter 9 agent: "
                        "play.py plays checkpoints of model=dqn or model=policy_gradient.")
    if epsilon is not None:
        if not hasattr(module, "eval_epsilon"):
            raise FodlError("--epsilon applies to DQN agents only.")
        module.eval_epsilon = float(epsilon)
    module.eval()
    env = make_env(cfg.env, render_mode="rgb_array" if out else None)
    g = torch.Generator().manual_seed(seed)
    frames: list[np.ndarray] = []
    results = []
    try:
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + k)
            ret, length, done = 0.0, 0, False
            if out:
                frames.append(env.render())
            while not done:
                action = module.act(torch.as_tensor(obs)[None], g, explore=False, env_steps=0,
                                    episodes=0)
                obs, reward, terminated, truncated, info = env.step(int(action[0]))
                ret += float(reward)
                length += 1
                done = terminated or truncated or (max_steps is not None and length >= max_steps)
                if out and length % every == 0:
                    frames.append(env.render())
            score = info.get("episode", {}).get("r", ret) if (terminated or truncated) else ret
            results.append({"episode": k, "return": float(np.asarray(score)), "length": length})
    finally:
        env.close()
    video = _write_video(frames, Path(out), fps, scale) if out else None
    return {"episodes": results, "video": str(video) if video else None}


def _write_video(frames: list[np.ndarray], path: Path, fps: int, scale: float) -> Path:
    from PIL import Image

    if not frames:
        raise FodlError("no frames were rendered")
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    if scale != 1.0:
        w, h = images[0].size
        images = [im.resize((max(1, int(w * scale)), max(1, int(h * scale)))) for im in images]
    suffix = path.suffix.lower()
    if suffix == ".gif":
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    elif suffix == ".mp4":
        try:
            from torchvision.io import write_video
            arr = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
            write_video(str(path), arr, fps=fps)
        except (ImportError, RuntimeError) as e:
            raise FodlError(f"Writing {path} needs PyAV (pip install av): {e}. Or give a .gif path.") from None
    else:
        raise FodlError(f"--out {path}: give a .gif or .mp4 file name.")
    return path
