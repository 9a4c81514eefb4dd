"""fodl's DQN and Stable-Baselines3's DQN on CartPole-v1, side by side, and fodl's DQN on Pong
through the single-environment and the vectorised path (:func:`atari_benchmark`), both run by
``scripts/benchmark_rl.py``.

Both train with SB3 zoo's CartPole-v1 hyperparameters (``conf/rl/dqn_cartpole.yaml`` says
which), for the same number of environment steps and the same seeds, in one process with the
same PyTorch thread count, one after the other (the order alternates between seeds, so drift of
a shared machine does not favour one side). Reported per run:

- **env steps/s**: environment steps divided by the wall time of SB3's ``model.learn()`` /
  fodl's ``trainer.fit()`` (acting, replay, updates, logging; fodl with its default callbacks:
  checkpoints, progress bar, parameter histograms, TensorBoard). Neither evaluates during
  training here (fodl: no validation episodes), so the time is training only.
- **final evaluation return**: the final Q-network of each, played by the *same* evaluation code
  on the same seeded episodes, greedily (epsilon 0, SB3's ``deterministic=True``) and at
  epsilon 0.05 (the Nature paper's evaluation).

SB3 is an optional extra (``pip install -e ".[bench]"``), never a dependency of fodl.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fodl.errors import FodlError


class QPolicy:
    """Epsilon-greedy over any Q-function: the common evaluation agent for both libraries."""

    device = torch.device("cpu")

    def __init__(self, q: Callable[[torch.Tensor], torch.Tensor], num_actions: int,
                 epsilon: float) -> None:
        self.q, self.num_actions, self.epsilon = q, num_actions, epsilon

    @torch.no_grad()
    def act(self, obs, generator, *, explore, env_steps, episodes):
        n = obs.shape[0]
        coin = torch.rand(n, generator=generator)
        random_actions = torch.randint(self.num_actions, (n,), generator=generator)
        greedy = self.q(obs.float()).argmax(1).cpu()
        return torch.where(coin < self.epsilon, random_actions, greedy)


def evaluate(q: Callable, episodes: int, seed: int, epsilon: float, env_id: str = "CartPole-v1") -> float:
    """Mean return of ``episodes`` episodes of epsilon-greedy play, environments seeded from
    ``seed`` (identical episodes' starts for every Q-function evaluated with the same seed)."""
    from fodl.rl.envs import make_vector_env
    from fodl.rl.rollout import run_episodes

    envs = make_vector_env({"id": env_id}, min(episodes, 10))
    try:
        agent = QPolicy(q, int(envs.single_action_space.n), epsilon)
        returns = [r for r, _ in run_episodes(agent, envs, episodes, seed)]
    finally:
        envs.close()
    return sum(returns) / len(returns)


def fodl_config(seed: int, output_dir: Path, overrides: list[str]):
    from fodl.config import compose_run

    return compose_run([
        "model=dqn", f"seed={seed}", f"paths.root_dir={output_dir}",
        # training only, as SB3's learn(): no evaluation episodes during fit, no test
        "+trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "test=false",
        "callbacks.model_checkpoint=null", "model.torch_threads=null", *overrides,
    ], output_dir / f"fodl_seed{seed}")


def run_fodl(seed: int, output_dir: Path, overrides: list[str]) -> dict[str, Any]:
    from fodl.train import build

    cfg = fodl_config(seed, output_dir, overrides)
    datamodule, model, trainer = build(cfg)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    steps = int(trainer.callback_metrics["env/steps"])
    net = model.net.eval()
    return {"steps": steps, "seconds": seconds, "q": net, "sps_logged": float(trainer.callback_metrics["env/sps"])}


def sb3_hyperparameters(cfg, total_steps: int) -> dict[str, Any]:
    """SB3 ``DQN`` keyword arguments equal to fodl's config ``cfg`` (SB3 zoo's CartPole-v1 set)."""
    m, d = cfg.model, cfg.data
    return {
        "learning_rate": float(cfg.optimizer.lr), "batch_size": int(d.batch_size),
        "buffer_size": int(d.buffer_size), "learning_starts": int(d.learning_starts),
        "gamma": float(m.gamma), "target_update_interval": int(m.target_update_interval),
        "tau": float(m.tau), "train_freq": int(d.train_freq), "gradient_steps": int(d.gradient_steps),
        "exploration_initial_eps": float(m.epsilon_start), "exploration_final_eps": float(m.epsilon_end),
        "exploration_fraction": float(m.epsilon_decay_steps) / total_steps,
        "max_grad_norm": float(m.gradient_clip_val or 1e9),
        "policy_kwargs": {"net_arch": list(m.net.hidden)},
    }


def run_sb3(seed: int, total_steps: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        from stable_baselines3 import DQN
    except ImportError:
        raise FodlError("The side-by-side benchmark needs Stable-Baselines3: pip install -e "
                        "\".[bench]\" (or pass --skip-sb3).") from None
    import gymnasium as gym

    model = DQN("MlpPolicy", gym.make("CartPole-v1"), seed=seed, device="cpu", verbose=0, **kwargs)
    t0 = time.perf_counter()
    model.learn(total_timesteps=total_steps)
    seconds = time.perf_counter() - t0
    return {"steps": int(model.num_timesteps), "seconds": seconds, "q": model.q_net.eval()}


def benchmark(seeds: list[int], output_dir: Path, overrides: list[str], eval_episodes: int = 20,
              threads: int | None = 1, skip_sb3: bool = False, skip_fodl: bool = False,
              print_fn: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train both on every seed, evaluate, print a table, return the rows."""
    if threads:
        torch.set_num_threads(int(threads))
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, seed in enumerate(seeds):
        cfg = fodl_config(seed, output_dir, overrides)
        total = _planned_steps(cfg)   # SB3 gets fodl's exact step count
        order = ["fodl", "sb3"] if i % 2 == 0 else ["sb3", "fodl"]
        results: dict[str, dict[str, Any]] = {}
        for who in order:
            if who == "fodl" and not skip_fodl:
                results["fodl"] = run_fodl(seed, output_dir, overrides)
                if results["fodl"]["steps"] != total:
                    print_fn(f"note: fodl took {results['fodl']['steps']} steps, SB3 {total}")
            elif who == "sb3" and not skip_sb3:
                results["sb3"] = run_sb3(seed, total, sb3_hyperparameters(cfg, total))
        for who, r in results.items():
            row = {"library": who, "seed": seed, "env_steps": r["steps"], "seconds": round(r["seconds"], 2),
                   "sps": round(r["steps"] / r["seconds"], 1)}
            if "sps_logged" in r:
                row["sps_logged"] = round(r["sps_logged"], 1)
            for eps in (0.0, 0.05):
                row[f"eval_return_eps{eps}"] = evaluate(r["q"], eval_episodes, 10_000 + seed, eps)
            rows.append(row)
            print_fn(json.dumps(row))
    _table(rows, print_fn)
    (output_dir / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def _planned_steps(cfg) -> int:
    d = cfg.data
    chunk = d.num_envs * -(-d.train_freq // d.num_envs)
    warm = -(-(d.learning_starts + 1) // chunk) * chunk
    updates = cfg.trainer.max_epochs * -(-d.steps_per_epoch // chunk)
    return warm + (updates - 1) * chunk


def _table(rows: list[dict[str, Any]], print_fn) -> None:
    print_fn("")
    print_fn("| library | seed | env steps | wall s | env steps/s | eval return (eps 0) | eval return (eps 0.05) |")
    print_fn("|---|---|---|---|---|---|---|")
    for r in rows:
        print_fn(f"| {r['library']} | {r['seed']} | {r['env_steps']} | {r['seconds']} | {r['sps']} | "
                 f"{r['eval_return_eps0.0']:.1f} | {r['eval_return_eps0.05']:.1f} |")
    for lib in ("sb3", "fodl"):
        sel = [r for r in rows if r["library"] == lib]
        if sel:
            sps = sum(r["sps"] for r in sel) / len(sel)
            ret = sum(r["eval_return_eps0.0"] for r in sel) / len(sel)
            solved = sum(r["eval_return_eps0.0"] >= 500 for r in sel)
            print_fn(f"| **{lib} mean** | {len(sel)} seeds | | | **{sps:.0f}** | **{ret:.1f}** ({solved}/{len(sel)} at 500) | |")


# -- Atari: the single-environment path and the vectorised path, side by side -------------------
class _Greedy:
    """The agent's evaluation policy (one forward pass per vector step), for timing acting."""

    def __init__(self, agent) -> None:
        self.agent, self.device = agent, agent.device

    def act(self, obs, generator, *, explore, env_steps, episodes):
        return self.agent.act(obs, generator, explore=False, env_steps=env_steps, episodes=episodes)


class _TrainClock:
    """Lightning callback: env steps and wall time from the first update to the end of fit
    (the random warm-up, which makes no updates, is left out)."""

    def __init__(self) -> None:
        import lightning as L

        clock = self

        class _CB(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if clock.start is None:
                    clock.start = (time.perf_counter(), trainer.datamodule.collector.env_steps,
                                   trainer.datamodule.eval_seconds)

            def on_train_end(self, trainer, pl_module):
                dm = trainer.datamodule
                clock.end = (time.perf_counter(), dm.collector.env_steps, dm.eval_seconds)
                # acting only (env steps, one batched forward pass, replay writes; no updates)
                c, n = dm.collector, clock.act_steps
                t0, s0 = time.perf_counter(), c.env_steps
                c.collect(_Greedy(pl_module), n)
                clock.act_sps = (c.env_steps - s0) / (time.perf_counter() - t0)

        self.callback = _CB()
        self.act_steps = 400
        self.act_sps = 0.0
        self.start: tuple[float, int, float] | None = None
        self.end: tuple[float, int, float] | None = None

    def sps(self) -> tuple[float, int, float]:
        (t0, s0, e0), (t1, s1, e1) = self.start, self.end
        seconds = t1 - t0 - (e1 - e0)
        return (s1 - s0) / seconds, s1 - s0, seconds


ATARI_PATHS = {
    "single": ["env.num_envs=1"],            # gymnasium's Atari wrappers, one game
    "vector": [],                            # ale-py's vector env, env.num_envs (8) games
}


def atari_fodl_config(path: str, output_dir: Path, env_steps: int, learning_starts: int,
                      overrides: list[str]):
    from fodl.config import compose_run

    return compose_run([
        "model=dqn", "env=atari", f"paths.root_dir={output_dir}",
        f"data.learning_starts={learning_starts}", f"data.steps_per_epoch={env_steps}",
        "data.buffer_size=100000", "trainer.max_epochs=1", "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "test=false", "callbacks.model_checkpoint=null",
        "trainer.accelerator=cpu", "model.torch_threads=null", *ATARI_PATHS[path], *overrides,
    ], output_dir / f"{path}")


def run_atari_path(path: str, output_dir: Path, env_steps: int, learning_starts: int,
                   overrides: list[str]) -> dict[str, Any]:
    import os

    from fodl.train import build

    cfg = atari_fodl_config(path, output_dir, env_steps, learning_starts, overrides)
    datamodule, model, trainer = build(cfg)
    clock = _TrainClock()
    trainer.callbacks.append(clock.callback)
    load0 = os.getloadavg()[0]
    trainer.fit(model, datamodule=datamodule)
    sps, steps, seconds = clock.sps()
    return {"path": path, "num_envs": int(cfg.data.num_envs), "train_freq": int(cfg.data.train_freq),
            "gradient_steps": int(cfg.data.gradient_steps), "batch_size": int(cfg.data.batch_size),
            "env_steps": steps, "optimizer_steps": int(trainer.global_step),
            "seconds": round(seconds, 2), "sps": round(sps, 1), "act_only_sps": round(clock.act_sps, 1),
            "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def atari_benchmark(output_dir: Path, env_steps: int = 2000, learning_starts: int = 1000,
                    rounds: int = 2, overrides: list[str] | None = None, threads: int | None = None,
                    print_fn: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train DQN on Pong (Nature net, ``conf/rl/dqn_atari.yaml``'s replay ratio: one minibatch
    of 32 per 4 environment steps) through the single-environment path and the vectorised
    path, alternating ``rounds`` times in this process (drift of a shared machine is shared
    alike); print env steps/s of the training phase (after the random warm-up) of each, then of
    acting alone with the trained net (400 env steps: emulators, one batched forward pass per
    vector step, replay writes; no updates), the machine's load, and the ratios of the means."""
    if threads:
        torch.set_num_threads(int(threads))
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(rounds):
        for path in (("single", "vector") if r % 2 == 0 else ("vector", "single")):
            row = {"round": r, **run_atari_path(path, output_dir / f"r{r}", env_steps,
                                                learning_starts, list(overrides or []))}
            rows.append(row)
            print_fn(json.dumps(row))
    print_fn("")
    print_fn("| path | envs | env steps | optimizer steps | wall s | training env steps/s | "
             "acting-only env steps/s | load (1 min) |")
    print_fn("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print_fn(f"| {r['path']} | {r['num_envs']} | {r['env_steps']} | {r['optimizer_steps']} | "
                 f"{r['seconds']} | {r['sps']} | {r['act_only_sps']} | "
                 f"{r['load_avg_1min'][0]} -> {r['load_avg_1min'][1]} |")
    for key, what in (("sps", "training"), ("act_only_sps", "acting-only")):
        mean = {p: sum(r[key] for r in rows if r["path"] == p) / max(1, sum(r["path"] == p for r in rows))
                for p in ATARI_PATHS}
        if mean["single"] > 0:
            print_fn(f"mean {what} env steps/s: single {mean['single']:.1f}, vector "
                     f"{mean['vector']:.1f}, ratio {mean['vector'] / mean['single']:.1f}x")
    (output_dir / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


BREAKDOWN_PHASES = ("act", "env", "replay_add", "sample", "update")


def step_breakdown(overrides: list[str], output_dir: Path, vector_steps: int = 100,
                   accelerator: str = "cpu", print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Where one vector step of DQN training goes, for the run ``overrides`` describe (e.g.
    ``experiment=fast/dqn_pong_gpu``): the same parts the training loop runs (the module,
    replay memory and collector of :mod:`fodl.data.rl`), outside Lightning.

    1. **phases**, timed one by one (the device synchronised after each, so each phase's time
       is its own): ``act`` (observations to the device, one batched forward pass, actions to
       the host), ``env`` (the vector env's step), ``replay_add``, ``sample`` (the minibatches
       owed per vector step, ``num_envs * gradient_steps / train_freq``) and ``update`` (their
       optimizer steps, TD targets included), in ms per vector step;
    2. **pipelined**: the same loop without synchronisation (what training runs: the device
       works while the host goes on), with the env step left running during the update
       (``overlap``, ale-py's vector env) and without; env steps/s of each;
    3. on a GPU, the update again with the online net's forward and backward pass captured as
       CUDA graphs (``model.cuda_graph=true``), and the pipelined loop with it.

    The replay is first filled with ``learning_starts`` random steps (not timed); acting is
    timed at the end of epsilon's decay (the net runs for almost every environment). No Lightning
    loop, logging or evaluation: an upper bound on what training reaches."""
    from hydra.utils import instantiate

    from fodl.config import compose_run
    from fodl.rl.envs import make_vector_env
    from fodl.rl.replay import ReplayBuffer
    from fodl.rl.rollout import StepCollector

    cfg = compose_run(["model=dqn", f"paths.root_dir={output_dir}", f"trainer.accelerator={accelerator}",
                       *overrides], output_dir / "breakdown")
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
    if device.type == "cpu" and cfg.model.get("torch_threads"):
        torch.set_num_threads(int(cfg.model.torch_threads))
    torch.backends.cudnn.benchmark = True
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model).to(device)
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    envs = make_vector_env(dm.env, dm.num_envs, dm.vectorization)
    space = envs.single_observation_space
    stacked = bool(dm.env.atari and dm.env.frame_stack > 1)
    buf = ReplayBuffer(dm.buffer_size, dm.num_envs, frame_shape=space.shape[1:] if stacked else space.shape,
                       frame_dtype=torch.from_numpy(__import__("numpy").zeros((), dtype=space.dtype)).dtype,
                       stack=space.shape[0] if stacked else 1, device=device, seed=1)
    col = StepCollector(envs, buf, seed=0, life_loss=bool(dm.env.atari and dm.env.life_loss),
                        stacked=stacked)
    col.collect(None, max(dm.learning_starts, 2 * dm.num_envs))
    col.env_steps += model.epsilon.duration   # timed at epsilon's floor: acting runs the net
    per_step = dm.num_envs * dm.gradient_steps / dm.train_freq     # minibatches per vector step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def update(batches) -> None:
        model.before_update(col.env_steps)
        for b in batches:
            loss = model.training_loss(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if model.gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(model.parameters(), model.gradient_clip_val)
            opt.step()

    owed = 0.0

    def due() -> int:
        nonlocal owed
        owed += per_step
        k = int(owed)
        owed -= k
        return k

    # 1. phases, one at a time
    times = dict.fromkeys(BREAKDOWN_PHASES, 0.0)
    for i in range(vector_steps + 5):
        warm = i < 5
        t = time.perf_counter()
        col.finish()
        obs = col.to_device(col.obs)
        actions = model.act(obs, col.generator, explore=True, env_steps=col.env_steps, episodes=0)
        sync()
        t1 = time.perf_counter()
        out = envs.step(actions.numpy())
        t2 = time.perf_counter()
        buf.add(obs[:, -1] if stacked else obs, actions.numpy(), out[1], out[2], col.first, ~col.autoreset)
        col.first, col.autoreset, col.obs = col.autoreset, out[2] | out[3], out[0]
        col.env_steps += dm.num_envs
        sync()
        t3 = time.perf_counter()
        k = due()
        batches = buf.sample(dm.batch_size, k, dm.n_step) if k else []
        sync()
        t4 = time.perf_counter()
        update(batches)
        sync()
        t5 = time.perf_counter()
        if not warm:
            for name, a, b in zip(BREAKDOWN_PHASES, (t, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
                times[name] += b - a
    ms = {k: round(1000 * v / vector_steps, 2) for k, v in times.items()}
    total = sum(times.values()) / vector_steps
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "num_envs": dm.num_envs, "batch_size": dm.batch_size, "minibatches_per_vector_step": per_step,
        "n_step": dm.n_step, "ms_per_vector_step": ms, "serial_env_steps_per_s": round(dm.num_envs / total, 1)}
    # 2. pipelined, as training runs it
    def pipelined(overlap: bool) -> float:
        """Env steps/s of ``vector_steps`` collect-then-update steps, as training runs them."""
        col.finish()
        sync()
        t, s0 = time.perf_counter(), col.env_steps
        for _ in range(vector_steps):
            col.collect(model, dm.num_envs, overlap=overlap)
            k = due()
            if k:
                update(buf.sample(dm.batch_size, k, dm.n_step))
        col.finish()
        sync()
        return round((col.env_steps - s0) / (time.perf_counter() - t), 1)

    for overlap in (False, True):
        result[f"pipelined_env_steps_per_s_overlap_{str(overlap).lower()}"] = pipelined(overlap)
    if device.type == "cuda":
        print_fn(json.dumps(result))
        try:
            _graphed_breakdown(result, model, buf, dm, update, due, sync, vector_steps, pipelined)
        except Exception as e:   # a report of what failed, after what was measured
            result["cuda_graph_error"] = f"{type(e).__name__}: {e}"
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)
    col.close()
    print_fn(json.dumps(result))
    return result


def _graphed_breakdown(result, model, buf, dm, update, due, sync, vector_steps, pipelined) -> None:
    """Part 3 of :func:`step_breakdown` (a GPU): the update with the online net graphed."""
    b = buf.sample(dm.batch_size, 1, dm.n_step)[0]
    with torch.no_grad():
        eager_loss = model.training_loss(b)
    model.capture_graph(b["obs"])
    with torch.no_grad():
        graphed_loss = model.training_loss(b)
    result["graphed_loss_minus_eager"] = float(graphed_loss - eager_loss)
    sync()
    t = time.perf_counter()
    for _ in range(vector_steps):
        k = due()
        if k:
            update(buf.sample(dm.batch_size, k, dm.n_step))
    sync()
    result["ms_per_vector_step"]["update_cuda_graph"] = round(1000 * (time.perf_counter() - t) / vector_steps, 2)
    result["pipelined_env_steps_per_s_overlap_true_cuda_graph"] = pipelined(True)
