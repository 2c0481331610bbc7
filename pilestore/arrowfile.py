"""One-batch Arrow IPC files written in place, a chunk at a time: memory stays bounded whatever their size.

    create(path, {name: dtype}, rows, {key: placeholder})   pyarrow writes the file's whole layout; its columns
                                                            of zeros are left as holes (no memory, no writes)
    .write(name, first_row, values)                         a chunk of a column, straight into the file (pwrite)
    .view(name)                                             a column read back, memory-mapped (what was written)
    .hash_columns(hasher) / .set_metadata(key, value)       the columns' bytes in order; the placeholder replaced
    .close()                                                fsync

The file is byte for byte what `pa.ipc.new_file(...).write_batch(...)` gives for the same columns and schema
metadata: the layout depends on the column types and the number of rows only, and a metadata value keeps its
place when it is replaced by one of the same length. Fixed-size records (a structured dtype) are stored as a
fixed_size_binary column of their width. Readers map the columns as before (index.map_columns).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .atomic import naming


def _zeros(dtype: np.dtype, rows: int, zeros: mmap.mmap) -> pa.Array:
    """A column of `rows` zeros over `zeros`, an anonymous mapping that is neither written nor read (_Sink makes
    holes of it), so laying out a file of any size takes no memory."""
    buffer = pa.py_buffer(zeros)[: rows * dtype.itemsize]
    if dtype.names is not None:
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(dtype.itemsize), rows, [None, buffer])
    return pa.Array.from_buffers(pa.from_numpy_dtype(dtype), rows, [None, buffer])


class _Sink:
    """The file object pyarrow writes to in create(): the columns' zeros, which it hands over as buffers of the
    zero mapping, become a hole in the file (skipped, not read: reading them would map a page of memory each),
    and every other byte (the schema, the batch's metadata, padding, the footer) is written."""

    def __init__(self, path: Path, zeros: pa.Buffer) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._zeros = (zeros.address, zeros.address + zeros.size)
        self._at = 0
        self.closed = False

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if isinstance(data, pa.Buffer) and self._zeros[0] <= data.address < self._zeros[1]:
            self._at += size  # zeros: a hole
            return size
        view = memoryview(data).cast("B")
        while len(view):
            done = os.pwrite(self._fd, view, self._at)
            view, self._at = view[done:], self._at + done
        return size

    def tell(self) -> int:
        return self._at

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            os.ftruncate(self._fd, self._at)  # the file's length, should it end in a hole
            os.close(self._fd)
            self.closed = True


class ArrowFile:
    """An open file made by `create`: columns are written in place; call close() (or use `with`)."""

    def __init__(self, path: Path, dtypes: Mapping[str, np.dtype], rows: int, places: dict[str, int]) -> None:
        self.path = path
        self.rows = rows
        self.dtypes = dict(dtypes)
        self._places = places  # byte offset of each column's values in the file
        self._fd = os.open(path, os.O_RDWR)
        self._maps: list[mmap.mmap] = []

    def __enter__(self) -> ArrowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _span(self, name: str) -> tuple[int, int]:
        """(offset, bytes) of a column's values."""
        return self._places[name], self.rows * self.dtypes[name].itemsize

    def write(self, name: str, first_row: int, values: np.ndarray) -> None:
        """values become rows first_row.. of column `name` (they must have its dtype)."""
        dtype = self.dtypes[name]
        values = np.ascontiguousarray(values)
        if values.dtype != dtype:
            raise TypeError(f"{self.path}: column {name} holds {dtype}, got {values.dtype}")
        if first_row < 0 or first_row + len(values) > self.rows:
            raise IndexError(f"{self.path}: rows {first_row}..{first_row + len(values)} outside 0..{self.rows}")
        data = memoryview(values.view(np.uint8).reshape(-1))
        at = self._places[name] + first_row * dtype.itemsize
        with naming(self.path):
            while len(data):
                done = os.pwrite(self._fd, data, at)
                data, at = data[done:], at + done

    def view(self, name: str) -> np.ndarray:
        """Column `name` as it is in the file now, memory-mapped read-only (valid until close())."""
        offset, size = self._span(name)
        if size == 0:
            return np.zeros(0, self.dtypes[name])
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._fd, offset + size - start, access=mmap.ACCESS_READ, offset=start)
        if hasattr(mmap, "MADV_RANDOM"):
            mapped.madvise(mmap.MADV_RANDOM)
        self._maps.append(mapped)
        return np.frombuffer(mapped, self.dtypes[name], self.rows, offset - start)

    def hash_columns(self, hasher: Any, chunk: int = 1 << 24) -> None:
        """Feed the columns' bytes to `hasher` (.update), column after column, as Arrow's buffers hold them."""
        for name in self.dtypes:
            offset, size = self._span(name)
            for at in range(offset, offset + size, chunk):
                hasher.update(os.pread(self._fd, min(chunk, offset + size - at), at))

    def set_metadata(self, placeholder: str, value: str) -> None:
        """Replace a schema metadata value given to create() by one of the same length. The schema is written
        twice (after the magic bytes, and in the footer): both copies lie outside the columns' values."""
        old, new = placeholder.encode(), value.encode()
        if len(old) != len(new):
            raise ValueError(f"a metadata value keeps its length: {len(old)} bytes, got {len(new)}")
        size = os.fstat(self._fd).st_size
        spans = [self._span(name) for name in self.dtypes if self._span(name)[1]]
        head = min((offset for offset, _ in spans), default=size)
        tail = max((offset + length for offset, length in spans), default=size)
        found = []
        for lo, hi in ((0, head), (tail, size)):
            data = os.pread(self._fd, hi - lo, lo)
            at = data.find(old)
            while at >= 0:
                found.append(lo + at)
                at = data.find(old, at + 1)
        if len(found) != 2:
            raise RuntimeError(f"{self.path}: the metadata placeholder occurs {len(found)} times, expected 2")
        with naming(self.path):
            for at in found:
                os.pwrite(self._fd, new, at)

    def close(self) -> None:
        """fsync and close (column views from view() must no longer be used)."""
        if self._fd < 0:
            return
        for mapped in self._maps:
            try:
                mapped.close()
            except BufferError:  # a view of it is still referenced: the map goes when that view does
                pass
        self._maps = []
        try:
            with naming(self.path):
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1


