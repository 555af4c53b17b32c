"""The ``.bsnn`` file: writer and reader of the typed graph (:class:`bitsound.graph.ir.Graph`).

File layout (version 2.0; integers little-endian, floats IEEE-754 little-endian)::

    header, 40 bytes
      0   magic            b"BSNN\\r\\n\\x1a\\n"
      8   u16 major = 2, u16 minor = 0   (a reader accepts any minor of its major)
      12  u32 flags = 0
      16  u32 header_bytes = 40
      20  u32 n_records
      24  u32 n_slots                    tensor slots (one per graph tensor)
      28  u32 reserved = 0
      32  u64 file_bytes                 total size including the checksum
    n_records records:  u32 type, u32 record_bytes (incl. these 8 bytes, multiple of 4), body
    trailer:            u32 CRC-32 (zlib.crc32) of every preceding byte

A record is metadata (type 100: u32 length + UTF-8 JSON, padded to 4 bytes; it follows the input
op) or an op, whose body layout is defined once in :mod:`bitsound.graph.opcodes`. Tensors are
channels last; bits are ``[h][w][words(c)]`` uint64 with channel ``j`` in bit ``j % 64`` of word
``j // 64``, ``+1 -> 0``, ``-1 -> 1``, unused high bits 0.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from bitsound.errors import CheckpointError, ExportError
from bitsound.graph import opcodes as oc
from bitsound.graph.ir import Graph

NAME_MAX = 255  # bytes of an op name the engine keeps
_ELEM_BYTES = {"f32": 4, "i32": 4, "f16": 2, "i8": 1, "u64": 8}
_LE = {"f32": "<f4", "i32": "<i4", "f16": "<f2", "i8": "i1", "u64": "<u8"}
_NATIVE = {"f32": np.float32, "i32": np.int32, "f16": np.float16, "i8": np.int8, "u64": np.uint64}


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _record(code: int, body: bytes) -> bytes:
    return struct.pack("<II", code, 8 + len(body)) + body


def _op_body(g: Graph, i: int) -> bytes:
    op = g.ops[i]
    spec = op.spec
    in0 = op.inputs[0] if op.inputs else -1
    in1 = op.inputs[1] if len(op.inputs) > 1 else -1
    name = op.name.encode("utf-8")[:NAME_MAX]
    parts = [struct.pack("<iiiI", in0, in1, op.output, len(name)), _pad4(name)]
    for n, t in spec.params:
        parts.append(struct.pack("<f" if t == "f32" else "<i", op.params[n]))
    for a in spec.arrays:
        if a.name in op.arrays:
            parts.append(_pad4(op.arrays[a.name].astype(_LE[a.dtype]).tobytes()))
    return b"".join(parts)


def records(g: Graph) -> list[bytes]:
    """The records of ``g`` (which must end in its output op), metadata second, each with its header."""
    g.output  # noqa: B018 - raises when the graph has no output op
    recs = [_record(oc.BY_NAME[op.kind].code, _op_body(g, i)) for i, op in enumerate(g.ops)]
    if g.meta is not None:
        text = json.dumps(g.meta, sort_keys=True).encode("utf-8")
        recs.insert(1, _record(oc.REC_META, struct.pack("<I", len(text)) + _pad4(text)))
    return recs


def assemble(recs: list[bytes], n_slots: int, *, version: tuple[int, int] = oc.FORMAT_VERSION) -> bytes:
    """A whole file from records: header, records, CRC (the tests also build malformed files with it)."""
    payload = b"".join(recs)
    total = oc.HEADER_BYTES + len(payload) + 4
    header = oc.FORMAT_MAGIC + struct.pack(
        "<HHIIIIIQ", *version, 0, oc.HEADER_BYTES, len(recs), n_slots, 0, total
    )
    data = header + payload
    return data + struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def to_bytes(g: Graph) -> bytes:
    """Serialise ``g`` (which must end in its output op)."""
    return assemble(records(g), len(g.tensors))


def write(g: Graph, path: str | Path) -> Path:
    """Write ``g`` to ``path`` atomically (a temporary file, then a rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(to_bytes(g))
    tmp.replace(out)
    return out


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.d, self.pos, self.where = data, 0, where

    def fail(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {msg}")

    def take(self, n: int, end: int) -> bytes:
        if self.pos + n > end:
            raise self.fail(f"record ends at byte {end} but a field needs {n} bytes at {self.pos}")
        b = self.d[self.pos : self.pos + n]
        self.pos += n
        return b


def from_bytes(data: bytes, *, where: str = "bsnn data") -> Graph:
    """Parse a ``.bsnn`` file into the :class:`Graph` it was written from.

    Raises
    ------
    CheckpointError
        For a file that is not a bsnn file, of another major version, corrupt or truncated,
        naming the problem.
    """
    data = bytes(data)
    r = _Reader(data, where)
    if data[:8] != oc.FORMAT_MAGIC:
        raise r.fail("not a bsnn model file (bad magic bytes); export one with `bitsound export`")
    if len(data) < oc.HEADER_BYTES + 4:
        raise r.fail("shorter than the header")
    major, minor, flags, hbytes, n_records, n_slots, _res, total = struct.unpack_from("<HHIIIIIQ", data, 8)
    if major != oc.FORMAT_VERSION[0]:
        raise r.fail(
            f"format version {major}.{minor}; this bitsound reads {oc.FORMAT_VERSION[0]}.x: "
            f"re-export the model with this bitsound (`bitsound export --model DIR/model.pt`)"
        )
    if total != len(data):
        raise r.fail(f"the header says {total} bytes but the file has {len(data)}: truncated or padded")
    if struct.unpack_from("<I", data, len(data) - 4)[0] != zlib.crc32(data[:-4]) & 0xFFFFFFFF:
        raise r.fail("checksum mismatch: the file is corrupt")
    if flags or hbytes != oc.HEADER_BYTES:
        raise r.fail(f"unknown header flags {flags:#x} or header size {hbytes}")
    g = Graph()
    r.pos = oc.HEADER_BYTES
    body_end = len(data) - 4
    for rec in range(n_records):
        start = r.pos
        code, size = struct.unpack("<II", r.take(8, body_end))
        end = start + size
        if size < 8 or size % 4 or end > body_end:
            raise r.fail(f"record {rec}: invalid size {size}")
        if code == oc.REC_META:
            (n,) = struct.unpack("<I", r.take(4, end))
            g.meta = json.loads(r.take(n, end).decode("utf-8"))
            r.pos = end
            continue
        spec = oc.BY_CODE.get(code)
        if spec is None:
            raise r.fail(f"record {rec}: unknown op type {code}")
        in0, in1, out, name_len = struct.unpack("<iiiI", r.take(16, end))
        name = r.take((name_len + 3) // 4 * 4, end)[:name_len].decode("utf-8", errors="replace")
        params = {}
        for n, t in spec.params:
            (params[n],) = struct.unpack("<f" if t == "f32" else "<i", r.take(4, end))
        arrays = {}
        for a in spec.arrays:
            count = a.length(params)
            if count:
                nbytes = count * _ELEM_BYTES[a.dtype]
                raw = r.take((nbytes + 3) // 4 * 4, end)[:nbytes]
                arrays[a.name] = np.frombuffer(raw, dtype=_LE[a.dtype]).astype(_NATIVE[a.dtype])
        if r.pos != end:
            raise r.fail(f"record {rec} ({spec.name}): declares {size} bytes, its fields use {r.pos - start}")
        inputs = [t for t in (in0, in1)[: spec.n_inputs]]
        try:
            got = g.add(spec.name, inputs, params, arrays, name=name)
        except ExportError as err:
            raise r.fail(f"record {rec}: {err}") from None
        if got != out:
            raise r.fail(
                f"record {rec} ({spec.name}): writes slot {out}, expected {got} (one new slot per op)"
            )
    if r.pos != body_end:
        raise r.fail(f"{body_end - r.pos} unread bytes after the last record")
    if len(g.tensors) != n_slots:
        raise r.fail(f"the header declares {n_slots} slots, the ops use {len(g.tensors)}")
    g.output  # noqa: B018 - raises without an output op
    return g


def read(path: str | Path) -> Graph:
    """Read a ``.bsnn`` file written by :func:`write` (see :func:`from_bytes`)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"'{p}' does not exist; export a model with `bitsound export`")
    return from_bytes(p.read_bytes(), where=f"'{p}'")
