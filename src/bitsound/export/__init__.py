"""Export of trained models: the packed format of the C engine (:mod:`bitsound.export.packed`)."""

from bitsound.export.packed import PackedWriter, export_packed, pack_signs, unpack_bits

__all__ = ["PackedWriter", "export_packed", "pack_signs", "unpack_bits"]
