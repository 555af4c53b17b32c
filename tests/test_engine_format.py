"""The packed format's reader treats files as untrusted: malformed files give a code and a message.

Hand-made corruptions (truncation at every length, bad magic, checksum, version, flags, sizes,
counts, slot ids, shapes, padding bits, non-finite values) each give :class:`EngineFileError`
with the expected code; a random-mutation fuzz loop runs through the Python binding in a
subprocess (a crash fails the test instead of killing pytest), and the C harness
``src/bitsound/engine/fuzz/fuzz_load.c`` is compiled with AddressSanitizer + UBSan and run.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from bitsound import engine
from bitsound.export import bsnn
from bitsound.graph.builder import GraphBuilder
from bitsound.graph.opcodes import HEADER_BYTES

ENGINE_DIR = Path(engine.__file__).parent


def restamp(data: bytes | bytearray) -> bytes:
    """Fix the header's file size and the CRC after an edit (so the edit reaches the parser)."""
    b = bytearray(data)
    b[32:40] = struct.pack("<Q", len(b))
    b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])) & 0xFFFFFFFF)
    return bytes(b)


def small_writer(cin=70, meta=True, hw=(5, 6)) -> GraphBuilder:
    rng = np.random.default_rng(0)
    wr = GraphBuilder()
    x = wr.add_input((cin, *hw))
    b = wr.add_pack(x, name="pack")
    w = np.where(rng.standard_normal((8, cin, 3, 3)) < 0, -1, 1)
    t = wr.add_bconv2d(b, w, padding=(1, 1, 1, 1), out_mode="bits", thr=np.zeros(8, int),
                       flip=np.arange(8) % 2, name="bconv")
    p = wr.add_maxpool(t, kernel=(2, 2), stride=(2, 2), ceil_mode=True, name="pool")
    d = wr.add_bconv2d(p, np.ones((3, 8, 3, 3)), scale=np.ones(3), bias=np.zeros(3), name="dense")
    g = wr.add_gap(d, name="gap")
    lin = wr.add_linear(g, rng.standard_normal((4, 3)), rng.standard_normal(4), name="linear")
    wr.add_output(lin)
    if meta:
        wr.meta = {"labels": ["a", "b", "c", "d"]}
    return wr


def prelu_writer() -> GraphBuilder:
    """input -> per-channel PReLU -> global average pool -> linear (the float activation path)."""
    wr = GraphBuilder()
    x = wr.add_act(wr.add_input((5, 3, 4)), "prelu", slope=np.linspace(-0.5, 0.5, 5), name="act")
    wr.add_output(wr.add_linear(wr.add_gap(x, name="gap"), np.ones((2, 5)), np.zeros(2), name="linear"))
    return wr


def hostile_slice_writer(pad: int) -> GraphBuilder:
    """A valid file whose one binary conv has a slice geometry beyond every int32 (output rows x
    input width = (pad + 1) x 2^24): input (1, 1, 2^24), a 1 x 2 kernel dilated by 2^24 - 1, top
    padding ``pad``, bit output. It once overflowed the slice tables (pad 16384: a segfault) or
    took O(rows x width x kw) to load (smaller pads)."""
    wr = GraphBuilder()
    x = wr.add_input((1, 1, 1 << 24))
    b = wr.add_pack(x, name="pack")
    wr.add_bconv2d(b, np.ones((1, 1, 1, 2)), padding=(pad, 0, 0, 0), dilation=(1, (1 << 24) - 1),
                   out_mode="bits", thr=np.zeros(1, int), flip=np.zeros(1, int), name="bconv")
    wr.add_output(x)
    return wr


def load_error(data: bytes) -> engine.EngineFileError:
    with pytest.raises(engine.EngineFileError) as info:
        engine.loads(data)
    assert str(info.value)  # always a message
    return info.value


def test_valid_file_loads_and_runs():
    data = small_writer().to_bytes()
    e = engine.loads(data)
    assert e.feature_shape == (70, 5, 6)
    assert e.labels == ["a", "b", "c", "d"]
    out = e.predict(np.zeros((2, 70, 5, 6), np.float32))
    assert out.shape == (2, 4) and np.isfinite(out).all()


