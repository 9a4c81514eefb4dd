"""Data paths that go wrong: dropped downloads, interrupted or corrupt archives, md5 of
uncompressed MNIST, the CIFAR PNG-tree cache key (issue 17)."""

import gzip
import hashlib
import http.client
import io
import os
import shutil
import socket
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

from conftest import make_mnist_like, shared_file
from fodl.data import cifar, mnist
from fodl.data import download as dl
from fodl.data.cifar import PY_DIR, PY_FILES, CIFAR10DataModule, find_source
from fodl.data.download import download, safe_extract_tar
from fodl.errors import FodlError
from test_cifar import make_cifar_png, make_cifar_python

# -- downloads: every transfer error moves on to the next mirror --------------------------


class _Response:
    """What urlopen returns: a context manager whose read() gives ``data`` in one block,
    then raises ``fail`` (if given) instead of ending."""

    def __init__(self, data: bytes, fail: BaseException | None = None):
        self.data, self.fail, self.sent = data, fail, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, n=-1):
        if not self.sent:
            self.sent = True
            return self.data
        if self.fail is not None:
            raise self.fail
        return b""


def _fake_urlopen(monkeypatch, answers: dict):
    tried = []

    def urlopen(url, timeout=None):
        tried.append(url)
        a = answers[url]
        if isinstance(a, BaseException):
            raise a
        return a

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    return tried


def test_incomplete_read_tries_the_next_mirror(tmp_path, monkeypatch):
    payload = b"the real file" * 100
    tried = _fake_urlopen(monkeypatch, {
        "http://a/f.gz": _Response(payload[:50], http.client.IncompleteRead(payload[:50], 1250)),
        "http://b/f.gz": _Response(payload),
    })
    dest = tmp_path / "out" / "f.gz"
    download(["http://a/f.gz", "http://b/f.gz"], dest, md5=hashlib.md5(payload).hexdigest())
    assert tried == ["http://a/f.gz", "http://b/f.gz"]
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.gz"]  # no partial file left


def test_every_kind_of_transfer_error_is_reported_per_mirror(tmp_path, monkeypatch):
    urls = [f"http://m{i}/f.gz" for i in range(6)]
    _fake_urlopen(monkeypatch, dict(zip(urls, [
        _Response(b"x" * 10, http.client.IncompleteRead(b"x" * 10, 90)),
        http.client.RemoteDisconnected("Remote end closed connection without response"),
        _Response(b"z", http.client.HTTPException("bad chunk length")),
        socket.timeout("timed out"),
        urllib.error.HTTPError(urls[4], 503, "Service Unavailable", {}, None),
        _Response(b"y", ConnectionResetError(104, "Connection reset by peer")),
    ])))
    dest = tmp_path / "f.gz"
    with pytest.raises(FodlError) as e:
        download(urls, dest)
    msg = str(e.value)
    assert all(u in msg for u in urls), msg
    assert "IncompleteRead" in msg and "503" in msg and "timed out" in msg
    assert "FODL_DATA_DIR" in msg and "\n" not in msg
    assert not dest.exists() and not list(tmp_path.glob("*.part"))


# -- CIFAR archives: atomic extraction, corrupt tarballs -----------------------------------


def _python_tarball(tmp_path, first="test_batch"):
    """The official ``cifar-10-python.tar.gz`` layout, of tiny batches; ``first`` is stored
    first so that an extraction stopped halfway has written it."""
    src = make_cifar_python(tmp_path / "made") / "cifar10" / PY_DIR
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(src, arcname=PY_DIR, recursive=False)
        for f in [first] + [f for f in PY_FILES if f != first]:
            tar.add(src / f, arcname=f"{PY_DIR}/{f}")
    return arc


def _fake_download(monkeypatch, arc):
    def fake(urls, dest, md5=None, timeout=60):
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(arc, dest)
        return dest
    monkeypatch.setattr(cifar, "download", fake)


class _Killed(BaseException):
    """Stands for Ctrl-C / a kill arriving in the middle of extraction."""


