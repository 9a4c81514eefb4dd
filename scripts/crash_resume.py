#!/usr/bin/env python
"""Crash-safety experiment: SIGKILL a real training run at random points, restart it each time
with ``ckpt_path=auto``, and check that the final weights equal those of an uninterrupted run.

    python scripts/crash_resume.py --kills 10 [--model mnist_mlp] [--epochs 16] [--seed 0]

Each launch is ``scripts/train.py <overrides> ckpt_path=auto`` in a subprocess (its stdout is
not a terminal, so it logs one line per epoch). A launch is killed with SIGKILL after 0 or 1 of
its epoch lines plus a random fraction of an epoch, so kills land while it imports, trains,
validates, or writes a checkpoint (a kill that leaves a temporary checkpoint file behind hit a
write; those are reported). After ``--kills`` kills the run is left to finish;
its newest ``last.ckpt`` is compared, tensor by tensor, with an uninterrupted run's. Without
``--data`` a small learnable MNIST-format set is written first (as the tests do). Exit status 0
when every tensor is equal.
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


def killed_launch(root: Path, overrides: list[str], rng: random.Random, remaining: int,
                  epoch_s: float) -> str:
    """Launch, SIGKILL after 0-1 of its epoch lines (never past the run's remaining epochs) plus
    a random fraction of an epoch; say where it was killed."""
    proc = launch(root, overrides)
    out = Lines(proc)
    out.wait_epochs(rng.randint(0, min(1, max(remaining - 1, 0))), proc)
    time.sleep(rng.uniform(0, epoch_s))
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    out.thread.join(5)
    mid_write = any(p.name.startswith(".last.ckpt.tmp-") for p in root.glob("outputs/**/checkpoints/.*"))
    return (f"finished before the kill ({out.epochs} epochs)" if finished else
            f"killed after {out.epochs} epoch line(s) of this launch"
            + (" while writing a checkpoint" if mid_write else ""))


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
    ap.add_argument("--data", default=None, help="MNIST directory (default: a small generated set)")
    ap.add_argument("--workdir", default=None, help="where the runs go (default: a temporary dir)")
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fodl-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_mnist_like

        data = str(make_mnist_like(work / "data"))
    overrides = [f"model={args.model}", f"paths.data_dir={data}", "data.val_size=200",
                 f"trainer.max_epochs={args.epochs}", "trainer.enable_model_summary=false",
                 "data.steps_per_execution=1", "test=false", *args.overrides]
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
    print(f"uninterrupted run: {run_s:.1f} s, {epoch_s:.2f} s per epoch")

    rng = random.Random(args.seed)
    for k in range(args.kills):
        remaining = args.epochs - epochs_done(newest_last(crash_root, overrides))
        where = killed_launch(crash_root, [*overrides, "ckpt_path=auto"], rng, remaining, epoch_s)
        for tmp in crash_root.glob("outputs/**/checkpoints/.last.ckpt.tmp-*"):
            tmp.unlink()  # so the next report says whether *that* kill hit a write
        last = newest_last(crash_root, overrides)
        print(f"kill {k + 1}/{args.kills}: {where}; resumable from epoch {epochs_done(last)} "
              f"({last.relative_to(crash_root) if last else 'no last.ckpt yet'})")
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
