"""CIFAR-10: the official python batches or a PNG tree (one file per image, by class),
held in memory as uint8; the book's distortions applied batched, on the training device."""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from fodl.data.augment import distort, evaluate_view
from fodl.data.base import InMemoryDataModule, resolve_data_dir
from fodl.data.download import (
    EXTRACTED_MARK,
    cached,
    download,
    extract_tar_atomically,
    reading_archive,
)
from fodl.errors import FodlError

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
PY_DIR = "cifar-10-batches-py"
PY_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _missing_message(root: Path) -> str:
    return (
        f"CIFAR-10 is not in {root / 'cifar10'} and could not be downloaded. Put there either the "
        f"official python version ({PY_DIR}/ or cifar-10-python.tar.gz) or a PNG tree "
        "(cifar10_png/{train,test}/<class>/*.png, or cifar10_png.tar.gz holding it), or point the "
        "data directory elsewhere: paths.data_dir=/path/to/data or export FODL_DATA_DIR=/path/to/data."
    )


_IGNORED: set[Path] = set()  # folders already warned about


def find_source(root: Path) -> tuple[str, Path] | None:
    """The first CIFAR-10 copy found under ``root/cifar10`` or ``root``: (kind, path).

    A ``cifar-10-batches-py`` folder next to ``cifar-10-python.tar.gz`` is used only when it
    carries the mark of a completed extraction: otherwise it may be what an interrupted
    extraction (by an older version) left behind, and the intact tarball is read instead.
    """
    for d in (root / "cifar10", root):
        py, tar = d / PY_DIR, d / "cifar-10-python.tar.gz"
        if (py / "test_batch").is_file() and (not tar.is_file() or (py / EXTRACTED_MARK).is_file()):
            return "python", py
        if tar.is_file():
            if py.exists() and py not in _IGNORED:
                _IGNORED.add(py)
                log.warning("ignoring %s: it is not marked as completely extracted (an interrupted "
                            "extraction leaves such a folder); reading %s instead. Delete the "
                            "folder to silence this.", py, tar)
            return "python-tar", tar
        if (d / "cifar10_png" / "test").is_dir():
            return "png", d / "cifar10_png"
        if (d / "cifar10_png.tar.gz").is_file():
            return "png-tar", d / "cifar10_png.tar.gz"
    return None


