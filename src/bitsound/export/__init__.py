"""Exporters: the engine's ``.bsnn`` file (a back end of the typed graph)."""

from bitsound.export.bsnn import read as read_bsnn
from bitsound.export.bsnn import write as write_bsnn
from bitsound.export.packed import export_packed, model_graph
from bitsound.graph.bits import pack_signs, unpack_bits

__all__ = ["export_packed", "model_graph", "pack_signs", "read_bsnn", "unpack_bits", "write_bsnn"]
