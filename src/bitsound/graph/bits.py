"""Bit packing of ±1 values, the layout shared by the graph, the ``.bsnn`` file and the engines.

Channel ``j`` is bit ``j % 64`` (least significant first) of uint64 word ``j // 64``; ``+1 -> 0``
and ``-1 -> 1`` (so a product of two binary values is ``+1`` exactly when the bits are equal); the
unused high bits of the last word are 0.
"""

from __future__ import annotations

import numpy as np


def pack_signs(values: np.ndarray) -> np.ndarray:
    """Pack ±1 values (or any numbers: bit 1 where ``v < 0``) along the last axis into uint64 words.

    Parameters
    ----------
    values : ndarray [shape=(..., c)]

    Returns
    -------
    ndarray [shape=(..., ceil(c / 64)), dtype=uint64]
    """
    v = np.asarray(values)
    c = v.shape[-1]
    nw = (c + 63) // 64
    neg = np.zeros((*v.shape[:-1], nw * 64), dtype=np.uint8)
    neg[..., :c] = v < 0
    as_bytes = np.packbits(neg.reshape(*v.shape[:-1], nw * 8, 8), axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes.reshape(*v.shape[:-1], nw * 8)).view("<u8").astype(np.uint64)


def unpack_bits(words: np.ndarray, c: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: uint64 words [..., nw] -> ±1 int8 values [..., c]."""
    w = np.ascontiguousarray(words).astype("<u8")
    bits = np.unpackbits(w.view(np.uint8).reshape(*w.shape[:-1], -1), axis=-1, bitorder="little")
    return (1 - 2 * bits[..., :c].astype(np.int8)).astype(np.int8)