def test_every_truncation_is_an_error():
    data = small_writer().to_bytes()
    for n in range(len(data)):
        err = load_error(data[:n])
        assert err.code_name in ("bad_magic", "truncated"), (n, err)
    # truncated but re-stamped: the records themselves run out
    for n in range(HEADER_BYTES + 4, len(data) - 4, 7):
        err = load_error(restamp(data[:n] + b"\0\0\0\0"))
        assert err.code_name in ("truncated", "out_of_range", "bad_graph"), (n, err)


def test_bad_magic_checksum_version_flags():
    data = small_writer().to_bytes()
    assert load_error(b"").code_name == "bad_magic"
    assert load_error(b"PK\x03\x04" + data[4:]).code_name == "bad_magic"
    corrupt = bytearray(data)
    corrupt[100] ^= 0x10
    err = load_error(bytes(corrupt))
    assert err.code_name == "bad_checksum" and "corrupt" in str(err)
    v3 = bytearray(data)
    v3[8:10] = struct.pack("<H", 3)
    err = load_error(restamp(v3))
    assert err.code_name == "bad_version" and "3.0" in str(err)
    v1 = bytearray(data)  # files of the first format say how to get a current one
    v1[8:10] = struct.pack("<H", 1)
    err = load_error(restamp(v1))
    assert err.code_name == "bad_version" and "re-export" in str(err)
    minor = bytearray(data)
    minor[10:12] = struct.pack("<H", 7)  # a newer minor of the same major still loads
    assert engine.loads(restamp(minor)).predict(np.zeros((1, 70, 5, 6), np.float32)).shape == (1, 4)
    flags = bytearray(data)
    flags[12:16] = struct.pack("<I", 1)
    assert load_error(restamp(flags)).code_name == "unsupported"
    size = bytearray(data)
    size[32:40] = struct.pack("<Q", len(data) + 8)
    assert load_error(bytes(size)).code_name == "truncated"


@pytest.mark.parametrize("field,value,code", [
    (20, 0, "out_of_range"),            # n_records
    (20, 0xFFFFFFFF, "out_of_range"),
    (20, 3, "out_of_range"),            # fewer records than the file holds: unread bytes
    (24, 0, "out_of_range"),            # n_slots
    (24, 0x7FFFFFFF, "out_of_range"),
    (16, 44, "out_of_range"),           # header_bytes
    (28, 5, "out_of_range"),            # reserved
])
def test_header_counts_out_of_range(field, value, code):
    b = bytearray(small_writer().to_bytes())
    b[field:field + 4] = struct.pack("<I", value)
    assert load_error(restamp(b)).code_name == code


def edited(record: int, offset: int, fmt: str, value, *, meta=False) -> bytes:
    """The small file with one field of one op record replaced (offset from the record start)."""
    wr = small_writer(meta=meta)
    recs = wr.records
    rec = bytearray(recs[record])
    struct.pack_into(fmt, rec, offset, value)
    recs[record] = bytes(rec)
    return bsnn.assemble(recs, len(wr.graph.tensors))


# op record: 0 type, 4 size, 8 in0, 12 in1, 16 out, 20 name_len, 24 name (padded to 4), params
@pytest.mark.parametrize("record,offset,fmt,value,code,words", [
    (1, 0, "<I", 99, "unsupported", "unknown record type"),
    (1, 4, "<I", 6, "out_of_range", "record size"),
    (1, 4, "<I", 0xFFFFFFF0, "truncated", "record size"),
    (1, 4, "<I", 33, "out_of_range", "record size"),
    (1, 8, "<i", 5, "bad_graph", "read before"),
    (1, 8, "<i", -3, "bad_graph", "outside"),
    (1, 8, "<i", 1 << 30, "bad_graph", "outside"),
    (1, 16, "<i", 0, "bad_graph", "also an input"),
    (1, 20, "<I", 1000, "out_of_range", "name length"),
    (1, 20, "<I", 200, "truncated", "more bytes"),
    (2, 8, "<i", 0, "bad_graph", "needs bits"),  # binary conv reading the float input
    # "bconv" pads to 8 bytes: params cin cout groups kh kw sh sw pt pl pb pr dh dw out_mode from 32
    (2, 32, "<i", 71, "bad_graph", "channels"),   # cin != the input's channels
    (2, 36, "<i", 0, "out_of_range", "out channels"),
    (2, 40, "<i", 3, "out_of_range", "groups"),    # 3 divides neither 70 nor 8
    (2, 44, "<i", (1 << 24) + 1, "out_of_range", "kernel height"),
    (2, 44, "<i", 9, "bad_graph", "does not fit"),
    (2, 52, "<i", 0, "out_of_range", "stride"),
    (2, 60, "<i", -1, "out_of_range", "padding"),
    (2, 84, "<i", 7, "unsupported", "output mode"),
    (0, 32, "<i", 3, "out_of_range", "rank"),        # "input" pads its name to 8 bytes
    (0, 40, "<i", (1 << 24) + 1, "out_of_range", "input height"),
    (0, 36, "<i", 0, "out_of_range", "input channels"),
    (3, 28 + 24, "<i", 2, "out_of_range", "ceil_mode"),  # "pool": 4 name bytes
    (3, 28, "<i", 100, "bad_graph", "pool window"),
])
def test_field_out_of_range(record, offset, fmt, value, code, words):
    err = load_error(edited(record, offset, fmt, value))
    assert err.code_name == code, err
    assert words in str(err), err
    assert f"record {record}" in str(err)


