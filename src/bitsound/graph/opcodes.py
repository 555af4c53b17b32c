"""The single definition of the typed graph's op codes, dtypes, modes and record layouts.

Everything a back end needs to agree on is defined here once: the Python graph
(:mod:`bitsound.graph.ir`), the ``.bsnn`` writer and reader (:mod:`bitsound.export.bsnn`), the C
engine (``engine/bsnn_codes.h`` is generated from this module by :func:`c_header`; a test fails
when the checked-in header is stale) and the microcontroller code generator.

Record layouts
--------------
Each op's record body in a ``.bsnn`` file is ``i32 in0, i32 in1, i32 out, u32 name_len, name``
(zero-padded to 4 bytes), then its ``params`` in order (``i32`` or ``f32`` scalars, 4 bytes
each), then its ``arrays`` in order. An array's length is a function of the op's own params
only (so a reader needs nothing but the record), and an array of length 0 is absent. Array
element types: ``f32`` (4 bytes), ``i32`` (4 bytes), ``f16`` (IEEE binary16, 2 bytes), ``i8``
(1 byte), ``u64`` (8 bytes, bit-packed signs); ``f16`` and ``i8`` arrays are zero-padded to a
multiple of 4 bytes.

Geometry params of a 2-D window: ``kh kw sh sw pt pl pb pr dh dw`` (kernel, stride, padding
top/left/bottom/right, dilation); of a 1-D window: ``k s p0 p1 d``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FORMAT_MAGIC = b"BSNN\r\n\x1a\n"
FORMAT_VERSION = (2, 0)
HEADER_BYTES = 40
REC_META = 100

# -- tensor dtypes (the engine's activations) ---------------------------------------------------
DTYPES = {"f32": 1, "bits": 2, "i8": 3}
# -- weight storage of float-activation convolutions and dense layers ---------------------------
WDTYPES = {"f32": 1, "f16": 2, "sign": 3}
# -- enumerations of op params -------------------------------------------------------------------
NORM_MODES = {"none": 0, "band": 1, "example": 2}
ACT_KINDS = {"relu": 1, "tanh": 2, "prelu": 3, "silu": 4, "sigmoid": 5}
BOUT_MODES = {"dot": 0, "float": 1, "bits": 2}  # binary conv output: raw dot, float, threshold bits
QOUT_MODES = {"float": 0, "int8": 1}  # int8 conv output: dequantized float or requantized int8
ADD_MODES = {"same": 0, "pad": 1, "group_mean": 2}
AXES = {"h": 0, "w": 1, "c": 2}
# instruction sets of the C engine (test-only variants included)
ISAS = ("auto", "avx512", "avx2", "scalar", "reference")
TEST_ISAS = ("avx512-emulated", "scalar-bitserial")

GEOM2 = ("kh", "kw", "sh", "sw", "pt", "pl", "pb", "pr", "dh", "dw")
GEOM1 = ("k", "s", "p0", "p1", "d")


def words(c: int) -> int:
    """uint64 words of ``c`` packed sign bits."""
    return (c + 63) // 64


@dataclass(frozen=True)
class Array:
    """One array field: name, element type and length from the op's params (0 = absent)."""

    name: str
    dtype: str  # f32 | i32 | f16 | i8 | u64
    length: Callable[[dict], int]


@dataclass(frozen=True)
class OpDef:
    """Code, name, number of tensor inputs, scalar params (name -> 'i32' | 'f32') and arrays."""

    code: int
    name: str
    n_inputs: int
    params: tuple[tuple[str, str], ...]
    arrays: tuple[Array, ...]
    doc: str

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.params)


def _i(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, "i32") for n in names)


def _taps2(p: dict) -> int:
    return p["kh"] * p["kw"]


