"""One-batch Arrow files written in place (arrowfile.py): the bytes pyarrow writes for the same table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from pilestore.arrowfile import create
from pilestore.index import arrow_array, map_columns

RECORD = np.dtype([("a", "<i8"), ("b", "<i4"), ("c", "u1", (4,))])
COLUMNS = {"x": np.int64, "flag": np.uint8, "small": np.int16, "record": RECORD}


def _batch(columns: dict[str, np.ndarray], metadata: dict[str, str]) -> pa.RecordBatch:
    """The columns as pyarrow would be given them whole (records as fixed_size_binary, numbers by arrow_array)."""
    arrays = []
    for values in columns.values():
        if values.dtype.names is not None:
            raw = pa.py_buffer(values.view(np.uint8))
            arrays.append(
                pa.FixedSizeBinaryArray.from_buffers(pa.binary(values.dtype.itemsize), len(values), [None, raw])
            )
        else:
            arrays.append(arrow_array(values))
    return pa.RecordBatch.from_arrays(arrays, names=list(columns)).replace_schema_metadata(metadata)


@pytest.mark.parametrize("rows", [0, 1, 7, 1000])
def test_a_file_filled_in_chunks_is_the_file_pyarrow_writes(tmp_path: Path, rows: int) -> None:
    rng = np.random.default_rng(rows)
    values = {"x": rng.integers(-(2**62), 2**62, rows), "flag": rng.integers(0, 2, rows).astype(np.uint8),
              "small": rng.integers(-999, 999, rows).astype(np.int16), "record": np.zeros(rows, RECORD)}  # fmt: skip
    values["record"]["a"], values["record"]["b"] = rng.integers(0, 10**9, rows), rng.integers(0, 10**6, rows)
    hasher = xxhash.xxh3_128()
    for column in values.values():
        hasher.update(column.tobytes())
    expected = tmp_path / "expected.arrow"
    with pa.OSFile(str(expected), "wb") as sink:  # the reference: the whole batch, its metadata known upfront
        batch = _batch(values, {"k": hasher.hexdigest()})
        with pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
    placeholder = "p" * 32
    with create(tmp_path / "filled.arrow", COLUMNS, rows, {"k": placeholder}) as out:
        for name, column in reversed(values.items()):  # any order, chunks of 3 rows
            for at in range(0, rows, 3):
                out.write(name, at, column[at : at + 3])
        got = xxhash.xxh3_128()
        out.hash_columns(got, chunk=5)
        assert got.hexdigest() == hasher.hexdigest()
        assert out.view("x").tolist() == values["x"].tolist()
        out.set_metadata(placeholder, got.hexdigest())
    assert (tmp_path / "filled.arrow").read_bytes() == expected.read_bytes()
    meta: dict[bytes, bytes] = {}
    columns = map_columns(tmp_path / "filled.arrow", metadata=meta)
    assert meta == {b"k": hasher.hexdigest().encode()} and columns["small"].tolist() == values["small"].tolist()


def test_the_layout_takes_no_disk_until_written_and_bad_writes_are_refused(tmp_path: Path) -> None:
    rows = 4_000_000  # 32 MB of int64
    with create(tmp_path / "big.arrow", {"x": np.int64}, rows, {"k": "0" * 8}) as out:
        assert os.stat(out.path).st_size > rows * 8 and os.stat(out.path).st_blocks * 512 < 1 << 20  # a hole
        with pytest.raises(TypeError, match="column x holds int64, got int32"):
            out.write("x", 0, np.zeros(3, np.int32))
        with pytest.raises(IndexError, match="rows 3999999..4000001 outside"):
            out.write("x", rows - 1, np.zeros(2, np.int64))
        with pytest.raises(ValueError, match="keeps its length"):
            out.set_metadata("0" * 8, "1" * 9)
        with pytest.raises(RuntimeError, match="occurs 0 times"):
            out.set_metadata("1" * 8, "2" * 8)
        out.write("x", rows - 2, np.array([5, 6], np.int64))
    assert map_columns(tmp_path / "big.arrow")["x"][-3:].tolist() == [0, 5, 6]
