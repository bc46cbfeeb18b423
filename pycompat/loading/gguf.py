"""Reader (and a small writer, for tests) of GGUF files.

A GGUF file is: magic ``GGUF``, version, tensor count, metadata count, then
typed key/value metadata, then tensor descriptors (name, dims, ggml type,
offset), then the tensor data, aligned to ``general.alignment`` bytes.

The reader never trusts a count or a length from the file: each is checked
against a cap and against the file size before anything is allocated, so a
crafted or truncated file gives a ``ModelFileError`` and not a MemoryError,
a hang or a traceback.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pycompat.loading.errors import ModelFileError
from pycompat.loading.mapped_file import map_file

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Caps on what a file may declare. Real files are far below them.
MAX_STRING_BYTES = 64 << 20
MAX_ARRAY_ITEMS = 1 << 24
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 20
MAX_DIMS = 4
MAX_ARRAY_NESTING = 2

# Metadata value types (gguf_type).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALAR_FORMATS = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}
_NUMPY_DTYPES = {
    _UINT8: "<u1", _INT8: "<i1", _UINT16: "<u2", _INT16: "<i2", _UINT32: "<u4", _INT32: "<i4",
    _FLOAT32: "<f4", _UINT64: "<u8", _INT64: "<i8", _FLOAT64: "<f8",
}


@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: its id in the file, and its block geometry."""

    name: str
    id: int
    block_elems: int  # elements per block
    block_bytes: int  # bytes per block

    def nbytes(self, n_elements: int) -> int:
        return n_elements // self.block_elems * self.block_bytes


