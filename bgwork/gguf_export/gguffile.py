"""GGUF v3 files: a small reader and the writer's pieces (gguf.GGUFReader parses every vocab string through
numpy: too slow for a 49k-token vocabulary). Tensor bytes stay on disk (memmap)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bgwork.gguf_export.errors import ExportError

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT; files with general.alignment set are refused


@dataclass
class GGUFTensor:
    name: str
    ne: list[int]  # GGUF shape: fastest-varying dimension first
    type: str  # ggml type name
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFLayout:
    path: Path
    version: int
    n_kv: int
    kv_raw: bytes  # the KV section as stored
    kv: dict  # scalar and string values (arrays are skipped)
    kv_offsets: dict  # key -> (value offset within kv_raw, value type)
    tensors: list[GGUFTensor]
    data_start: int

    def tensor_data(self, t: GGUFTensor) -> np.ndarray:
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start + t.offset, shape=(t.nbytes,))


def read_gguf(path: str | Path) -> GGUFLayout:
    """Header, metadata and tensor table of a GGUF v3 file; tensor bytes stay on disk (memmap)."""
    import gguf

    path = Path(path)
    with open(path, "rb") as fh:
        buf = fh.read(min(path.stat().st_size, 64 << 20))
    if buf[:4] != b"GGUF":
        raise ExportError(f"{path}: not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    pos = kv_start = 24
    kv, kv_offsets = {}, {}
    for _ in range(n_kv):
        key, pos = _read_str(buf, pos)
        (vtype,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        kv_offsets[key] = (pos - kv_start, vtype)
        if vtype == 9:
            (etype, count), pos = struct.unpack_from("<IQ", buf, pos), pos + 12
            for _ in range(count):
                pos = _skip_value(buf, pos, etype)
        else:
            kv[key], pos = _read_value(buf, pos, vtype)
    if "general.alignment" in kv and kv["general.alignment"] != ALIGNMENT:
        raise ExportError(f"{path}: general.alignment {kv['general.alignment']} is not supported")
    kv_raw = buf[kv_start:pos]
    tensors = []
    for _ in range(n_tensors):
        name, pos = _read_str(buf, pos)
        (n_dims,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        ne = list(struct.unpack_from(f"<{n_dims}Q", buf, pos))
        pos += 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        qtype = gguf.GGMLQuantizationType(ttype)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        tensors.append(GGUFTensor(name, ne, qtype.name, offset, math.prod(ne) // block * size))
    data_start = -(-pos // ALIGNMENT) * ALIGNMENT
    return GGUFLayout(path, version, n_kv, kv_raw, kv, kv_offsets, tensors, data_start)


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return buf[pos + 8:pos + 8 + n].decode("utf-8", errors="replace"), pos + 8 + n


def _read_value(buf: bytes, pos: int, vtype: int):
    if vtype == 8:
        return _read_str(buf, pos)
    fmt = _GGUF_SCALARS[vtype]
    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)


def _skip_value(buf: bytes, pos: int, vtype: int) -> int:
    if vtype == 8:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == 9:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        for _ in range(count):
            pos = _skip_value(buf, pos, etype)
        return pos
    return pos + struct.calcsize(_GGUF_SCALARS[vtype])


def f32_rows(layout: GGUFLayout, t: GGUFTensor) -> np.ndarray:
    """A F16/BF16/F32 tensor as float32 rows of ne[0] values."""
    raw = layout.tensor_data(t)
    if t.type == "F32":
        return np.asarray(raw.view(np.float32)).reshape(-1, t.ne[0])
    if t.type == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(-1, t.ne[0])
    if t.type == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1, t.ne[0])
    raise ExportError(f"{layout.path}: {t.name} is {t.type}; expected an F16/BF16/F32 source file")


def gguf_tensor_types(path: str | Path) -> dict[str, str]:
    return {t.name: t.type for t in read_gguf(path).tensors}


def tensor_info(name: str, ne: list[int], ttype: int, offset: int) -> bytes:
    raw = name.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ttype, offset)


def with_u32(layout: GGUFLayout, key: str, value: int) -> bytes:
    if key not in layout.kv_offsets or layout.kv_offsets[key][1] != 4:
        raise ExportError(f"{layout.path}: no uint32 {key} to set")
    pos = layout.kv_offsets[key][0]
    return layout.kv_raw[:pos] + struct.pack("<I", value) + layout.kv_raw[pos + 4:]
