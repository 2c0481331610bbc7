"""Arrow IPC index files: one per partition, memory-mapped, one row per document (row i = partition row i).

    text_bytes    int64  UTF-8 bytes of its text
    subset        int32  subset id, local to the partition (manifest maps it to the store's names)
    checksum      int64  xxh3_64 of the text's UTF-8 bytes, as a signed int64

One record batch, no compression, so each column is a zero-copy numpy view of the mapped file: opening
costs a footer read, whatever the number of documents. pyarrow is imported here only, and lazily by the
store, so `pilestore sample` never pays for it.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .atomic import naming
from .errors import StoreFormatError

SCHEMA = pa.schema(
    [
        ("text_bytes", pa.int64()),
        ("subset", pa.int32()),
        ("checksum", pa.int64()),
    ],
    metadata={"pilestore.index": "2"},
)
DTYPES = {field.name: field.type.to_pandas_dtype() for field in SCHEMA}


def arrow_array(values: Any, dtype: Any = None) -> pa.Array:
    """Numbers (a numpy array or a list) as an Arrow array over the same memory. Not pa.array(), which imports
    pandas where it is installed (0.4 s in every process that writes an index or a token view)."""
    array = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(array.dtype), len(array), [None, pa.py_buffer(array)])


def arrow_batch(columns: dict[str, Any]) -> pa.RecordBatch:
    """Columns of numbers (numpy arrays, lists or Arrow arrays) as one Arrow record batch, without importing
    pandas; also with no rows (a file written from a table of no rows would hold no batch at all)."""
    arrays = [value if isinstance(value, pa.Array) else arrow_array(value) for value in columns.values()]
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def write_index(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write the columns (numpy arrays of equal length, SCHEMA's names) as one uncompressed batch; fsync."""
    arrays = [arrow_array(columns[f.name], DTYPES[f.name]) for f in SCHEMA]
    batch = pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)
    with naming(path), open(path, "wb") as fh:
        with pa.ipc.new_file(fh, SCHEMA) as writer:
            writer.write_batch(batch)
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True, slots=True)
class PartitionIndex:
    """The index of one partition, mapped read-only: columns are numpy views into the file."""

    path: Path
    text_bytes: np.ndarray
    subset: np.ndarray
    checksum: np.ndarray

    def __len__(self) -> int:
        return len(self.text_bytes)


def open_index(path: Path, expected_rows: int) -> PartitionIndex:
    """Map an index file; StoreFormatError if it is unreadable, has the wrong schema or row count."""
    try:
        reader = pa.ipc.open_file(_map_random(path))
        if reader.num_record_batches != 1 or not reader.schema.equals(SCHEMA, check_metadata=False):
            raise StoreFormatError(
                f"{path}: not a pilestore index (schema {reader.schema}, "
                f"{reader.num_record_batches} batches); run `pilestore verify`"
            )
        batch = reader.get_batch(0)
        columns = {f.name: _column_view(batch.column(f.name)) for f in SCHEMA}
    except (pa.ArrowException, OSError) as err:
        raise StoreFormatError(f"{path}: unreadable index file ({err}); run `pilestore verify`") from err
    if batch.num_rows != expected_rows:
        raise StoreFormatError(f"{path}: index has {batch.num_rows} rows, the manifest says {expected_rows}")
    return PartitionIndex(path=path, **columns)


def map_columns(
    path: Path, names: list[str] | None = None, metadata: dict[bytes, bytes] | None = None
) -> dict[str, np.ndarray]:
    """The columns of a one-batch Arrow IPC file as read-only numpy views of its memory map (no copy: opening
    costs a footer read whatever the number of rows; table.column(...).combine_chunks() would copy).
    `metadata`, if given, is filled with the file's schema metadata."""
    try:
        reader = pa.ipc.open_file(_map_random(path))
        if reader.num_record_batches != 1:
            raise StoreFormatError(f"{path}: {reader.num_record_batches} record batches, expected 1; rebuild it")
        batch = reader.get_batch(0)
        if metadata is not None:
            metadata.update(reader.schema.metadata or {})
        return {n: _column_view(batch.column(n)) for n in names or batch.schema.names}
    except (pa.ArrowException, OSError) as err:
        raise StoreFormatError(f"{path}: unreadable Arrow file ({err}); rebuild it or run `pilestore verify`") from err


def _column_view(column: pa.Array) -> np.ndarray:
    """A zero-copy numpy view: numbers as they are; fixed-size binary records as a (rows, width) uint8 array
    (view it with a structured dtype of that width)."""
    if pa.types.is_fixed_size_binary(column.type):
        width = column.type.byte_width
        data = column.buffers()[1]
        return np.frombuffer(data, np.uint8, len(column) * width, column.offset * width).reshape(len(column), width)
    # not column.to_numpy(): it imports pandas where pandas is installed (0.4 s at every open, in every worker)
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)) or column.null_count:
        raise pa.ArrowInvalid(f"a column of {kind} with {column.null_count} nulls has no zero-copy numpy view")
    dtype = np.dtype(kind.to_pandas_dtype())  # a numpy type for numbers (pandas not needed)
    return np.frombuffer(column.buffers()[1], dtype, len(column), column.offset * dtype.itemsize)


def _map_random(path: Path) -> pa.Buffer:
    """The file memory-mapped read-only with MADV_RANDOM: look-ups fault in the pages they touch and no
    read-ahead around them, so resident memory follows what is read, not the size of the file."""
    with open(path, "rb") as fh:
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped; Arrow says what is wrong with it
            return pa.py_buffer(b"")
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return pa.py_buffer(mapped)
