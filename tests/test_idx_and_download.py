import gzip
import hashlib
import urllib.error

import numpy as np
import pytest
import torch

from fodl.data.download import cached, download, safe_extract_tar
from fodl.data.idx import read_idx, write_idx
from fodl.errors import FodlError


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_roundtrip(tmp_path, name):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    t = read_idx(write_idx(tmp_path / name, arr))
    assert t.dtype == torch.uint8 and tuple(t.shape) == (2, 3, 4)
    assert torch.equal(t, torch.from_numpy(arr))


def test_idx_header_is_the_real_format(tmp_path):
    p = write_idx(tmp_path / "l-idx1-ubyte", np.array([7, 2, 1], dtype=np.uint8))
    assert p.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])  # magic 2049, n=3


def test_corrupt_gzip_names_the_file(tmp_path):
    p = write_idx(tmp_path / "a-idx1-ubyte.gz", np.zeros(1000, dtype=np.uint8))
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    raw[-6] ^= 0xFF  # break the CRC too
    p.write_bytes(bytes(raw))
    with pytest.raises(FodlError, match="a-idx1-ubyte.gz.*corrupt"):
        read_idx(p)


def test_truncated_and_bad_magic(tmp_path):
    p = write_idx(tmp_path / "b-idx3-ubyte", np.zeros((5, 28, 28), dtype=np.uint8))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(FodlError, match="truncated"):
        read_idx(p)
    q = tmp_path / "c-idx3-ubyte"
    q.write_bytes(b"<html>not found</html>")
    with pytest.raises(FodlError, match="not an IDX file"):
        read_idx(q)


def test_download_verifies_md5_and_is_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(gzip.compress(b"payload" * 100))
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.gz"
    download([src.as_uri()], dest, md5=md5)
    assert dest.read_bytes() == src.read_bytes()

    bad = tmp_path / "out" / "other.gz"
    with pytest.raises(FodlError, match="md5"):
        download([src.as_uri()], bad, md5="0" * 32)
    assert not bad.exists()
    assert not list((tmp_path / "out").glob("*.part"))  # no partial files left behind


def test_download_offline_names_every_mirror(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    with pytest.raises(FodlError, match="http://a/f.gz.*http://b/f.gz"):
        download(["http://a/f.gz", "http://b/f.gz"], tmp_path / "f.gz")


def test_cache_rebuilds_when_corrupt(tmp_path):
    src = tmp_path / "s"
    src.write_text("x")
    calls = []

    def build():
        calls.append(1)
        return {"t": torch.arange(3)}

    assert torch.equal(cached(tmp_path / "c", "n", [src], build)["t"], torch.arange(3))
    assert torch.equal(cached(tmp_path / "c", "n", [src], build)["t"], torch.arange(3))
    assert len(calls) == 1
    (cache_file,) = (tmp_path / "c").glob("n-*.pt")
    cache_file.write_bytes(b"garbage")
    assert torch.equal(cached(tmp_path / "c", "n", [src], build)["t"], torch.arange(3))
    assert len(calls) == 2


def test_safe_extract_refuses_traversal(tmp_path):
    import io
    import tarfile

    arc = tmp_path / "evil.tar"
    with tarfile.open(arc, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(FodlError, match="unsafe"):
        safe_extract_tar(arc, tmp_path / "x")
    assert not (tmp_path / "escape.txt").exists()
