"""Reader and writer of the safetensors format.

A file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to its dtype, shape and byte range, then the raw data. The header
is size-capped and every range checked against the file before use.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pycompat.loading.errors import ModelFileError
from pycompat.loading.mapped_file import map_file

MAX_HEADER_BYTES = 100 << 20  # the format's own limit

# safetensors dtype name -> (our kernel dtype name, bytes per element)
DTYPES = {"F32": ("F32", 4), "F16": ("F16", 2), "BF16": ("BF16", 2)}


@dataclass(frozen=True)
class SafeTensor:
    name: str
    dtype: str  # F32, F16 or BF16
    shape: tuple[int, ...]
    data: memoryview
    offset: int  # of data's first byte in the file


def read_safetensors(path: str | Path, wanted: Callable[[str], bool] | None = None) -> dict[str, SafeTensor]:
    """Maps a .safetensors file; returns its tensors as views of the mapping.

    ``wanted``: if given, only the tensors it accepts by name are read (and
    checked); the others may be in any dtype (a BERT checkpoint's int64
    ``position_ids``).
    """
    path = Path(path)
    mm, size = map_file(path, 8, "safetensors")
    buf = memoryview(mm)
    (header_len,) = struct.unpack("<Q", buf[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise ModelFileError(path, f"header of {header_len} bytes does not fit the file ({size} bytes)")
    try:
        header = json.loads(bytes(buf[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "header is not a JSON object")
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or (wanted is not None and not wanted(name)):
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(path, f"tensor {name!r} has a malformed header entry") from None
        if dtype not in DTYPES:
            raise ModelFileError(path, f"tensor {name!r} is {dtype}; supported: {', '.join(DTYPES)}")
        kernel_dtype, itemsize = DTYPES[dtype]
        expected = int(np.prod(shape, dtype=np.int64)) * itemsize
        if not (0 <= start <= end and end - start == expected and base + end <= size):
            raise ModelFileError(path, f"tensor {name!r}: byte range {start}..{end} is wrong for {dtype}{list(shape)} or past the end")
        tensors[name] = SafeTensor(name, kernel_dtype, shape, buf[base + start : base + end], base + start)
    return tensors


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], dtypes: dict[str, str] | None = None) -> None:
    """Writes arrays to a .safetensors file.

    Arrays may be float32 or float16; ``dtypes`` may name "BF16" for an entry whose
    array holds bfloat16 bit patterns as uint16.
    """
    dtypes = dtypes or {}
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = dtypes.get(name) or {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16"}[arr.dtype.newbyteorder("<")]
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for raw in blobs:
            f.write(raw)