def test_interrupted_extraction_leaves_no_folder_and_the_tarball_is_used(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _fake_download(monkeypatch, _python_tarball(tmp_path))
    real = tarfile.TarFile.extractall

    def half_then_killed(self, path=".", members=None, **kw):
        members = list(members if members is not None else self.getmembers())
        real(self, path, members=members[: len(members) // 2], **kw)  # folder + test_batch + ...
        with open(os.path.join(path, PY_DIR, "data_batch_5"), "wb") as f:
            f.write(b"\x80\x02half a pickle")  # the file being written when the kill came
        raise _Killed()

    with monkeypatch.context() as m:
        m.setattr(tarfile.TarFile, "extractall", half_then_killed)
        with pytest.raises(_Killed):
            CIFAR10DataModule(data_dir=str(root)).prepare_data()

    d = root / "cifar10"
    assert sorted(p.name for p in d.iterdir()) == ["cifar-10-python.tar.gz"]  # nothing partial
    assert find_source(root) == ("python-tar", d / "cifar-10-python.tar.gz")
    dm = CIFAR10DataModule(data_dir=str(root), val_size=50, download=False)
    dm.setup()  # the next run reads the intact tarball
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [250, 50, 60]


def test_completed_extraction_is_marked_and_used(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _fake_download(monkeypatch, _python_tarball(tmp_path))
    CIFAR10DataModule(data_dir=str(root)).prepare_data()
    d = root / "cifar10"
    assert sorted(p.name for p in d.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert (d / PY_DIR / dl.EXTRACTED_MARK).is_file()
    assert find_source(root) == ("python", d / PY_DIR)
    dm = CIFAR10DataModule(data_dir=str(root), val_size=50, download=False)
    dm.setup()
    assert len(dm.splits["test"][0]) == 60


def test_partial_folder_left_by_an_old_run_is_ignored(tmp_path, caplog):
    root = tmp_path / "data"
    d = root / "cifar10"
    d.mkdir(parents=True)
    shutil.copyfile(_python_tarball(tmp_path), d / "cifar-10-python.tar.gz")
    # what an interrupted extraction by the old code left: test_batch, a truncated batch, no mark
    with tarfile.open(d / "cifar-10-python.tar.gz") as tar:
        tar.extractall(d, members=tar.getmembers()[:2], filter="data")
    (d / PY_DIR / "data_batch_1").write_bytes(b"\x80\x02trunc")
    # and a temporary folder of an extraction that was killed before it could clean up
    (d / f".{PY_DIR}.partial-x" / PY_DIR).mkdir(parents=True)
    (d / f".{PY_DIR}.partial-x" / PY_DIR / "test_batch").write_bytes(b"junk")

    assert find_source(root) == ("python-tar", d / "cifar-10-python.tar.gz")
    assert "ignoring" in caplog.text and PY_DIR in caplog.text
    dm = CIFAR10DataModule(data_dir=str(root), val_size=50, download=False)
    dm.setup()
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [250, 50, 60]


@pytest.mark.parametrize("layout", ["python", "png"])
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_tarball_is_a_clear_error(tmp_path, layout, keep):
    if layout == "python":
        arc = _python_tarball(tmp_path)
    else:
        arc = make_cifar_png(tmp_path / "made", as_tar=True) / "cifar10" / "cifar10_png.tar.gz"
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    bad = root / "cifar10" / arc.name
    raw = arc.read_bytes()
    bad.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(FodlError) as e:
        CIFAR10DataModule(data_dir=str(root), download=False).setup()
    msg = str(e.value)
    assert str(bad) in msg and "truncated or corrupt" in msg and "download it again" in msg, msg
    assert "\n" not in msg
    with pytest.raises(FodlError, match="truncated or corrupt"):
        safe_extract_tar(bad, tmp_path / "x")


def test_safe_extraction_still_refuses_traversal(tmp_path):
    arc = tmp_path / "evil.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        info = tarfile.TarInfo(f"{PY_DIR}/../../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(FodlError, match="unsafe"):
        dl.extract_tar_atomically(arc, PY_DIR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]


# -- MNIST: verify=md5 also checks uncompressed files ---------------------------------------


def _uncompressed_copy(src_dir, dest_dir):
    dest_dir.mkdir(parents=True)
    for f, _, _ in mnist.FILES.values():
        with gzip.open(src_dir / f) as g:
            (dest_dir / f.removesuffix(".gz")).write_bytes(g.read())


def test_md5_verification_covers_uncompressed_files(tmp_path, monkeypatch):
    made = make_mnist_like(tmp_path / "made", n_train=60, n_test=20)
    root = tmp_path / "data"
    _uncompressed_copy(made / "mnist", root / "mnist")
    assert mnist.load_mnist_files(root, "content")["train_images"].shape == (60, 28, 28)
    with pytest.raises(FodlError) as e:
        mnist.load_mnist_files(root, "md5")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "decompressed" in msg
    assert "6bbc9ace898e44ae57da46a324031adb" in msg and "verify=content" in msg
    # a file with the published decompressed md5 passes (here: published = this file's md5)
    raw = {f: hashlib.md5((root / "mnist" / f.removesuffix(".gz")).read_bytes()).hexdigest()
           for f in mnist.RAW_MD5}
    monkeypatch.setattr(mnist, "RAW_MD5", raw)
    assert mnist.load_mnist_files(root, "md5")["test_labels"].shape == (20,)


@pytest.mark.realdata
def test_real_uncompressed_mnist_passes_md5(tmp_path):
    src = shared_file("mnist", "train-images-idx3-ubyte.gz").parent
    for f, _, _ in mnist.FILES.values():
        shared_file("mnist", f)
    _uncompressed_copy(src, tmp_path / "mnist")
    out = mnist.load_mnist_files(tmp_path, "md5")
    assert out["train_images"].shape == (60000, 28, 28) and out["test_labels"].shape == (10000,)


# -- CIFAR PNG tree: the cache key covers train/ and test/ ----------------------------------


def test_png_tree_cache_notices_a_changed_train_image(tmp_path):
    from PIL import Image

    root = make_cifar_png(tmp_path / "data")
    cache = tmp_path / "cache"

    def load():
        dm = CIFAR10DataModule(data_dir=str(root), cache_dir=str(cache), val_size=4)
        dm.setup()
        return torch.cat([dm.splits["train"][0], dm.splits["val"][0]])

    before = load()
    assert len(list(cache.glob("cifar10-png-*.pt"))) == 1
    load()
    assert len(list(cache.glob("cifar10-png-*.pt"))) == 1  # unchanged tree: the same key

    png = root / "cifar10" / "cifar10_png" / "train" / "cat" / "cat_0.png"
    st = png.stat()
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(png)
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    white = lambda x: (x == 255).flatten(1).all(1)  # noqa: E731
    assert not white(before).any()
    after = load()
    assert white(after).sum() == 1  # rebuilt from the edited tree, not served stale
    assert len(list(cache.glob("cifar10-png-*.pt"))) == 2
