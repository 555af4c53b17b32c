"""The C code generator: a typed graph (and its recipe's front end) -> a self-contained C99 project.

:func:`generate` writes into a folder:

- ``model.c`` / ``bitsound_model.h`` (generated): the weights as ``const`` arrays (flash) in the
  storage the graph gives them (sign bits in 32-bit words, int8, IEEE half bits, float32), the
  front end's tables, one ``static`` arena sized and laid out by :func:`bitsound.deploy.plan.plan`
  (no ``malloc``), the steps as straight-line kernel calls, and the API
  ``bitsound_model_run(const float *audio, float *logits)`` (and
  ``bitsound_network_run(const float *features, float *logits)``);
- ``bsmcu.c`` / ``bsmcu.h`` (the portable kernels), ``frontend.c`` / ``frontend.h`` (the C
  front end, the same file the host engine compiles), the test harness and platform files, a
  linker script for the Cortex-M4 image, a ``Makefile`` and a ``README.md``.

Every op of :mod:`bitsound.graph.opcodes` is supported; :func:`generate` raises
:class:`~bitsound.errors.ExportError` naming an op it cannot emit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bitsound.deploy.plan import Plan, Step, plan, words32
from bitsound.errors import ExportError
from bitsound.graph import opcodes as oc
from bitsound.graph.ir import Graph

TEMPLATES = (
    "bsmcu.c",
    "bsmcu.h",
    "bsmcu_impl.h",
    "harness.c",
    "platform_host.c",
    "platform_m4.c",
    "link_m4.ld",
)
ENGINE_SOURCES = ("frontend.c", "frontend.h")
TARGETS = ("cortex-m4", "host")
ACT_EPI = {
    oc.ACT_KINDS["relu"]: "BSM_EPI_RELU",
    oc.ACT_KINDS["tanh"]: "BSM_EPI_TANH",
    oc.ACT_KINDS["prelu"]: "BSM_EPI_PRELU",
    oc.ACT_KINDS["silu"]: "BSM_EPI_SILU",
    oc.ACT_KINDS["sigmoid"]: "BSM_EPI_SIGMOID",
}


# ---------------------------------------------------------------------------------------------
# C literals
# ---------------------------------------------------------------------------------------------
def c_float(v: float) -> str:
    """A float32 as a C literal that reads back to the same bits."""
    v = float(np.float32(v))
    if not np.isfinite(v):
        raise ExportError(f"a weight or parameter is {v}; the generated code takes finite values only")
    s = f"{v:.9g}"
    if not any(ch in s for ch in ".e"):
        s += ".0"
    return s + "f"


def _join(items: list[str], per_line: int) -> str:
    rows = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return ",\n    ".join(rows)


@dataclass
class Emitter:
    """Collects the const arrays and their sizes (flash bytes by kind)."""

    decls: list[str]
    flash: dict[str, int]

    def array(self, name: str, values: np.ndarray, ctype: str, kind: str = "weights") -> str:
        v = np.asarray(values).reshape(-1)
        if v.size == 0:
            return "NULL"
        if ctype == "float":
            items, per = [c_float(x) for x in v.astype(np.float32)], 6
        elif ctype == "uint32_t":
            items, per = [f"0x{int(x):08x}u" for x in v.astype(np.uint32)], 6
        else:
            items, per = [str(int(x)) for x in v], 12
        self.decls.append(f"static const {ctype} {name}[{v.size}] = {{\n    {_join(items, per)}}};")
        self.flash[kind] = self.flash.get(kind, 0) + v.size * np.dtype(_NP[ctype]).itemsize
        return name


_NP = {
    "float": np.float32,
    "uint32_t": np.uint32,
    "int32_t": np.int32,
    "uint16_t": np.uint16,
    "uint8_t": np.uint8,
    "int8_t": np.int8,
}


# ---------------------------------------------------------------------------------------------
# weights in the generated code's layouts
# ---------------------------------------------------------------------------------------------
def _bits(words64: np.ndarray, rows: int, nbits: int) -> np.ndarray:
    """Sign bits [rows][nbits] of u64 rows of words(nbits) words each."""
    b = np.ascontiguousarray(words64.astype("<u8")).view(np.uint8).reshape(rows, -1)
    return np.unpackbits(b, axis=1, bitorder="little")[:, :nbits]


def _words32(bits: np.ndarray) -> np.ndarray:
    """Rows of bits [rows][n] -> u32 words [rows][words32(n)], bit j of a row in bit j % 32."""
    rows, n = bits.shape
    padded = np.zeros((rows, words32(n) * 32), np.uint8)
    padded[:, :n] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").astype(np.uint32)


def sign_rows(words64: np.ndarray, rows: int, n: int) -> np.ndarray:
    """u64 sign rows of n bits -> u32 rows [rows][words32(n)]."""
    return _words32(_bits(words64, rows, n))


def binary_kernel(words64: np.ndarray, cout: int, taps: int, cg: int) -> np.ndarray:
    """Binary conv weights [cout][taps][words(cg)] u64 -> [cout][kwords] u32, taps packed densely."""
    bits = _bits(words64, cout * taps, cg).reshape(cout, taps * cg)
    return _words32(bits)


def _geom(op) -> tuple[int, ...]:
    p = op.params
    if op.kind.endswith("1d"):
        return (1, p["k"], 1, p["s"], 0, p["p0"], 0, p["p1"], 1, p["d"])
    return tuple(p[k] for k in oc.GEOM2)


def _pool_geom(op) -> tuple[int, ...]:
    p = op.params
    if op.kind.endswith("1d"):
        return (1, p["k"], 1, p["s"], 0, p["p"], 0, p["p"], 1, 1)
    return (p["kh"], p["kw"], p["sh"], p["sw"], p["ph"], p["pw"], p["ph"], p["pw"], 1, 1)


def _shape(t) -> str:
    return f"{{{t.h}, {t.w}, {t.c}}}"


def _brace(values) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


# ---------------------------------------------------------------------------------------------
# steps -> C
# ---------------------------------------------------------------------------------------------
SCRATCH_FUNCTIONS = {
    "conv2d": "bsm_conv_scratch",
    "conv1d": "bsm_conv_scratch",
    "binary_conv2d": "bsm_bconv_scratch",
    "binary_conv1d": "bsm_bconv_scratch",
    "qconv2d": "bsm_qconv_scratch",
    "qconv1d": "bsm_qconv_scratch",
    "qlinear": "bsm_qconv_scratch",
}


class _Writer:
    def __init__(self, p: Plan, em: Emitter):
        self.p, self.g, self.em = p, p.graph, em
        self.checks: list[str] = []  # C conditions bitsound_selfcheck() tests: the plan fits the kernels

    def buf(self, name: str, ctype: str, *, const: bool = False) -> str:
        b = self.p.buffers[name]
        q = "const " if const else ""
        if b.external:
            return f"({q}{ctype} *)features"
        return f"({q}{ctype} *)BUF({b.offset})"

    def step(self, k: int, s: Step) -> str:
        fn = getattr(self, "_" + s.kind, None)
        if fn is None:
            raise ExportError(f"{s.name}: the code generator has no kernel for op {s.kind}")
        call = fn(k, s)
        if s.scratch and s.kind in SCRATCH_FUNCTIONS:
            self.checks.append(f"{SCRATCH_FUNCTIONS[s.kind]}(&P{k}) <= {self.p.buffers[s.scratch].size}u")
        return call

    def _scratch(self, s: Step) -> str:
        return f"BUF({self.p.buffers[s.scratch].offset})" if s.scratch else "NULL"

    def _io(self, s: Step, cin: str = "float", cout: str = "float") -> str:
        """The step's input and output buffers as call arguments."""
        return f"{self.buf(s.inputs[0], cin, const=True)}, {self.buf(s.output, cout)}"

    def _per_channel(self, k: int, op, *names: str) -> str:
        """Float arrays of ``op`` named ``P{k}_name``, as call arguments."""
        return ", ".join(self.em.array(f"P{k}_{n}", op.arrays[n], "float") for n in names)

    def _float_weights(self, k: int, p: dict, a: dict, sign_rows_args: tuple[int, int]) -> str:
        """w, w16, wsign, wscale of a float-activation layer (the one its wdtype stores; NULL others)."""
        w = w16 = ws = sc = "NULL"
        if p["wdtype"] == oc.WDTYPES["f32"]:
            w = self.em.array(f"P{k}_w", a["weight"], "float")
        elif p["wdtype"] == oc.WDTYPES["f16"]:
            w16 = self.em.array(f"P{k}_w16", a["weight_f16"].view(np.uint16), "uint16_t")
        else:
            ws = self.em.array(f"P{k}_wsign", sign_rows(a["weight_sign"], *sign_rows_args), "uint32_t")
            sc = self.em.array(f"P{k}_wscale", a["weight_scale"], "float")
        return f"{w}, {w16}, {ws}, {sc}"

    # -- plumbing ---------------------------------------------------------------------------
    def _input(self, k, s):
        t = self.g.tensors[s.ops[0].output]
        return f"bsm_input((bsm_shape){_shape(t)}, {self._io(s)});"

    def _norm(self, k, s, fn: str, mode: int, has_floor: int, floor: float, eps: float) -> str:
        t = self.g.tensors[s.ops[0].output]
        self.em.decls.append(
            f"static const bsm_norm_t P{k} = {{{_shape(t)}, {mode}, {has_floor}, {c_float(floor)}, "
            f"{c_float(eps)}}};"
        )
        return f"{fn}(&P{k}, {self._io(s)}, {self._scratch(s)});"

    def _feature_norm(self, k, s):
        p = s.ops[0].params
        return self._norm(k, s, "bsm_feature_norm", p["mode"], p["has_floor"], p["floor"], p["eps"])

    def _normalize(self, k, s):
        p = s.ops[0].params
        return self._norm(k, s, "bsm_normalize", p["axes"], 0, 0.0, p["eps"])

    def _affine(self, k, s):
        op = s.ops[0]
        t = self.g.tensors[op.output]
        return f"bsm_affine({t.h * t.w}u, {t.c}, {self._per_channel(k, op, 'scale', 'bias')}, {self._io(s)});"

    def _freq_affine(self, k, s):
        op = s.ops[0]
        t = self.g.tensors[op.output]
        sb = self._per_channel(k, op, "scale", "bias")
        return f"bsm_freq_affine((bsm_shape){_shape(t)}, {sb}, {self._io(s)});"

    def _activation(self, k, s):
        op = s.ops[0]
        t = self.g.tensors[op.output]
        kind = op.params["kind"]
        if kind == oc.ACT_KINDS["prelu"]:
            return f"bsm_prelu({t.h * t.w}u, {t.c}, {self._per_channel(k, op, 'slope')}, {self._io(s)});"
        name = {v: n for n, v in oc.ACT_KINDS.items()}[kind]
        return f"bsm_{name}({t.numel}u, {self._io(s)});"

    def _pack(self, k, s):
        t = self.g.tensors[s.ops[0].output]
        return f"bsm_pack({t.h * t.w}u, {t.c}, {self._io(s, cout='uint32_t')});"

    def _global_avg_pool(self, k, s):
        t = self.g.tensors[s.ops[0].inputs[0]]
        return f"bsm_global_avg_pool((bsm_shape){_shape(t)}, {self._io(s)});"

    def _two_inputs(self, k, s, fn: str, param: int) -> str:
        a, b = (self.g.tensors[t] for t in s.ops[0].inputs)
        return (
            f"{fn}({param}, (bsm_shape){_shape(a)}, (bsm_shape){_shape(b)}, "
            f"{self.buf(s.inputs[0], 'float', const=True)}, {self.buf(s.inputs[1], 'float', const=True)}, "
            f"{self.buf(s.output, 'float')});"
        )

    def _add(self, k, s):
        return self._two_inputs(k, s, "bsm_add", s.ops[0].params["mode"])

    def _concat(self, k, s):
        return self._two_inputs(k, s, "bsm_concat", s.ops[0].params["axis"])

    def _slice(self, k, s):
        op = s.ops[0]
        p, t = op.params, self.g.tensors[op.inputs[0]]
        return f"bsm_slice({p['axis']}, {p['start']}, {p['stop']}, (bsm_shape){_shape(t)}, {self._io(s)});"

    def _permute(self, k, s):
        op = s.ops[0]
        p = op.params
        self.em.decls.append(f"static const int32_t P{k}_perm[3] = {{{p['p0']}, {p['p1']}, {p['p2']}}};")
        si, so = self.g.tensors[op.inputs[0]], self.g.tensors[op.output]
        return f"bsm_permute((bsm_shape){_shape(si)}, (bsm_shape){_shape(so)}, P{k}_perm, {self._io(s)});"

    def _requant(self, k, s, fn: str, cin: str, cout: str) -> str:
        op = s.ops[0]
        t = self.g.tensors[op.output]
        return (
            f"{fn}({t.numel}u, {c_float(op.params['scale'])}, {op.params['zero']}, {self._io(s, cin, cout)});"
        )

    def _quantize(self, k, s):
        return self._requant(k, s, "bsm_quantize", "float", "int8_t")

    def _dequantize(self, k, s):
        return self._requant(k, s, "bsm_dequantize", "int8_t", "float")

    # -- pools ------------------------------------------------------------------------------
    def _pool(self, k, s, fn: str, ctype: str, count_include_pad: int = 0):
        op = s.ops[0]
        si, so = self.g.tensors[op.inputs[0]], self.g.tensors[op.output]
        self.em.decls.append(
            f"static const bsm_pool_t P{k} = {{{_shape(si)}, {_shape(so)}, "
            f"{_brace(_pool_geom(op))}, {count_include_pad}}};"
        )
        return f"{fn}(&P{k}, {self._io(s, ctype, ctype)});"

    def _maxpool2d(self, k, s):
        bits = self.g.tensors[s.ops[0].inputs[0]].dtype == "bits"
        return self._pool(
            k, s, "bsm_maxpool_bits" if bits else "bsm_maxpool_f32", "uint32_t" if bits else "float"
        )

    _maxpool1d = _maxpool2d

    def _avgpool2d(self, k, s):
        return self._pool(k, s, "bsm_avgpool", "float", s.ops[0].params["count_include_pad"])

    _avgpool1d = _avgpool2d

    # -- dense ------------------------------------------------------------------------------
    def _linear(self, k, s):
        op = s.ops[0]
        p, a = op.params, op.arrays
        weights = self._float_weights(k, p, a, (p["nout"], p["nin"]))
        bias = self.em.array(f"P{k}_bias", a["bias"], "float") if p["has_bias"] else "NULL"
        self.em.decls.append(
            f"static const bsm_linear_t P{k} = {{{p['nin']}, {p['nout']}, {p['wdtype']}, {weights}, {bias}}};"
        )
        return f"bsm_linear(&P{k}, {self._io(s)});"

    # -- convolutions -----------------------------------------------------------------------
    def _conv2d(self, k, s):
        conv = s.ops[0]
        p, a = conv.params, conv.arrays
        taps = p["kh"] * p["kw"] if conv.kind == "conv2d" else p["k"]
        cg = p["cin"] // p["groups"]
        weights = self._float_weights(k, p, a, (p["cout"] * taps, cg))
        bias = self.em.array(f"P{k}_bias", a["bias"], "float") if p["has_bias"] else "NULL"
        epis, pool, pack = [], None, 0
        for j, op in enumerate(s.ops[1:]):
            if op.kind == "affine":
                es = self.em.array(f"P{k}_e{j}_scale", op.arrays["scale"], "float")
                eb = self.em.array(f"P{k}_e{j}_bias", op.arrays["bias"], "float")
                epis.append(f"{{BSM_EPI_AFFINE, {es}, {eb}}}")
            elif op.kind == "activation":
                sl = (
                    self.em.array(f"P{k}_e{j}_slope", op.arrays["slope"], "float")
                    if op.params["kind"] == oc.ACT_KINDS["prelu"]
                    else "NULL"
                )
                epis.append(f"{{{ACT_EPI[op.params['kind']]}, {sl}, NULL}}")
            elif op.kind in ("maxpool2d", "maxpool1d"):
                pool = op
            else:
                pack = 1
        epi = "NULL"
        if epis:
            self.em.decls.append(f"static const bsm_epi P{k}_epi[{len(epis)}] = {{{', '.join(epis)}}};")
            epi = f"P{k}_epi"
        si = self.g.tensors[conv.inputs[0]]
        sc_t = self.g.tensors[conv.output]
        so = self.g.tensors[s.ops[-1].output]
        pg = _brace(_pool_geom(pool)) if pool else _brace([1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
        self.em.decls.append(
            f"static const bsm_conv_t P{k} = {{{_shape(si)}, {_shape(sc_t)}, {_brace(_geom(conv))}, "
            f"{p['cin']}, {p['cout']}, {p['groups']}, {p['wdtype']}, {weights}, {bias}, "
            f"{len(epis)}, {epi}, {1 if pool else 0}, {pg}, {_shape(so)}, {pack}}};"
        )
        self.em.decls.append(
            f"static BSM_NOINLINE void step{k}(const float *x, void *y, void *s) "
            f"{{ bsm_conv_body(&P{k}, x, y, s); }}"
        )
        return f"step{k}({self._io(s, 'float', 'void')}, {self._scratch(s)});"

    _conv1d = _conv2d

    def _binary_conv2d(self, k, s):
        op = s.ops[0]
        p, a = op.params, op.arrays
        taps = p["kh"] * p["kw"] if op.kind == "binary_conv2d" else p["k"]
        cg = p["cin"] // p["groups"]
        kwords = words32(taps * cg)
        w = self.em.array(f"P{k}_w", binary_kernel(a["weight"], p["cout"], taps, cg), "uint32_t")
        scale = bias = thr = flip = "NULL"
        if p["out_mode"] == oc.BOUT_MODES["float"]:
            scale = self.em.array(f"P{k}_scale", a["scale"], "float")
            bias = self.em.array(f"P{k}_bias", a["bias"], "float")
        elif p["out_mode"] == oc.BOUT_MODES["bits"]:
            thr = self.em.array(f"P{k}_thr", a["thr"], "int32_t")
            flip = self.em.array(f"P{k}_flip", a["flip"], "uint8_t")
        si, so = self.g.tensors[op.inputs[0]], self.g.tensors[op.output]
        self.em.decls.append(
            f"static const bsm_bconv_t P{k} = {{{_shape(si)}, {_shape(so)}, {_brace(_geom(op))}, {p['cin']}, "
            f"{p['cout']}, {p['groups']}, {kwords}, {w}, {p['out_mode']}, {scale}, {bias}, {thr}, {flip}}};"
        )
        self.em.decls.append(
            f"static BSM_NOINLINE void step{k}(const uint32_t *x, void *y, void *s) "
            f"{{ bsm_bconv_body(&P{k}, x, y, s); }}"
        )
        return f"step{k}({self._io(s, 'uint32_t', 'void')}, {self._scratch(s)});"

    _binary_conv1d = _binary_conv2d

    def _qconv(self, k, s, dense: bool):
        op = s.ops[0]
        p, a = op.params, op.arrays
        cout = p["nout"] if dense else p["cout"]
        w = self.em.array(f"P{k}_w", a["weight"], "int8_t")
        mult = np.float32(p["in_scale"]) * a["weight_scale"].astype(np.float32)
        m = self.em.array(f"P{k}_mult", mult.astype(np.float32), "float")
        bias = self.em.array(f"P{k}_bias", a["bias"], "float") if p["has_bias"] else "NULL"
        si, so = self.g.tensors[op.inputs[0]], self.g.tensors[op.output]
        geom = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1] if dense else _geom(op)
        cin, groups = (p["nin"], 1) if dense else (p["cin"], p["groups"])
        int8_out = int(p["out_mode"] == oc.QOUT_MODES["int8"])
        self.em.decls.append(
            f"static const bsm_qconv_t P{k} = {{{_shape(si)}, {_shape(so)}, {_brace(geom)}, {cin}, {cout}, "
            f"{groups}, {w}, {m}, {bias}, {p['in_zero']}, {int8_out}, {p['relu']}, "
            f"{c_float(p['out_scale'])}, {p['out_zero']}}};"
        )
        fn = "bsm_qlinear" if dense else "bsm_qconv"
        return f"{fn}(&P{k}, {self._io(s, 'int8_t', 'void')}, {self._scratch(s)});"

    def _qconv2d(self, k, s):
        return self._qconv(k, s, False)

    _qconv1d = _qconv2d

    def _qlinear(self, k, s):
        return self._qconv(k, s, True)


# ---------------------------------------------------------------------------------------------
# the project
# ---------------------------------------------------------------------------------------------
@dataclass
class Project:
    """A generated project: its folder, plan and the sizes the generator knows."""

    out: Path
    plan: Plan
    frontend: Any
    labels: list[str]
    flash_tables: dict[str, int]
    input_floats: int
    feature_floats: int
    n_classes: int


def _frontend_decls(spec, em: Emitter) -> str:
    """The front end's tables and its bsfe_spec initializer."""
    from bitsound.engine.frontend import FLOAT_FIELDS, INT_FIELDS

    ctype = {np.dtype(np.float32): "float", np.dtype(np.uint16): "uint16_t"}
    fields = [f".{k} = {spec.ints[k]}" for k in INT_FIELDS]
    fields += [f".{k} = {c_float(spec.floats[k])}" for k in FLOAT_FIELDS]
    for name, arr in spec.tables.items():
        ref = em.array(f"FE_{name}", arr, ctype[arr.dtype], kind="frontend tables")
        fields.append(f".{name} = {ref}")
    return "static const bsfe_spec FE = {\n    " + ",\n    ".join(fields) + "};"


def _model_c(p: Plan, spec, labels: list[str], em: Emitter) -> str:
    g = p.graph
    w = _Writer(p, em)
    calls = []
    for k, s in enumerate(p.steps):
        if s.kind in ("frontend", "features"):
            continue
        calls.append(f"    {w.step(k, s)} /* {s.name} */\n    BSM_MARK({k});")
    out_buf = p.buffers[p.tensor_buffer[g.output]]
    n_out = g.tensors[g.output].numel
    logits_src = "features" if out_buf.external else f"BUF({out_buf.offset})"
    feats = p.buffers["features"]
    inp = g.ops[0].params
    feature_bytes = inp["c"] * inp["h"] * inp["w"] * 4
    fe = _frontend_decls(spec, em) if spec is not None and spec.kind != "raw" else ""
    lines = [
        "/* model.c: GENERATED by `bitsound deploy`; do not edit. The weights are const (flash), the",
        " * activations live in one static arena laid out by bitsound.deploy.plan (no malloc). */",
        "#include <string.h>",
        "",
        '#include "bitsound_model.h"',
        '#include "bsmcu.h"',
        '#include "bsmcu_impl.h" /* the convolutions, specialized on each layer\'s constant parameters */',
        '#include "frontend.h"',
        "",
        "#ifdef BSM_PROFILE",
        "void bsm_profile_mark(int step);",
        "#define BSM_MARK(k) bsm_profile_mark(k)",
        "#else",
        "#define BSM_MARK(k) ((void)0)",
        "#endif",
        "",
        f"/* {p.arena_bytes} bytes: every activation, scratch and front-end buffer (peak live "
        f"{p.peak_live_bytes}) */",
        f"static uint64_t bsm_arena[{max(1, p.arena_bytes // 8)}];",
        "#define BUF(off) ((void *)((char *)bsm_arena + (off)))",
        "",
        "const char *const bitsound_labels[BITSOUND_N_CLASSES] = {"
        + ", ".join(json.dumps(lb) for lb in labels)
        + "};",
        "",
    ]
    network = [
        "/* the network on features [c][h][w] (or [c][t]) at `features` */",
        "static void network(const float *features, float *logits) {",
        "    (void)features;",
        *calls,
        f"    memcpy(logits, {logits_src}, {n_out * 4}u);",
        "}",
    ]
    lines += em.decls + ([fe] if fe else []) + [""]
    lines += network + [""]
    checks = list(w.checks)
    if spec is not None and spec.kind != "raw":
        checks += [
            f"bsfe_work_bytes(&FE) <= {p.buffers['fe_work'].size}u",
            f"bsfe_out_floats(&FE) * 4u <= {feats.size}u",
        ]
    lines += [
        "/* 1 when every kernel's working memory fits the plan (a check of the generator itself) */",
        "int bitsound_selfcheck(void) {",
        f"    return {' && '.join(checks) if checks else '1'};",
        "}",
        "",
    ]
    feat_ptr = "(float *)features" if feats.external else f"(float *)BUF({feats.offset})"
    if spec is not None:
        lines += ["void bitsound_model_run(const float *audio, float *logits) {", "    BSM_MARK(-1);"]
        if spec.kind == "raw":
            lines += ["    BSM_MARK(0);", "    network(audio, logits);", "}", ""]
        else:
            work = p.buffers["fe_work"].offset
            lines += [
                f"    bsfe_run(&FE, audio, (float *)BUF({feats.offset}), BUF({work}));",
                "    BSM_MARK(0);",
                f"    network({feat_ptr}, logits);",
                "}",
                "",
            ]
    lines += ["void bitsound_network_run(const float *features, float *logits) {", "    BSM_MARK(-1);"]
    if not feats.external:
        lines += [
            f"    memcpy(BUF({feats.offset}), features, {feature_bytes}u);",
            "    BSM_MARK(0);",
            f"    network({feat_ptr}, logits);",
            "}",
            "",
        ]
    else:
        lines += ["    BSM_MARK(0);", "    network(features, logits);", "}", ""]
    return "\n".join(lines)


def _header(p: Plan, spec, labels: list[str], input_floats: int, feature_floats: int) -> str:
    g = p.graph
    fs = g.meta.get("feature_shape") if g.meta else None
    lines = [
        "/* bitsound_model.h: GENERATED by `bitsound deploy`; the API of the generated model. */",
        "#ifndef BITSOUND_MODEL_H",
        "#define BITSOUND_MODEL_H",
        "",
        f"#define BITSOUND_N_CLASSES {len(labels)}",
        f"#define BITSOUND_FEATURE_FLOATS {feature_floats} /* {tuple(fs) if fs else ''} [c][h][w] */",
        f"#define BITSOUND_ARENA_BYTES {p.arena_bytes}",
        f"#define BITSOUND_N_STEPS {len(p.steps)} /* step 0: the front end (or the features' copy) */",
    ]
    if spec is not None:
        lines += [
            "#define BITSOUND_HAS_FRONTEND 1",
            f"#define BITSOUND_SAMPLE_RATE {spec.sample_rate}",
            f"#define BITSOUND_AUDIO_CHANNELS {spec.ints['n_channels']}",
            f"#define BITSOUND_AUDIO_SAMPLES {spec.n_samples} /* per channel */",
            f"#define BITSOUND_INPUT_FLOATS {input_floats}",
            "",
            "/* one window of audio [channels][samples] at the model's rate -> class logits */",
            "void bitsound_model_run(const float *audio, float *logits);",
        ]
    else:
        lines += ["#define BITSOUND_HAS_FRONTEND 0", f"#define BITSOUND_INPUT_FLOATS {input_floats}"]
    lines += [
        "/* front-end features [c][h][w] (as the host engine takes them) -> class logits */",
        "void bitsound_network_run(const float *features, float *logits);",
        "/* 1 when every kernel's working memory fits the generated plan */",
        "int bitsound_selfcheck(void);",
        "extern const char *const bitsound_labels[BITSOUND_N_CLASSES];",
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)


def generate(
    graph: Graph, out: str | Path, *, frontend: Any = None, labels: list[str] | None = None
) -> Project:
    """Write the C project of ``graph`` (fed by ``frontend``, a FrontEndSpec, or by features) into ``out``.

    Parameters
    ----------
    graph : Graph
        A typed graph ending in its output op (:func:`bitsound.export.packed.model_graph`,
        :func:`bitsound.export.bsnn.read` or :class:`bitsound.graph.builder`).
    out : str or Path
        The folder to write (created; generated files in it are replaced).
    frontend : FrontEndSpec, optional
        The recipe's C front end (:func:`bitsound.engine.frontend.frontend_spec`); without it the
        generated model takes features.
    labels : list of str, optional
        Class names (the graph's metadata labels by default).

    Returns
    -------
    Project

    Raises
    ------
    ExportError
        For an op the generator cannot emit, or a front end that does not fit the graph.
    """
    p = plan(graph, frontend)
    n_out = graph.tensors[graph.output].numel
    labels = list(labels if labels is not None else (graph.meta or {}).get("labels") or [])
    if not labels:
        labels = [f"class{i}" for i in range(n_out)]
    if len(labels) != n_out:
        raise ExportError(f"{len(labels)} labels for a graph of {n_out} outputs")
    em = Emitter([], {})
    model_c = _model_c(p, frontend, labels, em)
    inp = graph.ops[0].params
    feature_floats = inp["c"] * inp["h"] * inp["w"]
    input_floats = (
        frontend.ints["n_channels"] * frontend.n_samples if frontend is not None else feature_floats
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "model.c", model_c)
    _write(out / "bitsound_model.h", _header(p, frontend, labels, input_floats, feature_floats))
    tdir = resources.files("bitsound.deploy") / "templates"
    for name in TEMPLATES:
        _write(out / name, (tdir / name).read_text())
    edir = resources.files("bitsound.engine")
    for name in ENGINE_SOURCES:
        _write(out / name, (edir / name).read_text())
    _write(out / "Makefile", (tdir / "Makefile.in").read_text())
    _write(out / "bsm_config.h", _config_h(p, frontend))
    project = Project(out, p, frontend, labels, dict(em.flash), input_floats, feature_floats, n_out)
    _write(out / "README.md", readme(project))
    return project


def _config_h(p: Plan, spec) -> str:
    """What the kernels and the front end may leave out for this model (a smaller image)."""
    from bitsound.engine.frontend import POWER_ANY, THRESHOLDS

    transcendental = any(
        op.kind == "activation"
        and op.params["kind"] in (oc.ACT_KINDS["tanh"], oc.ACT_KINDS["silu"], oc.ACT_KINDS["sigmoid"])
        for s in p.steps
        if s.kind in ("conv2d", "conv1d")
        for op in s.ops[1:]
    )
    ints = spec.ints if spec is not None else {"power_mode": -1, "threshold": -1, "kind": -1}
    binary = ints["kind"] == 2
    flags = {
        "BSM_WITH_TRANSCENDENTAL": int(transcendental),
        "BSFE_WITH_POWF": int(ints["power_mode"] == POWER_ANY),
        "BSFE_WITH_OTSU": int(binary and ints["threshold"] == THRESHOLDS["otsu"]),
        "BSFE_WITH_MEAN": int(binary and ints["threshold"] == THRESHOLDS["mean"]),
    }
    body = "\n".join(f"#define {k} {v}" for k, v in flags.items())
    return (
        "/* bsm_config.h: GENERATED by `bitsound deploy`: the kernel and front-end parts this model uses */\n"
        f"#ifndef BSM_CONFIG_H\n#define BSM_CONFIG_H\n{body}\n#endif\n"
    )


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def readme(project: Project) -> str:
    """The generated folder's README: API, build, memory plan."""
    p = project.plan
    rows = []
    for k, s in enumerate(p.steps):
        out = p.buffers[s.output]
        where = out.external or f"@{out.offset}"
        rows.append(
            f"| {k} | {s.kind} | {s.name} | {out.size} B {where} | "
            f"{p.buffers[s.scratch].size if s.scratch else 0} B |"
        )
    fe = project.frontend
    if fe is None:
        fe_line = "No front end: `bitsound_network_run` takes the features."
    elif fe.kind == "raw":
        fe_line = (
            f"Front end: the raw waveform ({fe.ints['n_channels']} x {fe.n_samples} samples at "
            f"{fe.sample_rate} Hz); the network reads the caller's buffer."
        )
    else:
        fe_line = (
            f"Front end: `{fe.kind}` on {fe.ints['n_channels']} x {fe.n_samples} samples at {fe.sample_rate} "
            f"Hz -> features {tuple(fe.feature_shape)} (frontend.c, the file the host engine compiles)."
        )
    flash = "\n".join(f"- {k}: {v} B" for k, v in sorted(project.flash_tables.items()))
    return f"""# Generated bitsound model

Generated by `bitsound deploy`: {len(project.labels)} classes ({", ".join(project.labels)}).
{fe_line}

## API (`bitsound_model.h`)

```c
void bitsound_model_run(const float *audio, float *logits);      /* audio [channels][samples] */
void bitsound_network_run(const float *features, float *logits); /* features [c][h][w] */
extern const char *const bitsound_labels[BITSOUND_N_CLASSES];
```

Neither is reentrant (one call at a time): both use one static arena of {p.arena_bytes} bytes
(`BITSOUND_ARENA_BYTES`; the largest sum of buffers live at once is {p.peak_live_bytes} bytes).
No heap. The audio buffer is the caller's and is not counted in the arena.

## Build

```sh
make host          # build/host/bitsound_host: the same sources with the host compiler
make m4            # build/m4/bitsound_m4.elf: Cortex-M4F (arm-none-eabi-gcc, newlib)
make run-m4        # runs it in qemu-system-arm -M mps2-an386 (semihosting) on input.bin
make size          # arm-none-eabi-size of the image
```

Options: `POPCOUNT=1|2|3|4` (builtin, 256-entry table, SWAR + multiply, SWAR + USADA8: the
default, measured fastest on the M4), `HOST_ACC=double|float`, `M4_ACC=double|float` (the float
convolutions' sums; host default double = the x86 engine bit for bit, Cortex-M4 default float,
since double is emulated in software there), `BUILD=dir`.

The harness (`harness.c`) reads `input.bin` (written by `bitsound deploy --run`): 20 bytes
`BSIN`, u32 version 1, u32 kind (0 audio, 1 features), u32 records, u32 floats per record,
then float32 records; for each it prints `R index frontend_ticks network_ticks logits...`
(logits as float32 bit patterns in hex). Under QEMU with `-icount shift=0` one SysTick tick
(25 MHz) is 40 instructions.

## Files

- `model.c`, `bitsound_model.h`: generated weights, arena and steps
- `bsmcu.c`, `bsmcu.h`: the portable kernels (semantics of the x86 engine, bitsound/engine/model.c)
- `frontend.c`, `frontend.h`: the audio front end (bitsound/engine/frontend.c)
- `harness.c`, `platform_host.c`, `platform_m4.c` (vector table, reset, semihosting, SysTick),
  `link_m4.ld`

## Steps and buffers

| step | kernel | ops | output | scratch |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Flash tables (bytes)

{flash}
"""


__all__ = ["Project", "TARGETS", "binary_kernel", "c_float", "generate", "sign_rows"]
