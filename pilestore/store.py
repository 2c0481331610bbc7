"""Store: the read side. `pilestore.open(path)[i]` is one bisect over partitions and one SQLite row look-up.

    global idx ──bisect over partition starts (P+1 ints)──▶ (partition p, row = idx - start[p])
               ──SELECT ... WHERE id = row──▶ where its bytes lie in the frame stream ──blob read of its
               chunk(s)──▶ zstd frame ──decompress──▶ check xxh3 ──▶ Document

Row ids equal positions, so reading a document needs no index file and no pyarrow: `pilestore sample`
stays fast to start. The Arrow index (per-document sizes, subsets, checksums as numpy arrays) is
mapped lazily by `Store.index(p)` for whole-corpus work. Connections and mappings open lazily per
process, so a Store can be pickled into spawned DataLoader workers or inherited by forked ones.
"""

from __future__ import annotations

import operator
import os
import threading
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw

from . import partition
from .codec import Decompressor
from .document import Document, decode_text, load_json, row_checksum
from .errors import CorruptDocumentError, StoreFormatError
from .manifest import read_manifest, subset_totals

if TYPE_CHECKING:
    from .index import PartitionIndex


class _Partition:
    """One partition's connection (per process), with a row reader and a decompressor per thread: neither apsw
    cursors nor zstd decompression contexts may be used by two threads at once."""

    __slots__ = ("_local", "conn", "dictionaries", "rests", "stream_end", "subsets")

    def __init__(self, path: Path, subsets: list[str]) -> None:
        if not path.exists():
            raise StoreFormatError(f"{path}: partition file missing; the store is damaged (run `pilestore verify`)")
        self.conn = partition.connect_reader(path)
        try:
            self.dictionaries = partition.read_dictionaries(self.conn)
            stored_subsets = partition.read_subsets(self.conn)
            self.stream_end = partition.stream_bytes(self.conn)
        except apsw.Error as err:
            raise StoreFormatError(f"{path}: unreadable partition ({err}); run `pilestore verify`") from err
        except StoreFormatError as err:
            raise StoreFormatError(f"{path}: {err}") from err
        if stored_subsets != subsets:
            raise StoreFormatError(f"{path}: subsets {stored_subsets} differ from the manifest's {subsets}")
        self.subsets = subsets
        self.rests: dict[int, str] = {}
        self._local = threading.local()

    def thread_state(self) -> threading.local:
        """This thread's `reader` (partition.RowReader) and `decompressor`."""
        local = self._local
        if not hasattr(local, "reader"):
            local.reader = partition.RowReader(self.conn, self.stream_end)
            local.decompressor = Decompressor(self.dictionaries)
        return local

    def rest(self, rest_id: int) -> str:
        """An interned rest JSON (cached: few distinct values repeat across many documents)."""
        found = self.rests.get(rest_id)
        if found is None:
            try:
                found = partition.read_rest(self.conn, rest_id)
            except apsw.Error as err:
                raise CorruptDocumentError(f"meta #{rest_id} unreadable ({err})") from err
            if found is None:
                raise CorruptDocumentError(f"refers to missing meta #{rest_id}")
            self.rests[rest_id] = found
        return found


