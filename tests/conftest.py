"""Shared fixtures: tiny real-format datasets, the shared data dir, in-process Hydra runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fodl.config import compose_run
from fodl.data.idx import write_idx

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when this machine does not have it."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


def make_mnist_like(root: Path, n_train: int = 1200, n_test: int = 300, seed: int = 0,
                    noise: float = 60.0) -> Path:
    """Write learnable MNIST-format IDX files (.gz) under ``root/mnist``: each class is a fixed
    random 28x28 template plus noise, so a linear model can reach >90% accuracy."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(10, 28, 28))

    def split(n):
        y = rng.integers(0, 10, size=n)
        x = templates[y] + rng.normal(0, noise, size=(n, 28, 28))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)

    d = root / "mnist"
    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    write_idx(d / "train-images-idx3-ubyte.gz", xtr)
    write_idx(d / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(d / "t10k-images-idx3-ubyte.gz", xte)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", yte)
    return root


def write_word2vec(path: str | Path, words: list[str], vectors: torch.Tensor,
                   binary: bool = False) -> Path:
    """Write ``vectors`` (one row per word) in word2vec's text or binary format, as word2vec and
    gensim write them: test files for ``fodl.text.vectors.read_word2vec``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = vectors.detach().float().cpu().numpy()
    if len(words) != len(v):
        raise ValueError(f"{len(words)} words but {len(v)} vectors")
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"Words with whitespace cannot be written in word2vec format: {bad[:5]}")
    with open(path, "wb") as f:
        f.write(f"{len(words)} {v.shape[1]}\n".encode())
        for w, row in zip(words, v):
            if binary:
                f.write(w.encode("utf-8") + b" " + row.astype("<f4").tobytes() + b"\n")
            else:
                buf = io.StringIO()
                np.savetxt(buf, row[None], fmt="%.9g", delimiter=" ", newline="")
                f.write(f"{w} {buf.getvalue()}\n".encode())
    return path


# overrides that keep a subprocess run's output short
QUIET = ["callbacks.progress_bar.style=lines", "trainer.enable_model_summary=false"]


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A run directory with learnable MNIST-format data under ``data/``."""
    make_mnist_like(tmp_path / "data")
    return tmp_path


def workdir_data(workdir: Path) -> list[str]:
    """Overrides that train on ``workdir``'s data, quietly."""
    return [f"paths.data_dir={workdir / 'data'}", "data.val_size=200", *QUIET]


@pytest.fixture
def tiny_mnist(tmp_path) -> Path:
    return make_mnist_like(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Tests never read the user's FODL_DATA_DIR / cache unless they set it themselves."""
    monkeypatch.delenv("FODL_DATA_DIR", raising=False)
    monkeypatch.setenv("FODL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that runs an entry point in-process (e.g. scripts/translate.py, which sets one
    thread) must not change the thread count of the tests after it: a later in-process
    reference run would then sum in another order than its subprocess twin (a 3e-8 weight
    difference broke the SIGKILL resume test that way)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def compose_train(overrides: list[str], run_dir: Path, config_name: str = "train"):
    """The Hydra config ``scripts/train.py`` would build, with its output dir at ``run_dir``."""
    return compose_run([f"paths.root_dir={run_dir.parent}", *overrides], run_dir, config_name)


# quiet, fast settings for in-process training
FAST = ["callbacks.progress_bar.style=lines", "trainer.enable_model_summary=false"]


def train_cfg(tmp_path: Path, data_dir: Path, *overrides: str, run: str = "run"):
    """A quiet train config on ``data_dir`` (tiny sets get a 200-image validation split),
    writing to ``tmp_path/run``."""
    tiny = [] if data_dir == SHARED_DATA else ["data.val_size=200"]
    return compose_train([f"paths.data_dir={data_dir}", *FAST, *tiny, *overrides], tmp_path / run)


def run_script(script: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600):
    """Run ``scripts/<script>`` in a subprocess from ``cwd`` (outputs land in cwd/outputs)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


class RecordingVectorEnv:
    """Wraps a vector env that has ``send`` / ``recv`` (ale-py's, through fodl's ``AtariVector``)
    and records the actions sent (``sent``) and what every step returned (``log``): the RL
    tests check the collector and the replay memory against them."""

    def __init__(self, envs) -> None:
        self.envs, self.num_envs, self.log, self.sent = envs, envs.num_envs, [], []
        self.single_action_space = envs.single_action_space

    def reset(self, **kwargs):
        return self.envs.reset(**kwargs)

    def send(self, actions) -> None:
        self.sent.append(np.array(actions))
        self.envs.send(actions)

    def recv(self):
        self.log.append(self.envs.recv())
        return self.log[-1]

    def close(self) -> None:
        self.envs.close()