def _unpickle(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = pickle.loads(data, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:
        raise FodlError(f"CIFAR-10 batch {name} is corrupt or not a CIFAR python batch ({e}). "
                        "Replace it with the original file.") from None
    if len(x) != len(y):
        raise FodlError(f"CIFAR-10 batch {name}: {len(x)} images but {len(y)} labels.")
    return x, y


def read_python(path: Path) -> dict[str, torch.Tensor]:
    """The official ``cifar-10-batches-py`` (directory or the .tar.gz, read without extracting)."""
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        for f in PY_FILES:
            if not (path / f).is_file():
                raise FodlError(f"{path / f} is missing: the CIFAR-10 python batches are incomplete.")
            blobs[f] = (path / f).read_bytes()
    else:
        with reading_archive(path), tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile() and Path(m.name).name in PY_FILES:
                    blobs[Path(m.name).name] = tar.extractfile(m).read()
        if missing := [f for f in PY_FILES if f not in blobs]:
            raise FodlError(f"{path} lacks {', '.join(missing)}: not the CIFAR-10 python archive.")
    train = [_unpickle(blobs[f], f) for f in PY_FILES[:5]]
    xt, yt = _unpickle(blobs["test_batch"], "test_batch")
    return {"train_x": torch.from_numpy(np.concatenate([x for x, _ in train])),
            "train_y": torch.from_numpy(np.concatenate([y for _, y in train])),
            "test_x": torch.from_numpy(xt), "test_y": torch.from_numpy(yt)}


def _decode_png(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise FodlError(f"{name} is not a readable PNG ({e}). Replace it with the original image.") from None
    arr = np.asarray(img.convert("RGB"))
    if arr.shape != (32, 32, 3):
        raise FodlError(f"{name} is {arr.shape[1]}x{arr.shape[0]}; CIFAR-10 images are 32x32 RGB.")
    return arr.transpose(2, 0, 1)


def read_png_tree(path: Path) -> dict[str, torch.Tensor]:
    """``{train,test}/<class>/*.png`` from a directory or a .tar(.gz) holding it (read in
    place, no extraction). Classes are the official CIFAR-10 label order; files sorted by name."""
    items: dict[str, list[tuple[int, str, bytes]]] = {"train": [], "test": []}
    index = {c: i for i, c in enumerate(CLASSES)}

    def add(rel: str, data_fn):
        parts = Path(rel).parts
        if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
            return
        split, cls = parts[-3], parts[-2]
        if split in items:
            if cls not in index:
                raise FodlError(f"{path}: unknown class folder {cls!r} (expected one of {', '.join(CLASSES)}).")
            items[split].append((index[cls], rel, data_fn()))

    if path.is_dir():
        for p in sorted(path.rglob("*.png")):
            add(str(p.relative_to(path)), p.read_bytes)
    else:
        with reading_archive(path), tarfile.open(path) as tar:
            for m in tar:
                if m.isfile():
                    add(m.name, lambda m=m: tar.extractfile(m).read())
    out = {}
    for split, rows in items.items():
        if not rows:
            raise FodlError(f"{path} has no {split}/<class>/*.png images: " + _missing_message(path.parent))
        rows.sort(key=lambda r: (r[0], r[1]))
        out[f"{split}_x"] = torch.from_numpy(np.stack([_decode_png(d, n) for _, n, d in rows]))
        out[f"{split}_y"] = torch.tensor([c for c, _, _ in rows], dtype=torch.int64)
    return out


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 as uint8 tensors; batches come out as float ``(N, 3, crop, crop)``.

    Training batches get the book's distortions (random crop, flip, brightness, contrast,
    per-image standardization); evaluation batches the central crop + standardization. Both
    happen in ``on_after_batch_transfer``, i.e. on the GPU when training there. Validation is
    ``val_size`` training images drawn with a fixed seed (the book validated on the test set).
    """

    def __init__(self, data_dir: str | None = None, cache_dir: str | None = None,
                 val_size: int = 5000, download: bool = True, crop: int = 24,
                 augment: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = resolve_data_dir(data_dir)
        self.cache_dir = cache_dir
        self.val_size = val_size
        self.download = download
        self.crop = crop
        self.augment = augment

    def prepare_data(self) -> None:
        if find_source(self.root) is not None:
            return
        if not self.download:
            raise FodlError(_missing_message(self.root) + " (data.download=false)")
        target = self.root / "cifar10" / "cifar-10-python.tar.gz"
        try:
            download([URL], target, md5=MD5, timeout=120)
        except FodlError as e:
            raise FodlError(f"{_missing_message(self.root)} Download error: {e}") from None
        try:  # optional: read_python reads the tarball itself when there is no folder
            extract_tar_atomically(target, PY_DIR)
        except OSError as e:
            log.warning("could not extract %s (%s); reading the archive directly", target, e)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if find_source(self.root) is None:
            self.prepare_data()
        kind, path = find_source(self.root)
        reader = read_python if kind.startswith("python") else read_png_tree
        files = ([path / f for f in PY_FILES] if kind == "python" else [path] if path.is_file()
                 else [path / "train", path / "test"])  # png folders: every file under both
        raw = cached(self.cache_dir, f"cifar10-{kind}", files, lambda: reader(path))
        n = len(raw["train_x"])
        if not 0 <= self.val_size < n:
            raise FodlError(f"data.val_size={self.val_size} must be between 0 and {n - 1}.")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(12345))
        val, train = perm[: self.val_size], perm[self.val_size :]
        self.splits = {"train": (raw["train_x"][train], raw["train_y"][train]),
                       "val": (raw["train_x"][val], raw["train_y"][val]),
                       "test": (raw["test_x"], raw["test_y"])}
        if self.val_size == 0:
            self.splits["val"] = self.splits["test"]
            self.validation_is_test = True

    def transform(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.augment:
            return distort(x, self.augmentation_generator(x.device), self.crop)
        return evaluate_view(x, self.crop)