def create(path: Path, dtypes: Mapping[str, Any], rows: int, metadata: Mapping[str, str]) -> ArrowFile:
    """A new file at `path` (replaced if it exists) with these columns (name: numpy dtype; a structured dtype is
    a fixed-size record) of `rows` zero rows, and this schema metadata; returns it open for writing."""
    dtypes = {name: np.dtype(dtype) for name, dtype in dtypes.items()}
    zeros = mmap.mmap(-1, max(1, rows * max(d.itemsize for d in dtypes.values())))
    batch = pa.RecordBatch.from_arrays([_zeros(d, rows, zeros) for d in dtypes.values()], names=list(dtypes))
    schema = batch.schema.with_metadata(dict(metadata))
    try:
        with naming(path), _Sink(path, pa.py_buffer(zeros)) as sink:
            with pa.ipc.new_file(pa.PythonFile(sink, mode="w"), schema) as out:
                out.write_batch(batch.replace_schema_metadata(schema.metadata))
        del batch
        with pa.memory_map(str(path)) as source:
            base = source.read_buffer(1).address
            source.seek(0)
            written = pa.ipc.open_file(source).get_batch(0)
            places = {name: written.column(name).buffers()[1].address - base if rows else 0 for name in dtypes}
            del written
        return ArrowFile(path, dtypes, rows, places)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        try:
            zeros.close()
        except BufferError:  # pyarrow still refers to it: unmapped when that goes
            pass
