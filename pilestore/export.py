"""Export a store back to Pile JSON lines (zstd-compressed when the name ends in .zst), in store order."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import zstandard

from .atomic import naming, remove_dead_temps, temp_name
from .document import dump_json
from .store import Store

DocCallback = Callable[[int], None]


def write_lines(store: Store, sink: BinaryIO, on_document: DocCallback) -> int:
    """Every document of `store` as one JSON line to `sink`, in store order; returns the count."""
    count = 0
    for doc in store:
        sink.write(dump_json(doc.to_record()) + b"\n")
        count += 1
        on_document(1)
    return count


def export(store: Store, out: Path, *, level: int = 3, on_document: DocCallback = lambda n: None) -> int:
    """Write every document as one JSON line to `out` (a temp file renamed at the end); returns the count."""
    remove_dead_temps(out)
    tmp = temp_name(out)
    try:
        with naming(out), open(tmp, "wb") as raw:
            if out.name.endswith(".zst"):
                cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
                with cctx.stream_writer(raw, closefd=False) as sink:
                    count = write_lines(store, sink, on_document)
            else:
                count = write_lines(store, raw, on_document)
            raw.flush()
            os.fsync(raw.fileno())
        try:
            os.replace(tmp, out)
        except OSError as err:  # it names the temporary file, which is removed next: name the output instead
            raise OSError(err.errno, err.strerror, str(out)) from err
    finally:
        tmp.unlink(missing_ok=True)
    return count
