import torch

from fodl.data.loader import TensorLoader


def test_batches_cover_data_in_order_without_shuffle():
    x, y = torch.arange(25).float().unsqueeze(1), torch.arange(25)
    loader = TensorLoader((x, y), 10)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(b[1]) for b in batches] == [10, 10, 5]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_shuffle_is_a_permutation_deterministic_per_epoch():
    y = torch.arange(100)
    loader = TensorLoader((y,), 32, shuffle=True, seed=3)
    e0 = torch.cat([b[0] for b in loader])
    e0_again = torch.cat([b[0] for b in loader])
    loader.set_epoch(1)
    e1 = torch.cat([b[0] for b in loader])
    assert torch.equal(e0, e0_again)
    assert not torch.equal(e0, e1)
    assert torch.equal(e0.sort().values, y) and torch.equal(e1.sort().values, y)


def test_epoch_fn_drives_the_order():
    y = torch.arange(50)
    epoch = {"e": 4}
    a = TensorLoader((y,), 50, shuffle=True, seed=1, epoch_fn=lambda: epoch["e"])
    b = TensorLoader((y,), 50, shuffle=True, seed=1)
    b.set_epoch(4)
    assert torch.equal(next(iter(a))[0], next(iter(b))[0])


def test_drop_last():
    loader = TensorLoader((torch.arange(25),), 10, drop_last=True)
    assert len(loader) == 2 and len(list(loader)) == 2


def test_ddp_shards():
    y = torch.arange(101)
    # training: padded, same number of steps on every rank, same permutation on every rank
    train = [TensorLoader((y,), 10, shuffle=True, seed=0, rank=r, world_size=2) for r in range(2)]
    assert len(train[0]) == len(train[1]) == 6
    seen = torch.cat([b[0] for ld in train for b in ld])
    assert set(seen.tolist()) == set(range(101)) and len(seen) == 102
    # evaluation: every example exactly once
    ev = [TensorLoader((y,), 10, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([b[0] for ld in ev for b in ld])
    assert sorted(seen.tolist()) == list(range(101))


def test_steps_per_execution_groups_the_same_minibatches():
    y = torch.arange(95)
    single = list(TensorLoader((y,), 10, shuffle=True, seed=2))
    grouped = list(TensorLoader((y,), 10, shuffle=True, seed=2, steps_per_execution=4))
    assert len(grouped) == 3 and [len(g) for g in grouped] == [4, 4, 2]
    flat = [b for g in grouped for b in g]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(single, flat)) and len(flat) == len(single)