def test_huge_tensors_are_refused_before_allocation():
    wr = small_writer(meta=False)
    recs = wr.records
    rec = bytearray(recs[0])
    struct.pack_into("<iii", rec, 36, 65536, 65536, 65536)  # c, h, w of the input
    recs[0] = bytes(rec)
    err = load_error(bsnn.assemble(recs, len(wr.graph.tensors)))
    assert err.code_name == "out_of_range" and "elements" in str(err)


def test_weight_padding_bits_and_non_finite_values_are_rejected():
    wr = small_writer(meta=False)
    n = len(wr.graph.tensors)
    recs = wr.records
    rec = bytearray(recs[2])
    # first weight word of the binary conv: cin = 70, so word 1 of tap 0 has 6 valid bits
    first = 8 + 16 + 8 + 4 * 14  # record header, slots + name_len, "bconv" padded, 14 params
    struct.pack_into("<Q", rec, first + 8, 1 << 40)
    recs[2] = bytes(rec)
    err = load_error(bsnn.assemble(recs, n))
    assert err.code_name == "out_of_range" and "padding bits" in str(err)
    recs = wr.records
    rec = bytearray(recs[6])  # the linear layer's first weight, after nin nout has_bias wdtype
    struct.pack_into("<f", rec, 8 + 16 + 8 + 16, float("nan"))
    recs[6] = bytes(rec)
    err = load_error(bsnn.assemble(recs, n))
    assert err.code_name == "out_of_range" and "not finite" in str(err)


def test_prelu_slopes_must_match_the_channels():
    wr = prelu_writer()
    x = np.full((1, 5, 3, 4), -2.0, np.float32)  # channel slopes -0.5 .. 0.5: outputs 1, 0.5, 0, -0.5, -1
    assert np.allclose(engine.loads(wr.to_bytes()).predict(x), 0.0)
    x[0, 3] = 1.0  # kept as is where >= 0
    assert np.allclose(engine.loads(wr.to_bytes()).predict(x), 1.5)
    recs = wr.records
    rec = bytearray(recs[1])
    struct.pack_into("<i", rec, 8 + 16 + 4 + 4, 4)  # header, slots + name_len, "act", kind, c
    recs[1] = bytes(rec)
    err = load_error(bsnn.assemble(recs, len(wr.graph.tensors)))
    assert err.code_name == "bad_graph" and "activation over 4 channels" in str(err)
    struct.pack_into("<i", rec, 8 + 16 + 4, 9)  # an activation kind the engine does not know
    recs[1] = bytes(rec)
    err = load_error(bsnn.assemble(recs, len(wr.graph.tensors)))
    assert err.code_name == "unsupported" and "activation kind 9" in str(err)


