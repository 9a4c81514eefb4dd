"""Seeds: per-epoch shuffling streams never shared between seeds; seed=null (issue 17)."""

import logging

import pytest
import torch

from conftest import train_cfg
from fodl.checkpoint import read_checkpoint
from fodl.data.loader import TensorLoader
from fodl.errors import FodlError
from fodl.train import build, train


def _order(seed: int, epoch: int, n: int = 64) -> tuple[int, ...]:
    loader = TensorLoader((torch.arange(n),), n, shuffle=True, seed=seed)
    loader.set_epoch(epoch)
    (batch,) = list(loader)
    return tuple(batch[0].tolist())


def test_no_two_seeds_share_an_epoch_order():
    orders = {(s, e): _order(s, e) for s in range(10) for e in range(10)}
    assert len(set(orders.values())) == 100  # seed + epoch made seed 0/epoch 1 == seed 1/epoch 0
    assert _order(0, 1) != _order(1, 0)
    # the order is a function of (seed, epoch) only: a new loader (a resumed run) replays it
    assert all(_order(s, e) == orders[s, e] for s, e in [(0, 0), (3, 7), (9, 9)])
    assert sorted(orders[4, 2]) == list(range(64))


def test_epoch_fn_and_ddp_ranks_use_the_same_stream():
    y = torch.arange(40)
    a = TensorLoader((y,), 40, shuffle=True, seed=5, epoch_fn=lambda: 3)
    assert tuple(next(iter(a))[0].tolist()) == _order(5, 3, 40)
    shards = [TensorLoader((y,), 20, shuffle=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(3)
    together = torch.stack([next(iter(s))[0] for s in shards], 1).flatten()
    assert tuple(together.tolist()) == _order(5, 3, 40)


def test_seed_null_draws_a_seed_trains_and_stores_it(tmp_path, tiny_mnist, caplog):
    cfg = train_cfg(tmp_path, tiny_mnist, "seed=null", "model=logreg", "trainer.max_epochs=1",
                    "test=false")
    with caplog.at_level(logging.INFO, logger="fodl.train"):
        metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    stored = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["fodl_config"]
    seed = stored["seed"]
    assert isinstance(seed, int) and stored["data"]["seed"] == seed
    assert f"seed={seed} (drawn, since seed=null)" in caplog.text


def test_seed_null_draws_fresh_seeds_and_ddp_workers_take_the_parents(tmp_path, tiny_mnist,
                                                                       monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    seeds = []
    for run in ("a", "b"):
        cfg = train_cfg(tmp_path, tiny_mnist, "seed=null", run=run)
        dm, _, _ = build(cfg)
        assert dm.seed == cfg.seed
        seeds.append(cfg.seed)
    assert seeds[0] != seeds[1]  # a draw each time (a clash has chance 2**-31)

    # a DDP worker Lightning started (LOCAL_RANK=1) gets the parent's seed via PL_GLOBAL_SEED
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("PL_GLOBAL_SEED", "1234")
    cfg = train_cfg(tmp_path, tiny_mnist, "seed=null", run="w")
    dm, _, _ = build(cfg)
    assert cfg.seed == 1234 and dm.seed == 1234
    # ... and one started by torchrun/SLURM, which has no parent seed, is told to give one
    monkeypatch.delenv("PL_GLOBAL_SEED")
    with pytest.raises(FodlError, match="seed=null.*seed=42"):
        build(train_cfg(tmp_path, tiny_mnist, "seed=null", run="x"))