# The types our kernel reads. Others are reported by name when met.
GGML_TYPES = {
    t.id: t
    for t in (
        GGMLType("F32", 0, 1, 4),
        GGMLType("F16", 1, 1, 2),
        GGMLType("Q4_0", 2, 32, 18),
        GGMLType("Q4_1", 3, 32, 20),
        GGMLType("Q8_0", 8, 32, 34),
        GGMLType("BF16", 30, 1, 2),
    )
}
GGML_TYPE_BY_NAME = {t.name: t for t in GGML_TYPES.values()}
_KNOWN_UNSUPPORTED = {
    6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K",
    14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M",
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # row-major, outermost first (the reverse of ggml's ne[])
    ggml_type: GGMLType
    data: memoryview  # raw bytes, in the file's block layout
    offset: int  # of data's first byte in the file

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    _mmap: mmap.mmap | None = None

    def close(self) -> None:
        """Release the mapping. Views handed out before must not be used after."""
        self.tensors.clear()
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a view is still alive; the mapping goes when it does
            self._mmap = None


class _Cursor:
    """Bounds-checked little-endian reads from a byte buffer."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ModelFileError(self.path, f"truncated: needs {n} bytes at offset {self.pos}, file has {len(self.buf)}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return self.scalar("<I")

    def u64(self) -> int:
        return self.scalar("<Q")

    def string(self) -> str:
        n = self.u64()
        if n > MAX_STRING_BYTES:
            raise ModelFileError(self.path, f"string of {n} bytes at offset {self.pos} exceeds the {MAX_STRING_BYTES} cap")
        raw = self.take(n)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            # Vocabularies occasionally hold invalid UTF-8 (byte tokens); keep it lossless.
            return bytes(raw).decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise ModelFileError(self.path, f"metadata arrays nested deeper than {MAX_ARRAY_NESTING}")
            item_type = self.u32()
            n = self.u64()
            if n > MAX_ARRAY_ITEMS:
                raise ModelFileError(self.path, f"metadata array of {n} items exceeds the {MAX_ARRAY_ITEMS} cap")
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type])
                return np.frombuffer(self.take(n * dtype.itemsize), dtype=dtype).tolist()
            return [self.value(item_type, depth + 1) for _ in range(n)]
        raise ModelFileError(self.path, f"unknown metadata value type {vtype} at offset {self.pos}")


def read_gguf(path: str | Path) -> GGUFFile:
    """Map a GGUF file and parse its metadata and tensor table.

    Tensor data stays in the mapping; ``GGUFTensor.data`` are views of it.
    Raises ModelFileError for anything unreadable, truncated or unsupported.
    """
    path = Path(path)
    mm, size = map_file(path, 24, "GGUF")
    buf = memoryview(mm)
    cur = _Cursor(buf, path)
    if bytes(cur.take(4)) != MAGIC:
        raise ModelFileError(path, "not a GGUF file (bad magic)")
    version = cur.u32()
    if version not in (2, 3):
        raise ModelFileError(path, f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > MAX_TENSOR_COUNT or n_kv > MAX_KV_COUNT:
        raise ModelFileError(path, f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.u32())

    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFileError(path, f"tensor {name!r} has {n_dims} dimensions")
        ne = [cur.u64() for _ in range(n_dims)]
        type_id = cur.u32()
        offset = cur.u64()
        infos.append((name, ne, type_id, offset))

    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ModelFileError(path, f"general.alignment {alignment} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment

    tensors: dict[str, GGUFTensor] = {}
    for name, ne, type_id, offset in infos:
        ggml_type = GGML_TYPES.get(type_id)
        if ggml_type is None:
            kind = _KNOWN_UNSUPPORTED.get(type_id, f"unknown type id {type_id}")
            supported = ", ".join(GGML_TYPE_BY_NAME)
            raise ModelFileError(path, f"tensor {name!r} is {kind}, which is not supported (supported: {supported})")
        n_elements = int(np.prod(ne, dtype=np.int64))
        if ne[0] % ggml_type.block_elems:
            raise ModelFileError(path, f"tensor {name!r}: row of {ne[0]} is not a multiple of the {ggml_type.name} block")
        nbytes = ggml_type.nbytes(n_elements)
        start = data_start + offset
        if start + nbytes > size:
            raise ModelFileError(path, f"truncated: tensor {name!r} needs bytes {start}..{start + nbytes}, file has {size}")
        tensors[name] = GGUFTensor(name, tuple(reversed(ne)), ggml_type, buf[start : start + nbytes], start)
    return GGUFFile(path, version, metadata, tensors, mm)


# --- writer -------------------------------------------------------------------------
# Used by the tests to make small random models, so that the loader is exercised on
# files written independently of the reader's assumptions about any one real model.


def _encode_value(value: Any) -> tuple[int, bytes]:
    if isinstance(value, bool):
        return _BOOL, struct.pack("<?", value)
    if isinstance(value, int):
        return (_UINT32, struct.pack("<I", value)) if 0 <= value < 1 << 32 else (_INT64, struct.pack("<q", value))
    if isinstance(value, float):
        return _FLOAT32, struct.pack("<f", value)
    if isinstance(value, str):
        raw = value.encode("utf-8", errors="surrogateescape")
        return _STRING, struct.pack("<Q", len(raw)) + raw
    if isinstance(value, (list, tuple)):
        if not value:
            return _ARRAY, struct.pack("<IQ", _INT32, 0)
        encoded = [_encode_value(v) for v in value]
        item_type = encoded[0][0]
        return _ARRAY, struct.pack("<IQ", item_type, len(value)) + b"".join(e[1] for e in encoded)
    raise TypeError(f"cannot encode {type(value).__name__} as GGUF metadata")


def write_gguf(path: str | Path, metadata: dict[str, Any], tensors: list[tuple[str, str, tuple[int, ...], bytes]]) -> None:
    """Write a GGUF v3 file. ``tensors`` holds (name, ggml type name or id, shape, raw bytes)."""
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    with open(path, "wb") as f:
        _write_gguf(f, metadata, tensors, alignment)


def _write_gguf(f: BinaryIO, metadata: dict[str, Any], tensors: list, alignment: int) -> None:
    f.write(MAGIC + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        vtype, raw = _encode_value(value)
        kraw = key.encode()
        f.write(struct.pack("<Q", len(kraw)) + kraw + struct.pack("<I", vtype) + raw)
    offset = 0
    for name, type_name, shape, data in tensors:
        nraw = name.encode()
        ne = list(reversed(shape))
        f.write(struct.pack("<Q", len(nraw)) + nraw + struct.pack("<I", len(ne)))
        f.write(struct.pack(f"<{len(ne)}Q", *ne))
        type_id = type_name if isinstance(type_name, int) else GGML_TYPE_BY_NAME[type_name].id
        f.write(struct.pack("<IQ", type_id, offset))
        offset += -(-len(data) // alignment) * alignment
    f.write(b"\0" * (-f.tell() % alignment))
    for _, _, _, data in tensors:
        f.write(data)
        f.write(b"\0" * (-len(data) % alignment))
