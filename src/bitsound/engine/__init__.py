"""The bit-packed inference engine: load a ``.bsnn`` file (see :mod:`bitsound.export.bsnn`) and run it.

The engine is C99 (``src/bitsound/engine/*.c``), built into ``bitsound.engine._engine`` by
``pip install``. It knows nothing of PyTorch: it takes front-end features and returns logits.

>>> from bitsound import engine
>>> eng = engine.load("model.bsnn")            # isa="auto" picks the fastest path
>>> logits = eng.predict(features)             # [batch, *eng.feature_shape] float32
>>> eng.labels[int(logits[0].argmax())]

Instruction sets (``isa``): ``"avx512"`` (AVX-512F/VL + VPOPCNTDQ), ``"avx2"`` (AVX2 + POPCNT),
``"scalar"`` (portable C), ``"reference"`` (the plain bit-at-a-time reference of every binary op,
for testing) and ``"auto"``; :func:`available_isas` lists what this CPU runs. Two more exist for
the tests only: ``"avx512-emulated"`` (the AVX-512 kernels' sources on stand-ins for the AVX-512
instructions) and ``"scalar-bitserial"`` (the bit-serial algorithm in portable C).

Binary convolutions run in one of three forms, chosen per layer at load from its shapes (``bconv=``
forces one where the layer allows it; :attr:`Engine.forms` says which each layer runs).
*Word-parallel*: per output pixel and channel,
XOR the packed patch with the packed weights and popcount (AVX2: nibble-table ``vpshufb`` with a
carry-save full adder over triples of vectors; AVX-512: ``vpopcntq``). *Bit-serial* (layers of
>= 128-bit kernels over >= 128 output pixels): the patches of 256 output pixels are bit-transposed
so that one vector holds one kernel bit of all 256 pixels; each output channel then sums, per
pixel, only the rows where its weight bit is in the smaller of its 0/1 sets (at most half the
kernel) with a Harley-Seal carry-save tree into bit-sliced counters (AVX2: 5 logic ops per full
adder; AVX-512VL: 2 ``vpternlogq``), and ``popcount(x xor w) = n1 + X - 2 C1 = n1 - X + 2 C0``.
*Slice* (stride-1 convs with thresholded bit output, the layers of binary audio models): the input
map is transposed once into one bit plane per channel, the kernel rows of a block of 512 (AVX-512;
AVX2 256, scalar 64) output positions are shifted loads of those planes, the rows are counted as
in the bit-serial form, and each channel's threshold rule is evaluated on the bit-sliced counts
(a carry chain per border class), so the output bits come out without integer counts and 64 x 64
bit transposes write the packed output words (``slice.c``, ``bitslice_body.h``).

Threads (``threads=N``): a batch of at least N examples is split by example, a smaller one runs
each binary conv's blocks of output pixels over the threads; the results are identical whatever N.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitsound.errors import CheckpointError, ConfigError, DataError
from bitsound.graph import opcodes as oc

try:
    from bitsound.engine import _engine
except ImportError as err:  # pragma: no cover - only without a built extension
    _engine = None
    _IMPORT_ERROR = err

ISAS = oc.ISAS
BCONV_FORMS = ("auto", "word", "serial", "slice")
MAX_THREADS = 256


class EngineFileError(CheckpointError):
    """A ``.bsnn`` file is malformed, corrupt or of another version.

    Attributes
    ----------
    code : int
        The engine's status code (``bsnn.h``: 2 truncated, 3 bad magic, 4 bad version, 5 bad
        checksum, 6 out of range, 7 bad graph, 8 out of memory, 9 isa unavailable, 10 unsupported).
    code_name : str
        Its name, e.g. ``"bad_checksum"``.
    """

    def __init__(self, code: int, code_name: str, message: str, path: str | None = None):
        self.code, self.code_name, self.path = code, code_name, path
        where = f"'{path}': " if path else ""
        super().__init__(f"{where}{message} [{code_name}, code {code}]")


def _lib():
    if _engine is None:
        raise ConfigError(f"the C engine is not built ({_IMPORT_ERROR}); reinstall bitsound with "
                          f"`pip install -e .` (needs a C compiler)")
    return _engine


def available_isas() -> list[str]:
    """Instruction sets this CPU can run, e.g. ``["reference", "scalar", "avx2"]``."""
    return list(_lib().available_isas())


def auto_isa() -> str:
    """The instruction set ``isa="auto"`` picks on this CPU."""
    return _lib().auto_isa()


@dataclass(frozen=True)
class OpInfo:
    """One op of a loaded model: type name, name (PyTorch module path), slots and output shape."""

    index: int
    type: str
    name: str
    in0: int
    in1: int
    out: int
    shape: tuple[int, int, int]  # (h, w, c) channels last
    dtype: str  # f32 | bits | i8

    @property
    def bits(self) -> bool:
        return self.dtype == "bits"


def _parse_meta(text: str | None, path: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise EngineFileError(6, "out_of_range", f"the metadata record is not valid JSON ({err})",
                              path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels", []), list):
        raise EngineFileError(6, "out_of_range",
                              "the metadata record is not a JSON object with a list of labels", path)
    return meta


_DTYPE_NAMES = {v: k for k, v in oc.DTYPES.items()}


class Engine:
    """A loaded ``.bsnn`` model. Use :func:`load`.

    Attributes
    ----------
    isa : str
        Instruction set in use.
    feature_shape : tuple of int
        Shape of one example, ``(c, h, w)`` or ``(c, t)``.
    labels : list of str or None
        Class names from the file's metadata.
    meta : dict
        The file's metadata (labels, recipe, feature shape, source model).
    ops : list of OpInfo
    threads : int
        Threads of a run (see :func:`load`).
    forms : list of str
        Per op, the form its binary conv runs in (``word``, ``serial``, ``slice``; ``grouped``,
        ``reference``), ``""`` for the other ops.
    """

    def __init__(self, data: bytes, *, isa: str = "auto", threads: int = 1, bconv: str = "auto",
                 path: str | None = None):
        lib = _lib()
        if isa not in ISAS and isa not in oc.TEST_ISAS:
            raise ConfigError(f"isa must be one of {', '.join(ISAS)}, got {isa!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ConfigError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
        if bconv not in BCONV_FORMS:
            raise ConfigError(f"bconv must be one of {', '.join(BCONV_FORMS)}, got {bconv!r}")
        try:
            self._m = lib.Model(data, isa, threads, bconv)
        except lib.FormatError as err:
            code, name, message = err.args
            raise EngineFileError(code, name, message, path) from None
        self.path = path
        self.isa: str = self._m.isa
        self.threads: int = self._m.threads
        self.forms: list[str] = list(self._m.forms())
        self.feature_shape: tuple[int, ...] = tuple(self._m.input_shape)
        self.n_outputs: int = self._m.n_outputs
        self.meta: dict[str, Any] = _parse_meta(self._m.meta, path)
        self.labels: list[str] | None = self.meta.get("labels")
        self.ops = [
            OpInfo(i, oc.BY_CODE[t].name, name, a, b, o, (h, w, c), _DTYPE_NAMES[dt])
            for i, (t, name, a, b, o, (h, w, c, dt)) in enumerate(self._m.ops())
        ]

    def __repr__(self) -> str:
        return (f"Engine({self.path or '<bytes>'}, isa={self.isa!r}, threads={self.threads}, "
                f"features={self.feature_shape}, outputs={self.n_outputs}, ops={len(self.ops)})")

    def _features(self, features: np.ndarray, *, batched: bool) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        want = self.feature_shape
        ok = x.shape[1:] == want if batched else x.shape == want
        if not ok:
            shape = f"[batch, {', '.join(map(str, want))}]" if batched else str(want)
            raise DataError(f"the engine model takes features of shape {shape}, got {tuple(x.shape)}; "
                            f"use the front end of the recipe the model was exported from")
        return x

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Logits for a batch of front-end features.

        Parameters
        ----------
        features : ndarray [shape=(batch, *feature_shape)], float32 (other dtypes are converted)

        Returns
        -------
        ndarray [shape=(batch, n_outputs), dtype=float32]
        """
        x = self._features(features, batched=True)
        out = np.empty((x.shape[0], self.n_outputs), dtype=np.float32)
        self._m.predict(x, out)
        return out

    def trace(self, features: np.ndarray) -> list[tuple[OpInfo, np.ndarray]]:
        """Every op's output for one example, ``[h, w, c]``: floats, ±1 int8 for bits, int8 for int8."""
        from bitsound.graph.bits import unpack_bits

        x = self._features(features, batched=False)
        out = []
        for info, raw in zip(self.ops, self._m.trace(x), strict=True):
            h, w, c = info.shape
            if info.bits:
                words = np.frombuffer(raw, dtype="<u8").reshape(h, w, (c + 63) // 64)
                out.append((info, unpack_bits(words, c)))
            elif info.dtype == "i8":
                out.append((info, np.frombuffer(raw, dtype=np.int8).reshape(h, w, c).copy()))
            else:
                out.append((info, np.frombuffer(raw, dtype="<f4").reshape(h, w, c).copy()))
        return out

    def time_op(self, features: np.ndarray, index: int, *, repeats: int = 10) -> list[float]:
        """Seconds of each of ``repeats`` runs of op ``index`` (after one full run up to it)."""
        x = self._features(features, batched=False)
        return list(self._m.time_op(x, int(index), int(repeats)))

    @property
    def arena_bytes(self) -> int:
        """Working memory of one inference, bytes."""
        return self._m.arena_bytes


def loads(data: bytes, *, isa: str = "auto", threads: int = 1, bconv: str = "auto") -> Engine:
    """Load a model from bytes (see :func:`load`)."""
    return Engine(bytes(data), isa=isa, threads=threads, bconv=bconv)


def load(path: str | Path, *, isa: str = "auto", threads: int = 1, bconv: str = "auto") -> Engine:
    """Load and validate a ``.bsnn`` model file.

    Parameters
    ----------
    path : str or Path
    isa : {"auto", "avx512", "avx2", "scalar", "reference"}
        Kernel path; ``"auto"`` picks the fastest this CPU supports.
    threads : int, 1 .. 256
        Threads of a run (a pthreads pool started at load): a batch of at least ``threads``
        examples is split by example, a smaller one by blocks of output pixels of each binary
        conv. Results are bit-identical whatever the count.
    bconv : {"auto", "word", "serial", "slice"}
        Force the form of the binary convs where the layer and ``isa`` allow it (benchmarks and
        tests); ``"auto"`` chooses per layer from its shapes.

    Raises
    ------
    EngineFileError
        Malformed, truncated or corrupt file (with the engine's code and message).
    ConfigError
        Unknown ``isa`` or ``bconv``, ``threads`` out of range; :class:`EngineFileError` with code 9
        for an ``isa`` this CPU lacks.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise EngineFileError(1, "io_error", f"cannot read the model file: {err.strerror}", str(p)) from None
    return Engine(data, isa=isa, threads=threads, bconv=bconv, path=str(p))


__all__ = ["Engine", "EngineFileError", "OpInfo", "auto_isa", "available_isas", "load", "loads"]
