"""MNIST: the four IDX files, verified, held in memory, split 55,000 / 5,000 / 10,000."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fodl.data.augment import random_shift
from fodl.data.base import InMemoryDataModule, resolve_data_dir
from fodl.data.download import cached, download, file_digest
from fodl.data.idx import read_idx
from fodl.errors import FodlError

log = logging.getLogger(__name__)

# name -> (file, md5 of the official .gz, expected shape)
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", (10000,)),
}
# file -> md5 of the official file decompressed (what torchvision / Kaggle copies hold); the
# .gz files whose md5s are above decompress to exactly these bytes (../shared/data/SOURCES.md)
RAW_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",  # 47,040,016 bytes
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",  # 60,008 bytes
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",  # 7,840,016 bytes
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",  # 10,008 bytes
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MEAN, STD = 0.1307, 0.3081


def locate(root: Path, filename: str) -> Path | None:
    """The file under ``root/mnist`` or ``root``, gzipped or not (as torchvision / Kaggle ship it)."""
    for d in (root / "mnist", root, root / "MNIST" / "raw"):
        for name in (filename, filename.removesuffix(".gz"), filename.removesuffix(".gz").replace("-idx", ".idx")):
            if (d / name).is_file():
                return d / name
    return None


def load_mnist_files(root: Path, verify: str = "content") -> dict[str, torch.Tensor]:
    """Read the four files under ``root`` into uint8 tensors, validating them.

    ``verify="content"`` checks IDX magic, shapes and label range (a local copy may be
    re-compressed, so its bytes need not match the published md5); ``verify="md5"``
    additionally requires the published checksum of each file: the official archive's md5 for
    a ``.gz``, the official decompressed file's md5 for an uncompressed copy.
    """
    out = {}
    for key, (filename, md5, shape) in FILES.items():
        path = locate(root, filename)
        if path is None:
            raise FodlError(_missing_message(root))
        if verify == "md5":
            gz = path.suffix == ".gz"
            want = md5 if gz else RAW_MD5[filename]
            if (got := file_digest(path)) != want:
                what = "the official archive" if gz else f"the official {filename} decompressed"
                raise FodlError(
                    f"{path} fails its checksum (md5 {got}, {what} has {want}): the file is "
                    "corrupt or not the original. Delete it to download it again, or set "
                    "data.verify=content to accept a re-compressed or otherwise re-packed copy."
                )
        t = read_idx(path)
        if t.dtype != torch.uint8 or tuple(t.shape[1:]) != shape[1:]:
            want = "(N, 28, 28) images" if len(shape) > 1 else "(N,) labels"
            raise FodlError(f"{path} holds a {t.dtype} array of shape {tuple(t.shape)}; MNIST needs "
                            f"uint8 {want}. Replace it with the original file.")
        if len(t) != shape[0]:
            log.warning("%s has %d examples, not the official %d", path, len(t), shape[0])
        out[key] = t
    for split in ("train", "test"):
        n_img, n_lab = len(out[f"{split}_images"]), len(out[f"{split}_labels"])
        if n_img != n_lab:
            raise FodlError(f"MNIST {split} files under {root} disagree: {n_img} images but {n_lab} labels.")
        if int(out[f"{split}_labels"].max()) > 9:
            raise FodlError(f"MNIST {split} labels under {root} contain values above 9: wrong or corrupt file.")
    return out


def _missing_message(root: Path) -> str:
    names = ", ".join(f for f, _, _ in FILES.values())
    return (
        f"MNIST is not in {root / 'mnist'} and could not be downloaded. Put the four files "
        f"({names}) in {root / 'mnist'}, or point the data directory at a folder holding a "
        "mnist/ directory with them: paths.data_dir=/path/to/data or export FODL_DATA_DIR=/path/to/data."
    )


class MNISTDataModule(InMemoryDataModule):
    """The book's MNIST: pixels scaled to [0, 1], 55,000 train / 5,000 validation / 10,000 test.

    As in the book's ``input_data.read_data_sets``, validation is the first ``val_size``
    training images. Batches are ``(images[N,1,28,28] float32, labels[N] int64)``.
    ``shift=k`` moves each training image by a random whole-pixel offset in ``[-k, k]`` on
    each axis (on the device, a stream per seed/epoch/process); evaluation images never move.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        val_size: int = 5000,
        download: bool = True,
        verify: str = "content",
        standardize: bool = False,
        shift: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= shift < 14:
            raise FodlError(f"data.shift={shift}: the largest random offset in pixels must be in "
                            "[0, 13], e.g. 2 (0: no augmentation).")
        if verify not in ("content", "md5"):
            raise FodlError(f"data.verify must be 'content' or 'md5', got {verify!r}.")
        self.root = resolve_data_dir(data_dir)
        self.cache_dir = cache_dir
        self.val_size = val_size
        self.download = download
        self.verify = verify
        self.standardize = standardize
        self.shift = shift
        self._black = self._to_float(torch.zeros(1, 1, 1, dtype=torch.uint8)).item()  # shift's fill

    def prepare_data(self) -> None:
        missing = [(f, md5) for f, md5, _ in FILES.values() if locate(self.root, f) is None]
        if not missing:
            return
        if not self.download:
            raise FodlError(_missing_message(self.root) + " (data.download=false)")
        for filename, md5 in missing:
            try:
                download([m + filename for m in MIRRORS], self.root / "mnist" / filename, md5=md5)
            except FodlError as e:
                raise FodlError(f"{_missing_message(self.root)} Download error: {e}") from None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if any(locate(self.root, f) is None for f, _, _ in FILES.values()):
            self.prepare_data()
        sources = [locate(self.root, f) for f, _, _ in FILES.values()]
        raw = cached(self.cache_dir, f"mnist-{self.verify}", sources,
                     lambda: load_mnist_files(self.root, self.verify))
        n_train = len(raw["train_images"])
        if not 0 < self.val_size < n_train:
            raise FodlError(f"data.val_size={self.val_size} must be between 1 and {n_train - 1} "
                            f"(the training file has {n_train} images).")
        x_train, y_train = self._to_float(raw["train_images"]), raw["train_labels"].long()
        v = self.val_size
        self.splits = {
            "train": (x_train[v:], y_train[v:]),
            "val": (x_train[:v], y_train[:v]),
            "test": (self._to_float(raw["test_images"]), raw["test_labels"].long()),
        }

    @property
    def transforms_batches(self) -> bool:
        return self.shift > 0

    def transform(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if not train:
            return x
        return random_shift(x, self.shift, self.augmentation_generator(x.device), self._black)

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(1).float().div_(255.0)
        return x.sub_(MEAN).div_(STD) if self.standardize else x
