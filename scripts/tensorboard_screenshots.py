#!/usr/bin/env python
"""Screenshots of the real TensorBoard on fodl runs (the README's docs/tensorboard_*.png).

    python scripts/tensorboard_screenshots.py --train              # make the runs, then shoot
    python scripts/tensorboard_screenshots.py --logdir outputs/screenshots

With --train it first trains, under <logdir> (default outputs/screenshots), the chapter 4
optimizer sweep (experiment=book/ch4_optimizers, --epochs epochs) and the MNIST CNN for one
epoch (first-layer filters), reading MNIST from paths.data_dir / $FODL_DATA_DIR. Then it starts
`tensorboard --logdir <logdir>` on a free port and takes, with headless Chromium (`apt-get install
chromium`, or --chromium PATH):

    docs/tensorboard_time_series.png   SCALARS: train/loss and val/acc of the five optimizers
    docs/tensorboard_hparams.png       HPARAMS: one trial per optimizer, with its test accuracy
    docs/tensorboard_filters.png       IMAGES: the CNN's first-layer filters (book figure 5-18)

The README's pictures: --train --epochs 5 +trainer.limit_train_batches=100 (a shared 2-core CPU).

Not part of the test suite (it needs Chromium); the claims in the pictures are tested through
TensorBoard's own loader in tests/test_tensorboard.py and tests/test_ch4.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (file, the runs it shows: a folder under --logdir, dashboard URL fragment, window size)
VIEWS = [
    ("tensorboard_time_series.png", "ch4_optimizers",
     "#scalars&tagFilter=val%2Facc%7Ctrain%2Floss%24&_smoothingWeight=0", "1600,1000"),
    ("tensorboard_hparams.png", "ch4_optimizers", "#hparams", "2100,700"),
    ("tensorboard_filters.png", "mnist_cnn", "#images&tagFilter=filters", "1200,800"),
]


def train_runs(logdir: Path, epochs: int, extra: list[str]) -> None:
    common = [f"paths.log_dir={logdir}", "callbacks.progress_bar.style=lines", *extra]
    jobs = [
        ["experiment=book/ch4_optimizers", f"trainer.max_epochs={epochs}",
         f"hydra.sweep.dir={logdir}/ch4_optimizers", "hydra.sweep.subdir=${hydra.runtime.choices.optimizer}"],
        ["model=mnist_cnn", "trainer.max_epochs=1", f"hydra.run.dir={logdir}/mnist_cnn"],
    ]
    for args in jobs:
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *args, *common]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def wait_loaded(base: str, timeout: float = 180) -> None:
    """Until TensorBoard has read the runs (their scalars are served)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            scalars = get_json(base + "/data/plugin/scalars/tags")
            if scalars and all(scalars.values()):
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"TensorBoard at {base} did not load the runs within {timeout:.0f} s")


def shoot(chromium: str, url: str, out: Path, size: str, budget_ms: int) -> None:
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--force-device-scale-factor=1", f"--window-size={size}",
           f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def screenshot_args(doc: str, logdir: str, epochs: int, budget_ms: int, train) -> tuple[argparse.Namespace, Path]:
    """The screenshot scripts' shared command line: parse it, find Chromium, train the runs
    first with ``--train`` (``train(logdir, epochs, overrides)``); returns the arguments and the
    resolved log directory."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logdir", default=logdir)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--train", action="store_true", help="train the runs first (see above)")
    ap.add_argument("--epochs", type=int, default=epochs, help="epochs of the sweep (--train)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                    or shutil.which("google-chrome"))
    ap.add_argument("--budget-ms", type=int, default=budget_ms, help="virtual time for the page to render")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for --train")
    args = ap.parse_args()
    if not args.chromium:
        raise SystemExit("No Chromium found: apt-get install chromium, or pass --chromium PATH.")
    logdir_path = Path(args.logdir).resolve()
    if args.train:
        train(logdir_path, args.epochs, args.overrides)
    return args, logdir_path


def main() -> None:
    args, logdir = screenshot_args(__doc__, "outputs/screenshots", 10, 20000, train_runs)
    if not logdir.is_dir():
        raise SystemExit(f"{logdir} does not exist: run with --train, or give --logdir.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    for name, runs, fragment, size in VIEWS:
        if not (logdir / runs).is_dir():
            raise SystemExit(f"{logdir / runs} does not exist: run with --train.")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir / runs),
                               "--port", str(port), "--host", "127.0.0.1", "--load_fast", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        try:
            wait_loaded(base)
            shoot(args.chromium, f"{base}/{fragment}", out / name, size, args.budget_ms)
        finally:
            tb.terminate()
            tb.wait(timeout=30)


if __name__ == "__main__":
    main()
