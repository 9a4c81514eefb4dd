import urllib.error

import pytest
import torch

from conftest import make_mnist_like, shared_file
from fodl.data.mnist import MNISTDataModule, load_mnist_files
from fodl.errors import FodlError


def test_reads_real_format_files_and_splits(tiny_mnist, tmp_path):
    dm = MNISTDataModule(data_dir=str(tiny_mnist), cache_dir=str(tmp_path / "c"), val_size=200,
                         batch_size=50)
    dm.setup("fit")
    (xtr, ytr), (xv, yv), (xte, _) = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    assert xtr.shape == (1000, 1, 28, 28) and xv.shape == (200, 1, 28, 28) and xte.shape == (300, 1, 28, 28)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 1, 28, 28) and y.shape == (50,)
    assert len(dm.val_dataloader()) == 1  # eval batches of 1000
    # validation is the first val_size training images (as the book's input_data does)
    raw = load_mnist_files(tiny_mnist)
    assert torch.equal(yv, raw["train_labels"][:200].long())


def test_reads_uncompressed_copies(tmp_path):
    import gzip
    root = make_mnist_like(tmp_path / "d", n_train=100, n_test=50)
    for gz in (root / "mnist").glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    dm = MNISTDataModule(data_dir=str(root), val_size=10)
    dm.setup()
    assert len(dm.splits["test"][0]) == 50


def test_missing_offline_says_where_to_put_files(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise urllib.error.URLError("offline")
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"))
    with pytest.raises(FodlError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "FODL_DATA_DIR" in msg and "paths.data_dir" in msg
    assert str(tmp_path / "empty" / "mnist") in msg


def test_no_download_flag(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(FodlError, match="download=false"):
        dm.setup()


def test_md5_mode_rejects_non_original_files(tiny_mnist):
    dm = MNISTDataModule(data_dir=str(tiny_mnist), verify="md5")
    with pytest.raises(FodlError, match="fails its checksum"):
        dm.setup()


def test_label_image_count_mismatch(tmp_path):
    import numpy as np

    from fodl.data.idx import write_idx
    root = make_mnist_like(tmp_path / "d", n_train=100, n_test=50)
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(49, dtype=np.uint8))
    with pytest.raises(FodlError, match="50 images but 49 labels"):
        MNISTDataModule(data_dir=str(root), val_size=10).setup()


def test_bad_val_size(tiny_mnist):
    with pytest.raises(FodlError, match="val_size"):
        MNISTDataModule(data_dir=str(tiny_mnist), val_size=5000).setup()


def test_env_var_sets_data_dir(tiny_mnist, monkeypatch):
    monkeypatch.setenv("FODL_DATA_DIR", str(tiny_mnist))
    dm = MNISTDataModule(data_dir=None, val_size=100)
    dm.setup()
    assert len(dm.splits["train"][0]) == 1100


@pytest.mark.realdata
def test_real_mnist_is_the_official_set(tmp_path):
    shared_file("mnist", "train-images-idx3-ubyte.gz")
    root = shared_file("mnist").parent
    dm = MNISTDataModule(data_dir=str(root), cache_dir=str(tmp_path), verify="md5")
    dm.setup()
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    assert abs(float(dm.splits["test"][0].mean()) - 0.1325) < 2e-3  # official test pixel mean
    assert torch.bincount(dm.splits["test"][1]).tolist()[:3] == [980, 1135, 1032]


def test_wrong_shape_is_named(tmp_path):
    import numpy as np

    from fodl.data.idx import write_idx
    root = make_mnist_like(tmp_path / "d", n_train=100, n_test=50)
    write_idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", np.zeros((50, 32, 32), dtype=np.uint8))
    with pytest.raises(FodlError, match=r"t10k-images.*\(50, 32, 32\).*\(N, 28, 28\)"):
        MNISTDataModule(data_dir=str(root), val_size=10).setup()


@pytest.mark.parametrize("standardize", [False, True])
def test_shift_moves_training_images_only_by_at_most_k_pixels(tiny_mnist, standardize):
    dm = MNISTDataModule(tiny_mnist, val_size=200, shift=2, standardize=standardize, seed=3)
    dm.setup("fit")
    x = dm.splits["train"][0][:64]
    assert torch.equal(dm.transform(x, train=False), x)
    moved = dm.transform(x, train=True)
    background = x.amin()  # 0, or the standardized 0
    assert moved.shape == x.shape and not torch.equal(moved, x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=float(background))
    offsets = []
    for i in range(len(x)):  # each image is its original under one offset in [-2, 2]^2
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(padded[i, :, dy:dy + 28, dx:dx + 28], moved[i])]
        assert hits, i
        offsets.append(hits[0])
    assert len(set(offsets)) > 5  # images get different offsets
    # the stream is a function of (seed, epoch): the same draw again, another with another seed
    again = MNISTDataModule(tiny_mnist, val_size=200, shift=2, standardize=standardize, seed=3)
    assert torch.equal(again.transform(x, train=True), moved)
    other = MNISTDataModule(tiny_mnist, val_size=200, shift=2, standardize=standardize, seed=4)
    assert not torch.equal(other.transform(x, train=True), moved)
    with pytest.raises(FodlError, match="data.shift=20"):
        MNISTDataModule(tiny_mnist, shift=20)