def test_graph_structure_errors():
    wr = small_writer(meta=False)
    n = len(wr.graph.tensors)
    recs = wr.records[:-1]  # no output record
    recs.append(recs[-1])
    err = load_error(bsnn.assemble(recs, n))
    assert err.code_name == "bad_graph"
    recs = wr.records
    recs = [recs[1], recs[0], *recs[2:]]  # the input is not first
    err = load_error(bsnn.assemble(recs, n))
    assert err.code_name == "bad_graph" and "first op must be the input" in str(err)
    recs = wr.records
    recs.append(recs[-1])  # a record after the output
    err = load_error(bsnn.assemble(recs, n))
    assert err.code_name == "bad_graph" and "after the output" in str(err)


def test_meta_length_overrun():
    data = bytearray(small_writer().to_bytes())
    # the meta record follows the input record; its length field is after its 8-byte header
    first = struct.unpack_from("<I", data, HEADER_BYTES + 4)[0]
    meta_at = HEADER_BYTES + first
    assert struct.unpack_from("<I", data, meta_at)[0] == 100
    struct.pack_into("<I", data, meta_at + 8, 1 << 30)
    err = load_error(restamp(data))
    assert err.code_name == "truncated" and "metadata" in str(err)


def test_load_from_missing_path(tmp_path):
    with pytest.raises(engine.EngineFileError, match="cannot read"):
        engine.load(tmp_path / "nope.bsnn")


FUZZ_SCRIPT = r"""
import random, struct, sys, time, zlib
import numpy as np
from bitsound import engine
from bitsound.export import bsnn
seeds = [open(p, "rb").read() for p in sys.argv[3:]]
rnd = random.Random(int(sys.argv[2]))
def restamp(b):
    b[32:40] = struct.pack("<Q", len(b))
    b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])) & 0xFFFFFFFF)
edges = [0, 1, 2, 3, 4, 7, 8, 63, 64, 65, 255, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 100, 12]
n = ok = 0
end = time.time() + float(sys.argv[1])
while time.time() < end:
    b = bytearray(rnd.choice(seeds))
    for _ in range(rnd.randint(1, 4)):
        k = rnd.randrange(6)
        if not b:
            break
        if k == 0:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif k == 1:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif k == 2 and len(b) >= 4:
            i = rnd.randrange(len(b) // 4) * 4
            b[i:i + 4] = struct.pack("<I", rnd.choice(edges))
        elif k == 3:
            del b[rnd.randrange(len(b) + 1):]
        elif k == 4:
            i = rnd.randrange(len(b) + 1)
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
        else:
            i = rnd.randrange(len(b))
            del b[i:i + rnd.randint(1, 16)]
    if rnd.random() < 0.7 and len(b) >= 44:
        restamp(b)
    n += 1
    try:
        e = engine.loads(bytes(b), isa=rnd.choice(engine.available_isas()))
    except engine.EngineFileError as err:
        assert str(err)
        continue
    ok += 1
    if e.arena_bytes < (16 << 20) and int(np.prod(e.feature_shape)) < 100000:
        e.predict(np.ones((1, *e.feature_shape), np.float32))
print(n, ok)
"""


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    paths = []
    # the last seed is large enough (12x12 outputs, 576-bit kernels) to get a bit-serial plan
    # and the hostile slice geometry that once overflowed the slice form's tables
    seeds = [small_writer(), small_writer(cin=1, meta=False), small_writer(cin=129),
             small_writer(64, hw=(12, 12)), prelu_writer(), hostile_slice_writer(16384)]
    for i, wr in enumerate(seeds):
        p = d / f"seed{i}.bsnn"
        p.write_bytes(wr.to_bytes())
        paths.append(p)
    return paths