def _conv_weights(taps: Callable[[dict], int]) -> tuple[Array, ...]:
    """Weight arrays of a float-activation conv: one of f32 / f16 / sign(+scale), then bias."""

    def n(p):
        return p["cout"] * taps(p) * (p["cin"] // max(p["groups"], 1))

    return (
        Array("weight", "f32", lambda p: n(p) if p["wdtype"] == WDTYPES["f32"] else 0),
        Array("weight_f16", "f16", lambda p: n(p) if p["wdtype"] == WDTYPES["f16"] else 0),
        Array(
            "weight_sign",
            "u64",
            lambda p: (
                p["cout"] * taps(p) * words(p["cin"] // max(p["groups"], 1))
                if p["wdtype"] == WDTYPES["sign"]
                else 0
            ),
        ),
        Array("weight_scale", "f32", lambda p: p["cout"] if p["wdtype"] == WDTYPES["sign"] else 0),
        Array("bias", "f32", lambda p: p["cout"] if p["has_bias"] else 0),
    )


def _bconv_arrays(taps: Callable[[dict], int]) -> tuple[Array, ...]:
    def mode(p, m):
        return p["out_mode"] == BOUT_MODES[m]

    return (
        Array("weight", "u64", lambda p: p["cout"] * taps(p) * words(p["cin"] // max(p["groups"], 1))),
        Array("scale", "f32", lambda p: p["cout"] if mode(p, "float") else 0),
        Array("bias", "f32", lambda p: p["cout"] if mode(p, "float") else 0),
        Array("thr", "i32", lambda p: p["cout"] if mode(p, "bits") else 0),
        Array("flip", "i32", lambda p: p["cout"] if mode(p, "bits") else 0),
    )


def _qconv_arrays(taps: Callable[[dict], int]) -> tuple[Array, ...]:
    return (
        Array("weight", "i8", lambda p: p["cout"] * taps(p) * (p["cin"] // max(p["groups"], 1))),
        Array("weight_scale", "f32", lambda p: p["cout"]),
        Array("bias", "f32", lambda p: p["cout"] if p["has_bias"] else 0),
    )


_QPARAMS = (
    ("in_scale", "f32"),
    ("in_zero", "i32"),
    ("out_mode", "i32"),
    ("out_scale", "f32"),
    ("out_zero", "i32"),
    ("relu", "i32"),
)

OPS: tuple[OpDef, ...] = (
    OpDef(
        1,
        "input",
        0,
        _i("rank", "c", "h", "w"),
        (),
        "features of one example: rank 1 [c][t] (h = 1) or rank 2 [c][h][w], to float hwc",
    ),
    OpDef(
        2,
        "feature_norm",
        1,
        (*_i("mode", "has_floor"), ("floor", "f32"), ("eps", "f32")),
        (),
        "bitsound.models.cnn.FeatureNorm: floor at max - floor, mean removal, / (std + eps)",
    ),
    OpDef(
        3,
        "affine",
        1,
        _i("c"),
        (Array("scale", "f32", lambda p: p["c"]), Array("bias", "f32", lambda p: p["c"])),
        "per-channel y = x * scale[c] + bias[c] (batch-norm, input maps)",
    ),
    OpDef(
        4,
        "activation",
        1,
        _i("kind", "c"),
        (Array("slope", "f32", lambda p: p["c"] if p["kind"] == 3 else 0),),
        "relu | tanh | prelu (slope per channel) | silu | sigmoid",
    ),
    OpDef(
        5,
        "conv2d",
        1,
        (*_i("cin", "cout", "groups"), *_i(*GEOM2), *_i("has_bias", "wdtype")),
        _conv_weights(_taps2),
        "float-activation 2-D conv; weights [cout][kh][kw][cin/groups] as f32, f16, or packed signs "
        "times weight_scale[cout] (1-bit weights, float inputs: sign-select and add)",
    ),
    OpDef(
        6,
        "conv1d",
        1,
        (*_i("cin", "cout", "groups"), *_i(*GEOM1), *_i("has_bias", "wdtype")),
        _conv_weights(lambda p: p["k"]),
        "float-activation 1-D conv over [1][t][c]; weights [cout][k][cin/groups] as for conv2d",
    ),
    OpDef(7, "pack", 1, _i("c"), (), "float -> bits: sign with sign(0) = +1 (bit 1 = -1)"),
    OpDef(
        8,
        "binary_conv2d",
        1,
        (*_i("cin", "cout", "groups"), *_i(*GEOM2), *_i("out_mode")),
        _bconv_arrays(_taps2),
        "binary conv on bits; weight bits [cout][kh][kw][words(cin/groups)]; out_mode float: "
        "dot * scale + bias; bits: +1 iff (flip ? -dot : dot) >= thr; dot: the integer dot",
    ),
    OpDef(
        9,
        "binary_conv1d",
        1,
        (*_i("cin", "cout", "groups"), *_i(*GEOM1), *_i("out_mode")),
        _bconv_arrays(lambda p: p["k"]),
        "binary 1-D conv; as binary_conv2d with kh = 1",
    ),
    OpDef(
        10,
        "maxpool2d",
        1,
        _i("kh", "kw", "sh", "sw", "ph", "pw", "ceil_mode"),
        (),
        "max-pool of floats, or of bits (an AND: the max of +-1 values)",
    ),
    OpDef(11, "maxpool1d", 1, _i("k", "s", "p", "ceil_mode"), (), "1-D max-pool over t (floats or bits)"),
    OpDef(
        12,
        "avgpool2d",
        1,
        _i("kh", "kw", "sh", "sw", "ph", "pw", "ceil_mode", "count_include_pad"),
        (),
        "average pool of floats (torch.nn.AvgPool2d semantics)",
    ),
    OpDef(
        13,
        "avgpool1d",
        1,
        _i("k", "s", "p", "ceil_mode", "count_include_pad"),
        (),
        "1-D average pool of floats",
    ),
    OpDef(14, "global_avg_pool", 1, (), (), "mean over h and w -> [1][1][c]"),
    OpDef(
        15,
        "linear",
        1,
        _i("nin", "nout", "has_bias", "wdtype"),
        (
            Array("weight", "f32", lambda p: p["nout"] * p["nin"] if p["wdtype"] == 1 else 0),
            Array("weight_f16", "f16", lambda p: p["nout"] * p["nin"] if p["wdtype"] == 2 else 0),
            Array("weight_sign", "u64", lambda p: p["nout"] * words(p["nin"]) if p["wdtype"] == 3 else 0),
            Array("weight_scale", "f32", lambda p: p["nout"] if p["wdtype"] == 3 else 0),
            Array("bias", "f32", lambda p: p["nout"] if p["has_bias"] else 0),
        ),
        "float dense over the hwc-flattened input -> [1][1][nout]; weights [nout][nin]",
    ),
    OpDef(
        16,
        "add",
        2,
        _i("mode"),
        (),
        "y = in0 + shortcut(in1); same: in1 of in0's shape or broadcast where its h or w is 1; "
        "pad: in1 has fewer channels (the rest are 0); group_mean: mean of groups of in1's channels",
    ),
    OpDef(17, "concat", 2, _i("axis"), (), "concatenate in0 and in1 along axis h | w | c"),
    OpDef(18, "slice", 1, _i("axis", "start", "stop"), (), "in0[start:stop] along axis h | w | c"),
    OpDef(
        19,
        "freq_affine",
        1,
        _i("h", "c"),
        (Array("scale", "f32", lambda p: p["h"] * p["c"]), Array("bias", "f32", lambda p: p["h"] * p["c"])),
        "per-(frequency h, channel) y = x * scale[h][c] + bias[h][c] (SubSpectralNorm at inference)",
    ),
    OpDef(
        20,
        "normalize",
        1,
        (*_i("axes"), ("eps", "f32")),
        (),
        "instance-style norm: (x - mean) / sqrt(var + eps) over the axes in the bit mask "
        "(1 h, 2 w, 4 c), biased variance, for every index of the other axes",
    ),
    OpDef(21, "permute", 1, _i("p0", "p1", "p2"), (), "output axis i (of h, w, c) is input axis p_i"),
    OpDef(
        22,
        "quantize",
        1,
        (("scale", "f32"), ("zero", "i32")),
        (),
        "float -> int8: clamp(round_half_even(x / scale) + zero, -128, 127)",
    ),
    OpDef(23, "dequantize", 1, (("scale", "f32"), ("zero", "i32")), (), "int8 -> float: (q - zero) * scale"),
    OpDef(
        24,
        "qconv2d",
        1,
        (*_i("cin", "cout", "groups"), *_i(*GEOM2), *_i("has_bias"), *_QPARAMS),
        _qconv_arrays(_taps2),
        "int8 conv: acc = sum (x - in_zero) w (int32), y = acc * in_scale * weight_scale[o] + bias[o]; "
        "out_mode float: y (relu optional); int8: requantized with out_scale, out_zero",
    ),
    OpDef(
        25,
        "qconv1d",
        1,
        (*_i("cin", "cout", "groups"), *_i(*GEOM1), *_i("has_bias"), *_QPARAMS),
        _qconv_arrays(lambda p: p["k"]),
        "int8 1-D conv; as qconv2d",
    ),
    OpDef(
        26,
        "qlinear",
        1,
        (*_i("nin", "nout", "has_bias"), *_QPARAMS),
        (
            Array("weight", "i8", lambda p: p["nout"] * p["nin"]),
            Array("weight_scale", "f32", lambda p: p["nout"]),
            Array("bias", "f32", lambda p: p["nout"] if p["has_bias"] else 0),
        ),
        "int8 dense over the hwc-flattened int8 input; as qconv2d",
    ),
    OpDef(30, "output", 1, (), (), "marks the logits slot (in0 = out); the last record"),
)

BY_NAME: dict[str, OpDef] = {op.name: op for op in OPS}
BY_CODE: dict[int, OpDef] = {op.code: op for op in OPS}


def c_header() -> str:
    """The C header ``engine/bsnn_codes.h`` generated from these definitions."""
    lines = [
        "/* bsnn_codes.h: GENERATED from src/bitsound/graph/opcodes.py by",
        " *   python -m bitsound.graph.opcodes > src/bitsound/engine/bsnn_codes.h",
        " * Do not edit by hand; tests/test_graph.py checks that it is current. */",
        "#ifndef BSNN_CODES_H",
        "#define BSNN_CODES_H",
        "",
        f"#define BSNN_VERSION_MAJOR {FORMAT_VERSION[0]}",
        f"#define BSNN_VERSION_MINOR {FORMAT_VERSION[1]}",
        f"#define BSNN_HEADER_BYTES {HEADER_BYTES}",
        f"#define BS_REC_META {REC_META}",
        "",
    ]

    def enum(prefix: str, table: dict[str, int]) -> None:
        lines.append("enum {")
        lines.extend(f"    {prefix}{k.upper()} = {v}," for k, v in table.items())
        lines.extend(["};", ""])

    enum("BS_OP_", {op.name: op.code for op in OPS})
    enum("BS_", {"f32": DTYPES["f32"], "bits": DTYPES["bits"], "i8": DTYPES["i8"]})
    enum("BS_W_", WDTYPES)
    enum("BS_NORM_", NORM_MODES)
    enum("BS_ACT_", ACT_KINDS)
    enum("BS_BOUT_", BOUT_MODES)
    enum("BS_QOUT_", QOUT_MODES)
    enum("BS_ADD_", ADD_MODES)
    enum("BS_AXIS_", AXES)
    lines.append("/* op names, indexed by code (NULL: no op) */")
    lines.append(f"#define BS_OP_CODE_MAX {max(BY_CODE)}")
    lines.append("static const char *const BS_OP_NAMES[BS_OP_CODE_MAX + 1] = {")
    lines.extend(f'    [{op.code}] = "{op.name}",' for op in OPS)
    lines.extend(
        [
            "};",
            "",
            "/* instruction sets, for the binding's listing */",
            "static const char *const BS_ISA_NAMES[] = {"
            + ", ".join(f'"{n}"' for n in ISAS if n != "auto")
            + ", NULL};",
            "",
            "#endif",
            "",
        ]
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(c_header(), end="")
