"""The IDX format of the MNIST files (LeCun et al.): read and write, gzipped or not."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from fodl.errors import FodlError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def _raw_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise FodlError(
            f"{path} is corrupt ({e}). Delete it so it is downloaded again, or replace it with "
            "the original file."
        ) from None


def read_idx(path: str | Path) -> torch.Tensor:
    """Parse an IDX file (``.gz`` or plain) into a tensor, validating header and length."""
    path = Path(path)
    data = _raw_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise FodlError(
            f"{path} is not an IDX file (bad magic {data[:4].hex() or 'empty'}). Replace it "
            "with the original MNIST file."
        )
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise FodlError(f"{path} is truncated inside its IDX header. Replace it with the original.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise FodlError(
            f"{path} holds {len(body)} data bytes but its header {tuple(shape)} needs {expected}: "
            "the file is truncated or corrupt. Replace it with the original."
        )
    arr = np.frombuffer(body, dtype=dtype).reshape(shape)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, array, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8/int8) as IDX; gzip when the name ends in ``.gz``."""
    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(array))
    if arr.dtype not in _CODES:
        raise ValueError(f"write_idx supports uint8/int8, got {arr.dtype}")
    header = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path