def test_python_fuzz_loop_never_crashes(seed_files):
    proc = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, "4", "1", *map(str, seed_files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"fuzz loop died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    n, ok = map(int, proc.stdout.split())
    assert n > 100 and n > ok


def test_c_fuzz_harness_under_sanitizers(seed_files, tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the fuzz harness")
    if not (ENGINE_DIR / "fuzz" / "fuzz_load.c").exists():
        pytest.skip("the engine's C sources are not installed (not an editable install)")
    sources = [ENGINE_DIR / "fuzz" / "fuzz_load.c"] + [ENGINE_DIR / f for f in (
        "format.c", "model.c", "dispatch.c", "kernels_ref.c", "kernels_scalar.c", "kernels_avx2.c",
        "kernels_avx512.c", "kernels_avx512_emu.c", "slice.c", "pool.c")]
    exe = tmp_path / "fuzz_load"
    base = [cc, "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-g", "-O1", *map(str, sources), "-lm", "-pthread",
            "-o", str(exe)]
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    build = subprocess.run(base[:1] + san + base[1:], capture_output=True, text=True)
    if build.returncode != 0:  # no sanitizer runtime: still run the plain harness
        build = subprocess.run(base, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    proc = subprocess.run([str(exe), "5", "7", *map(str, seed_files)], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"fuzz harness failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-4000:]}"
    assert "iterations" in proc.stdout


HOSTILE_LOAD = r"""
import sys, time
from bitsound import engine
data = open(sys.argv[1], "rb").read()
for isa in engine.available_isas():
    for bconv in ("auto", "slice"):
        t0 = time.perf_counter()
        e = engine.loads(data, isa=isa, bconv=bconv)
        print(isa, bconv, e.forms[2] or "-", e.arena_bytes, time.perf_counter() - t0)
"""


@pytest.mark.parametrize("pad", [16384, 100])
def test_hostile_slice_geometry_loads_quickly_without_the_slice_form(tmp_path, pad):
    """Slice geometry past int32 (pad 16384) or past the load-time bound (pad 100) is not a crash or
    a hang: the slice form is refused (on every instruction set, even when forced) and the conv
    runs word-parallel. Run in a subprocess, so that a crash fails the test instead of pytest."""
    path = tmp_path / "hostile.bsnn"
    path.write_bytes(hostile_slice_writer(pad).to_bytes())
    proc = subprocess.run([sys.executable, "-c", HOSTILE_LOAD, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"load died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert len(rows) == 2 * len(engine.available_isas())
    for isa, bconv, form, arena, seconds in rows:
        assert form in ("word", "reference"), (isa, bconv, form)
        assert float(seconds) < 1.0, f"{isa} {bconv}: load took {seconds} s"
        # the input, its bits and the output bits; no slice planes
        assert int(arena) < (1 << 24) * 16 + 16385 * 8 + 4096


def arena_limit_writer() -> GraphBuilder:
    """A conv whose slice form needs 2 GB of planes (512 output rows of a 65536-wide map, 256
    channels) while the model's activations need 322 MB: valid, within BS_MAX_ARENA (1 GB) in
    the word-parallel form."""
    wr = GraphBuilder()
    x = wr.add_input((256, 1, 65536))
    b = wr.add_pack(x, name="pack")
    wr.add_bconv2d(b, np.ones((1, 256, 1, 1)), padding=(511, 0, 0, 0), out_mode="bits", thr=np.zeros(1, int),
                   flip=np.zeros(1, int), name="bconv")
    wr.add_output(x)
    return wr


def test_an_optional_form_does_not_push_a_model_over_the_arena_limit():
    data = arena_limit_writer().to_bytes()
    for bconv in ("auto", "slice"):
        e = engine.loads(data, bconv=bconv)
        assert e.forms[2] != "slice"
        assert e.arena_bytes < 400 << 20


def test_arena_holds_only_what_the_chosen_form_needs():
    """A conv that can run in every form: the word-parallel form's arena has no slice planes or
    bit-serial work, the serial form's no planes (the loader builds only the chosen form's tables)."""
    rng = np.random.default_rng(1)
    wr = GraphBuilder()
    x = wr.add_input((64, 24, 40))
    b = wr.add_pack(x, name="pack")
    wr.add_bconv2d(b, np.where(rng.standard_normal((64, 64, 3, 3)) < 0, -1, 1), padding=(1, 1, 1, 1),
                   out_mode="bits", thr=np.zeros(64, int), flip=np.zeros(64, int), name="bconv")
    wr.add_output(x)
    data = wr.to_bytes()
    feats = rng.standard_normal((2, 64, 24, 40)).astype(np.float32)
    arena, outs = {}, {}
    for form in ("word", "serial", "slice"):
        e = engine.loads(data, isa="scalar-bitserial", bconv=form)
        assert e.forms[2] == form
        arena[form] = e.arena_bytes
        outs[form] = e.trace(feats[0])[2][1]
    assert arena["word"] < arena["serial"] < arena["slice"], arena
    assert np.array_equal(outs["word"], outs["serial"]) and np.array_equal(outs["word"], outs["slice"])