class Store:
    """A complete pilestore store, opened read-only. Use `pilestore.open(path)`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self._setup()

    def _setup(self) -> None:
        parts = self.manifest["partitions"]
        self._starts = [0]
        for part in parts:
            self._starts.append(self._starts[-1] + part["documents"])
        self._pid = os.getpid()
        self._open: dict[int, _Partition] = {}
        self._indexes: dict[int, PartitionIndex] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest}  # no connections or mappings: reopened lazily

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.manifest = state["path"], state["manifest"]
        self._setup()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, documents={len(self)}, partitions={self.num_partitions})"

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def num_partitions(self) -> int:
        return len(self.manifest["partitions"])

    @property
    def subsets(self) -> dict[str, int]:
        """Documents per subset, from the manifest (no file is read)."""
        return {name: v["documents"] for name, v in subset_totals(self.manifest["partitions"]).items()}

    def _check_process(self) -> None:
        if os.getpid() != self._pid:  # forked: the parent's SQLite handles and maps are not ours to use
            self._open = {}
            self._indexes = {}
            self._pid = os.getpid()

    def _partition(self, p: int) -> _Partition:
        self._check_process()
        part = self._open.get(p)
        if part is None:
            entry = self.manifest["partitions"][p]
            part = self._open[p] = _Partition(self.path / entry["file"], entry["subsets"])
        return part

    def locate(self, idx: int) -> tuple[int, int]:
        """(partition, row) of global document index `idx` (negative counts from the end)."""
        i = operator.index(idx)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"document index {idx} out of range for a store of {n} documents")
        p = bisect_right(self._starts, i) - 1
        return p, i - self._starts[p]

    def __getitem__(self, idx: int) -> Document:
        p, row = self.locate(idx)
        part = self._open.get(p) if self._pid == os.getpid() else None
        if part is None:
            part = self._partition(p)
        try:
            local = part.thread_state()
            found = local.reader.read(row)
            if found is None:
                raise CorruptDocumentError("row missing from the partition")
            return self._document(self._starts[p] + row, part, local.decompressor, *found)
        except apsw.Error as err:  # a damaged page: SQLite says so
            raise CorruptDocumentError(f"{self._where(p, row)}: unreadable ({err}); run `pilestore verify`") from err
        except CorruptDocumentError as err:
            raise CorruptDocumentError(f"{self._where(p, row)}: {err}; run `pilestore verify`") from err

    def _where(self, p: int, row: int) -> str:
        """Where a document lives, for error messages (built only when something is wrong)."""
        return f"{self.path / self.manifest['partitions'][p]['file']}: document {self._starts[p] + row} (row {row})"

    @staticmethod
    def _document(
        gidx: int,
        part: _Partition,
        decompressor: Decompressor,
        subset_id: int,
        codec: int,
        size: int,
        digest: int,
        rest: str | int | None,
        stored: bytes | CorruptDocumentError,
    ) -> Document:
        """The document of a row; `stored` may be the error a scan met reading its bytes (iter_rows)."""
        if isinstance(stored, CorruptDocumentError):
            raise stored
        if type(subset_id) is not int or type(size) is not int or type(stored) is not bytes or type(rest) is bytes:
            raise CorruptDocumentError("row fields have the wrong types")  # a damaged SQLite record
        if not 0 <= subset_id < len(part.subsets):
            raise CorruptDocumentError(f"subset id {subset_id} out of range")
        subset = part.subsets[subset_id]
        data = decompressor.decompress(codec, stored, size)
        rest_text = part.rest(rest) if type(rest) is int else rest
        if row_checksum(data, subset, rest_text) != digest:
            raise CorruptDocumentError("text, subset or meta does not match the row's checksum")
        if rest_text is None:
            return Document(gidx, decode_text(data), {"pile_set_name": subset}, subset)
        try:
            record = load_json(rest_text)
        except (ValueError, TypeError) as err:
            raise CorruptDocumentError(f"stored meta is not valid JSON ({err})") from err
        if not isinstance(record, dict):
            raise CorruptDocumentError("stored meta is not a JSON object")
        meta = record.pop("meta", None)
        return Document(gidx, decode_text(data), meta, subset, record or None)

    def iter_partition(self, p: int, start: int = 0) -> Iterator[Document]:
        """Documents of partition p from row `start`, in order, with one sequential scan."""
        part = self._partition(p)
        decompressor = Decompressor(part.dictionaries)  # this generator's own: it may run beside other reads
        scan = partition.connect_reader(self.path / self.manifest["partitions"][p]["file"], mmap=False)
        try:
            yield from self._scan(p, part, scan, decompressor, start)
        finally:
            scan.close()

    def _scan(
        self, p: int, part: _Partition, scan: apsw.Connection, decompressor: Decompressor, start: int
    ) -> Iterator[Document]:
        expected = start
        rows = partition.iter_rows(scan, start)
        while True:
            try:
                item = next(rows, None)
            except apsw.Error as err:
                raise CorruptDocumentError(
                    f"{self._where(p, expected)}: unreadable ({err}); run `pilestore verify`"
                ) from err
            if item is None:
                break
            row, *fields, stored = item
            if row != expected:
                raise CorruptDocumentError(f"{self._where(p, expected)}: row missing from the partition")
            try:
                yield self._document(self._starts[p] + row, part, decompressor, *fields, stored)
            except CorruptDocumentError as err:
                raise CorruptDocumentError(f"{self._where(p, row)}: {err}; run `pilestore verify`") from err
            expected += 1
        if expected != self.manifest["partitions"][p]["documents"]:
            raise CorruptDocumentError(f"{self._where(p, expected)}: partition ends early")

    def __iter__(self) -> Iterator[Document]:
        for p in range(self.num_partitions):
            yield from self.iter_partition(p)

    def index(self, p: int) -> PartitionIndex:
        """The memory-mapped Arrow index of partition p (imports pyarrow on first use)."""
        from .index import open_index

        self._check_process()
        found = self._indexes.get(p)
        if found is None:
            entry = self.manifest["partitions"][p]
            found = self._indexes[p] = open_index(self.path / entry["index"], entry["documents"])
        return found

    def partition_start(self, p: int) -> int:
        """Global index of partition p's first document."""
        return self._starts[p]

    def close(self) -> None:
        for part in self._open.values():
            part.conn.close()
        self._open = {}
        self._indexes = {}

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: str | os.PathLike[str]) -> Store:  # noqa: A001 - `pilestore.open` is the public name
    """Open a complete store read-only; IncompleteStoreError / StoreNotFoundError say what to do otherwise."""
    return Store(path)
