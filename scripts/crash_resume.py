#!/usr/bin/env python
"""Crash-safety experiment: SIGKILL a real training run at random points, restart it each time
with ``ckpt_path=auto``, and check that the final weights equal those of an uninterrupted run.

    python scripts/crash_resume.py --kills 10 [--model mnist_mlp] [--epochs 16] [--seed 0]

Each launch is ``scripts/train.py <overrides> ckpt_path=auto`` in a subprocess (its stdout is
not a terminal, so it logs one line per epoch). The uninterrupted reference run gives the
start-up time (interpreter, imports, data) and the time of an epoch. Each kill picks a point
of the launch's remaining training: a few land in start-up (before anything trains), the rest
after a random number of the launch's epochs plus a random fraction of an epoch, so kills
spread across the run's epochs, landing while it trains, validates or writes a checkpoint (a
kill that leaves a temporary checkpoint file behind hit a write). Each kill is reported with
where it landed (start-up, or epoch N of the run and how far into it) and the epoch the run
can resume from. After ``--kills`` kills the run is left to finish; its newest ``last.ckpt`` is
compared, tensor by tensor, with an uninterrupted run's. Without ``--data`` a learnable
MNIST-format set of ``--train-images`` images is written first (as the tests do), large enough
that an epoch takes a sizeable part of a launch. Exit status 0 when every tensor is equal.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(root: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "FODL_ROOT": str(root), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *overrides],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)


class Lines:
    """Collects a process's output lines in a thread; counts the epoch lines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.epochs = 0
        self.times: list[float] = []  # when each epoch line arrived
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line)
                if "[fodl.progress]" in line and " epoch " in line:
                    self.epochs += 1
                    self.times.append(time.monotonic())
                self.cond.notify_all()

    def wait_epochs(self, n: int, proc: subprocess.Popen, timeout: float = 600) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while self.epochs < n and proc.poll() is None and time.monotonic() < end:
                self.cond.wait(0.05)
            return self.epochs >= n


def killed_launch(root: Path, overrides: list[str], rng: random.Random, done: int, remaining: int,
                  kills_left: int, startup_s: float, epoch_s: float) -> str:
    """Launch and SIGKILL at a random point of its remaining ``remaining`` epochs (the run has
    ``done`` behind it): in start-up with probability 1/6, else after a random number of this
    launch's epoch lines (on average the remaining epochs shared out among the ``kills_left``
    kills, so the kills spread over the whole run) plus a random fraction of an epoch. Say
    where the kill landed."""
    proc = launch(root, overrides)
    t0 = time.monotonic()
    out = Lines(proc)
    if rng.random() < 1 / 6 or remaining <= 0:
        time.sleep(rng.uniform(0, startup_s))
    else:
        wait = rng.randint(0, min(max(2 * remaining // kills_left - 1, 0), remaining - 1))
        if wait:
            out.wait_epochs(wait, proc)
            time.sleep(rng.uniform(0, epoch_s))
        else:  # within the launch's first epoch
            time.sleep(startup_s + rng.uniform(0, epoch_s))
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    proc.wait()
    out.thread.join(5)
    if finished:
        return f"the launch finished before the kill ({out.epochs} epochs)"
    mid_write = any(p.name.startswith(".last.ckpt.tmp-") for p in root.glob("outputs/**/checkpoints/.*"))
    since = t_kill - (out.times[-1] if out.times else t0 + startup_s)
    if not out.times and since < 0:
        where = f"in start-up, {t_kill - t0:.1f} s after launch (before any training)"
    else:
        where = (f"in epoch {done + out.epochs + 1} of the run, ~{min(since / epoch_s, 1.0):.0%} into it "
                 f"({out.epochs} epoch(s) of this launch done)")
    return "killed " + where + (", while writing a checkpoint" if mid_write else "")


def epochs_done(last: Path | None) -> int:
    import torch

    return 0 if last is None else int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) + 1


def state_dicts_equal(a: Path, b: Path) -> tuple[bool, float]:
    import torch

    sa = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    if sa.keys() != sb.keys():
        return False, float("inf")
    diff = max((float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0)
               for k in sa)
    return all(torch.equal(sa[k], sb[k]) for k in sa), diff


def newest_last(root: Path, overrides: list[str]) -> Path | None:
    from fodl.resume import find_last_checkpoint

    return find_last_checkpoint(root / "outputs", [*overrides, "ckpt_path=auto"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--model", default="mnist_mlp")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    ap.add_argument("--data", default=None, help="MNIST directory (default: a generated set)")
    ap.add_argument("--train-images", type=int, default=12000,
                    help="size of the generated training set (sets the time of an epoch)")
    ap.add_argument("--workdir", default=None, help="where the runs go (default: a temporary dir)")
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fodl-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_mnist_like

        data = str(make_mnist_like(work / "data", n_train=args.train_images, n_test=300))
    overrides = [f"model={args.model}", f"paths.data_dir={data}", "data.val_size=200",
                 f"trainer.max_epochs={args.epochs}", "trainer.enable_model_summary=false",
                 "test=false", *args.overrides]
    ref_root, crash_root = work / "reference", work / "crashed"
    ref_root.mkdir(exist_ok=True)
    crash_root.mkdir(exist_ok=True)

    t0 = time.monotonic()
    ref = launch(ref_root, overrides)
    ref_out = Lines(ref)
    if ref.wait() != 0:
        print("".join(ref_out.lines[-40:]))
        return 2
    ref_out.thread.join(5)
    run_s = time.monotonic() - t0
    gaps = sorted(b - a for a, b in zip(ref_out.times, ref_out.times[1:]))
    epoch_s = gaps[len(gaps) // 2] if gaps else 1.0  # median epoch, validation and checkpoint
    startup_s = max(ref_out.times[0] - t0 - epoch_s, 0.5) if ref_out.times else 5.0
    print(f"uninterrupted run: {run_s:.1f} s: start-up {startup_s:.1f} s, {epoch_s:.2f} s per epoch")

    rng = random.Random(args.seed)
    for k in range(args.kills):
        done = epochs_done(newest_last(crash_root, overrides))
        if done >= args.epochs:
            print(f"kill {k + 1}/{args.kills}: not made, the run has finished (use more --epochs)")
            continue
        where = killed_launch(crash_root, [*overrides, "ckpt_path=auto"], rng, done,
                              args.epochs - done, args.kills - k, startup_s, epoch_s)
        for tmp in crash_root.glob("outputs/**/checkpoints/.last.ckpt.tmp-*"):
            tmp.unlink()  # so the next report says whether *that* kill hit a write
        last = newest_last(crash_root, overrides)
        print(f"kill {k + 1}/{args.kills}: {where}; resumable from epoch {epochs_done(last)} "
              f"({last.relative_to(crash_root) if last else 'no last.ckpt yet'})", flush=True)
    final = launch(crash_root, [*overrides, "ckpt_path=auto"])
    final_out = Lines(final)
    if final.wait() != 0:
        print("".join(final_out.lines[-40:]))
        return 2
    a, b = newest_last(ref_root, overrides), newest_last(crash_root, overrides)
    same, diff = state_dicts_equal(a, b)
    print(f"final weights {'EQUAL' if same else 'DIFFER'} to the uninterrupted run's "
          f"(max abs difference {diff:g}); runs in {work}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
