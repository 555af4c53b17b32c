"""Check that an Ogg file (Vorbis, Opus, FLAC-in-Ogg) is whole by walking its page headers.

libsndfile takes an Ogg file's length from the granule position of the last complete page it
finds, so a file cut short reports the shorter length and decodes without complaint. The page
structure shows the cut: every page header states the size of its body, and the last page of
each logical stream carries the end-of-stream flag. A file cut inside a page ends before that
page's body does; a file cut at a page boundary has a stream with no end-of-stream page.

Only the 27-byte page headers and their segment tables are read (RFC 3533).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_CAPTURE = b"OggS"
_BEGIN, _END = 0x02, 0x04  # header_type flags: first / last page of a logical stream
_PAGE_HEADER = 27


def ogg_problem(path: str | os.PathLike) -> str | None:
    """Why the Ogg file at ``path`` is truncated or corrupt, or None when its pages are whole.

    Parameters
    ----------
    path : str or PathLike
        A file that starts with an Ogg page (``OggS``).

    Returns
    -------
    str or None
        A sentence naming the byte offset and what is missing, ending with the fix.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        return "file is empty (0 bytes)"
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _walk_pages(data)


def _walk_pages(data) -> str | None:
    size = len(data)
    pos = 0
    open_streams: set[int] = set()
    n_pages = 0
    cut = ("the file was cut off while copying or downloading, so fetch it again or "
           "drop it")
    while pos < size:
        if data[pos:pos + 4] != _CAPTURE:
            return (f"corrupt: no Ogg page starts at byte {pos} of {size} after {n_pages} "
                    "pages; re-encode the file from its source or drop it")
        if pos + _PAGE_HEADER > size:
            return f"truncated: the file ends inside the header of Ogg page {n_pages + 1}; {cut}"
        header_type = data[pos + 5]
        (serial,) = struct.unpack("<I", data[pos + 14:pos + 18])
        n_segments = data[pos + 26]
        table_end = pos + _PAGE_HEADER + n_segments
        if table_end > size:
            return f"truncated: the file ends inside the header of Ogg page {n_pages + 1}; {cut}"
        page_end = table_end + sum(data[pos + _PAGE_HEADER:table_end])
        if page_end > size:
            return (f"truncated: the file ends inside Ogg page {n_pages + 1} (byte {pos}: "
                    f"{size - pos} of its {page_end - pos} bytes are there); {cut}")
        if header_type & _BEGIN:
            open_streams.add(serial)
        if header_type & _END:
            open_streams.discard(serial)
        n_pages += 1
        pos = page_end
    if open_streams:
        return (f"truncated: the Ogg stream has no end-of-stream page (its {n_pages} pages "
                f"stop at a page boundary); {cut}")
    return None
