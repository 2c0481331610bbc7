"""One SQLite partition per ingested source: the on-disk layout of the documents themselves.

    properties(key, value)            format version, source name, settings (JSON values)
    subsets(id, name)                 subset names, interned per partition
    dictionaries(id, subset, data)    zstd dictionaries, each stored as a zstd frame (level 19: 2.5x smaller);
                                      data NULL = zstd without dictionary
    rests(id, json)                   interned `rest` values that repeat (e.g. {"meta": {..., "lang": "ko"}})
    documents(id, subset, codec, size, checksum, rest, start, length)
        id        0-based position in the source (row id = local index, so no look-up table is needed)
        size      UTF-8 bytes of the text; checksum: xxh3_64 of the text, then its subset name and stored rest
                  JSON (document.row_checksum), as a signed int64
        rest      the line's JSON object without `text`: NULL when it is exactly {"meta": {"pile_set_name": S}},
                  an INTEGER id into `rests` when interned, else the JSON TEXT itself
        start, length   where the document's stored bytes (zstd frame or raw text) lie in the frame stream
    chunks(id, data)                  the frame stream: every document's stored bytes one after another, cut
                                      into CHUNK_BYTES pieces (the last one shorter)

Why a stream in chunks rather than a blob per document: SQLite keeps the first 0.5-4 KB of a blob row in a
leaf page and cannot fill a page whose free space is smaller than the next row's part, so leaf pages ended 17%
(sample corpus) to 20% (short synthetic documents) empty: 5-9% of the file. A chunk is sized to fill its pages
exactly: one full leaf cell and 15 full overflow pages (see CHUNK_BYTES), so pages are 99.85% payload whatever
the documents' sizes (format 3 had one-page chunks: 99.0%, 123 KB more on the sample corpus).

Writers own a private file (journal off: a crashed write is discarded and redone, never repaired).
Readers open it read-only and immutable: no locks, no journal, no -wal/-shm files, fine on read-only
and network file systems. Both go through `connect_*`, one small function per setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import apsw
import zstandard

from .atomic import fsync_path
from .codec import MAX_DICT_SIZE
from .errors import CorruptDocumentError, StoreFormatError

APPLICATION_ID = 0x50494C45  # "PILE" in `PRAGMA application_id`: tells our files from other SQLite files
SCHEMA_VERSION = 4
"""2: the checksum covers text, subset and meta; 3: stored bytes in a chunked frame stream; 4: chunks of 16
pages, magicless frames, small documents at their own level."""
PAGE_SIZE = 4096
OVERFLOW_PAGES = 15
CHUNK_BYTES = (PAGE_SIZE - 35) - 5 + OVERFLOW_PAGES * (PAGE_SIZE - 4)
"""Bytes per chunk row (65,436): the record (a 5-byte header: header size, NULL for the row id, the blob's
type as a 3-byte varint; then the data) fills a leaf cell's largest local part (page size - 35 bytes) and
OVERFLOW_PAGES overflow pages of page size - 4 bytes each. SQLite keeps exactly that much in the leaf when
the record's size minus its smallest local part (489 bytes) leaves that remainder modulo page size - 4 (a
test checks with `dbstat` that chunk pages are full)."""
DICTIONARY_LEVEL = 15  # dictionaries are compressed once per partition: 19 took 90-225 ms of a source's ingest CPU
# (3-10 dictionaries) for 0.7-1.1% fewer of their bytes (755 B of the sample store), 15 takes 30-100 ms
READ_MMAP_BYTES = 1 << 40  # readers map the file: a look-up is a page-table walk, not a read() call

SCHEMA = """
CREATE TABLE properties(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE subsets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE dictionaries(id INTEGER PRIMARY KEY, subset TEXT, data BLOB);
CREATE TABLE rests(id INTEGER PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE documents(
    id INTEGER PRIMARY KEY,
    subset INTEGER NOT NULL,
    codec INTEGER NOT NULL,
    size INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    rest,  -- no declared type: holds NULL, an INTEGER id or TEXT, each kept as it is
    start INTEGER NOT NULL,
    length INTEGER NOT NULL
);
CREATE TABLE chunks(id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""

Row = tuple[int, int, int, int, str | int | None, bytes]  # subset, codec, size, checksum, rest, stored bytes


def _set_page_size(conn: apsw.Connection) -> None:
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before the first table exists


def _no_journal(conn: apsw.Connection) -> None:
    # A staging file that crashes is deleted and rebuilt, so neither a journal nor fsync per commit buys anything.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")


def _exclusive(conn: apsw.Connection) -> None:
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # one writer per partition, never shared


def _write_cache(conn: apsw.Connection) -> None:
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB of pages


def _mark(conn: apsw.Connection) -> None:
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def connect_writer(path: Path) -> apsw.Connection:
    """A new partition file at `path` (which must not exist), schema created."""
    if path.exists():
        raise FileExistsError(f"{path} exists; partitions are written once into a fresh file")
    conn = apsw.Connection(str(path))
    _set_page_size(conn)
    _no_journal(conn)
    _exclusive(conn)
    _write_cache(conn)
    _mark(conn)
    with conn:
        conn.execute(SCHEMA)
    return conn


def _read_mmap(conn: apsw.Connection) -> None:
    conn.execute(f"PRAGMA mmap_size = {READ_MMAP_BYTES}")


def connect_reader(path: Path, mmap: bool = True) -> apsw.Connection:
    """Read-only, immutable connection: no locks or journal files; raises StoreFormatError if not a partition.

    mmap=False for one sequential scan: pages are read into SQLite's small cache instead of staying mapped, so
    scanning a partition of many GB does not grow the process's resident memory to the file's size."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
    try:
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        if mmap:
            _read_mmap(conn)
        app_id, version = _check_header(conn)
    except apsw.Error as err:
        raise StoreFormatError(f"{path}: not a readable pilestore partition ({err}); run `pilestore verify`") from err
    if app_id == APPLICATION_ID and version < SCHEMA_VERSION:
        raise StoreFormatError(
            f"{path}: partition format {version}, written by an older pilestore (this one reads {SCHEMA_VERSION}); "
            "ingest the source again"
        )
    if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
        raise StoreFormatError(
            f"{path}: not a pilestore v{SCHEMA_VERSION} partition (application_id {app_id:#x}, user_version {version})"
        )
    return conn


def _check_header(conn: apsw.Connection) -> tuple[int, int]:
    app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    return app_id, version


def write_properties(conn: apsw.Connection, properties: dict[str, str]) -> None:
    with conn:
        conn.executemany("INSERT OR REPLACE INTO properties VALUES (?, ?)", sorted(properties.items()))


def write_subsets(conn: apsw.Connection, names: list[str]) -> None:
    """Subset i of this partition is names[i]."""
    with conn:
        conn.executemany("INSERT INTO subsets VALUES (?, ?)", enumerate(names))


def write_dictionaries(conn: apsw.Connection, rows: list[tuple[int, str | None, bytes | None]]) -> None:
    """(id, subset, dictionary or None) rows; each dictionary is stored compressed (its text samples shrink
    2.5x: 0.21 MB of the sample corpus's 12.8 MB store)."""
    packer = zstandard.ZstdCompressor(level=DICTIONARY_LEVEL)
    with conn:
        conn.executemany(
            "INSERT INTO dictionaries VALUES (?, ?, ?)",
            [(i, subset, None if data is None else packer.compress(data)) for i, subset, data in rows],
        )


def write_rests(conn: apsw.Connection, rows: list[tuple[int, str]]) -> None:
    with conn:
        conn.executemany("INSERT INTO rests VALUES (?, ?)", rows)


def read_rest(conn: apsw.Connection, rest_id: int) -> str | None:
    for (value,) in conn.execute("SELECT json FROM rests WHERE id = ?", (rest_id,)):
        return value
    return None


class DocumentWriter:
    """Appends documents to a new partition: their rows, and their stored bytes to the chunked frame stream.

    Call `write` with batches in row order, then `close` (which writes the last, shorter chunk)."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.stream_end = 0  # bytes of stored data written so far, the tail included
        self._tail = bytearray()
        self._next_chunk = 0

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction of (id, subset, codec, size, checksum, rest, stored) rows."""
        doc_rows = []
        for *fields, stored in rows:
            doc_rows.append((*fields, self.stream_end, len(stored)))
            self.stream_end += len(stored)
            self._tail += stored
        cut = len(self._tail) - len(self._tail) % CHUNK_BYTES
        with memoryview(self._tail) as tail:  # released before the tail is cut
            chunks = [
                (self._next_chunk + i, bytes(tail[at : at + CHUNK_BYTES]))
                for i, at in enumerate(range(0, cut, CHUNK_BYTES))
            ]
        del self._tail[:cut]
        self._next_chunk += len(chunks)
        with self.conn:
            self.conn.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?)", doc_rows)
            self.conn.executemany("INSERT INTO chunks VALUES (?, ?)", chunks)

    def close(self) -> None:
        """Write the stream's last chunk (if any bytes are left over)."""
        if self._tail:
            with self.conn:
                self.conn.execute("INSERT INTO chunks VALUES (?, ?)", (self._next_chunk, bytes(self._tail)))
            self._next_chunk += 1
            self._tail.clear()


def finish(conn: apsw.Connection, path: Path) -> None:
    """Close the writer and flush the file to disk (it is renamed into the store next)."""
    conn.close()
    fsync_path(path)


def read_subsets(conn: apsw.Connection) -> list[str]:
    return [name for _, name in conn.execute("SELECT id, name FROM subsets ORDER BY id")]


def read_dictionaries(conn: apsw.Connection) -> list[tuple[int, bytes | None]]:
    """(id, dictionary or None) of every dictionary; StoreFormatError if one is damaged."""
    unpacker = zstandard.ZstdDecompressor()
    found = []
    for i, packed in conn.execute("SELECT id, data FROM dictionaries ORDER BY id"):
        if packed is None:
            found.append((i, None))
            continue
        try:
            # checked first: a damaged header must not make it allocate more than any dictionary can be
            if type(packed) is not bytes or not 0 < zstandard.frame_content_size(packed) <= MAX_DICT_SIZE:
                raise zstandard.ZstdError("not a frame of a dictionary's size")
            found.append((i, unpacker.decompress(packed)))
        except zstandard.ZstdError as err:
            raise StoreFormatError(f"zstd dictionary {i} is damaged ({err}); run `pilestore verify`") from err
    return found


def stream_bytes(conn: apsw.Connection) -> int:
    """Length of the frame stream, from its last chunk (0 if the partition stores no bytes)."""
    for last_id, last_len in conn.execute("SELECT id, length(data) FROM chunks ORDER BY id DESC LIMIT 1"):
        if type(last_id) is not int or type(last_len) is not int:
            raise StoreFormatError(f"the frame stream's last chunk is damaged (id {last_id!r}, {last_len!r} bytes)")
        return last_id * CHUNK_BYTES + last_len
    return 0


READ_ROW_SQL = "SELECT subset, codec, size, checksum, rest, start, length FROM documents WHERE id = ?"


class RowReader:
    """Reads documents' rows and stored bytes by row id, for one thread (apsw cursors and blob handles must not
    be shared between threads). The bytes are read from their chunks through one incremental-blob handle moved
    from chunk to chunk (sqlite3_blob_reopen), straight into the result: a SELECT of the chunks instead costs
    2.5 us more per document (two statements, and copies of whole chunks)."""

    def __init__(self, conn: apsw.Connection, stream_end: int) -> None:
        self.conn = conn
        self.stream_end = stream_end  # stream_bytes(conn): bounds where a row may point
        self.cursor = conn.cursor()  # reused: a new cursor per look-up doubles its cost
        self._blob: apsw.Blob | None = None
        self._at = 0

    def read(self, row_id: int) -> Row | None:
        """(subset, codec, size, checksum, rest, stored bytes) of one document, or None if its row is missing;
        CorruptDocumentError if its bytes are missing or its row points outside the stream."""
        found = self.cursor.execute(READ_ROW_SQL, (row_id,)).fetchone()
        if found is None:
            return None
        *fields, start, length = found
        return (*fields, self.stored_bytes(start, length, fields[2]))  # type: ignore[return-value]

    def stored_bytes(self, start: Any, length: Any, size: Any) -> bytes:
        """The `length` stored bytes from `start` of the frame stream, for a row of `size` bytes of text;
        CorruptDocumentError if the row's range lies outside the stream or a chunk is missing or short."""
        _check_range(start, length, size, self.stream_end)
        if length == 0:
            return b""
        chunk, at = divmod(start, CHUNK_BYTES)
        try:
            if at + length <= CHUNK_BYTES:  # inside one chunk, as most documents are: one copy
                blob = self._chunk(chunk)
                blob.seek(at)
                stored = blob.read(length)
            else:
                stored = self._gather(chunk, at, length)
        except apsw.Error as err:  # a missing row or a damaged page; the handle is unusable after an error
            if self._blob is not None:
                self._blob.close()
                self._blob = None
            raise CorruptDocumentError(f"chunk {self._at} of the frame stream is missing or damaged ({err})") from err
        if len(stored) != length:
            raise CorruptDocumentError(f"the frame stream's chunks from {chunk} on are too short")
        return stored

    def _chunk(self, chunk: int) -> apsw.Blob:
        """The blob handle, moved to chunk `chunk`."""
        self._at = chunk  # for the error message if this fails
        if self._blob is None:
            self._blob = self.conn.blob_open("main", "chunks", "data", chunk, False)
        else:
            self._blob.reopen(chunk)
        return self._blob

    def _gather(self, chunk: int, at: int, length: int) -> bytes:
        """`length` bytes from byte `at` of chunk `chunk` on, read into one buffer chunk by chunk (fewer if a
        chunk is short)."""
        out = bytearray(length)
        done = 0
        while done < length:
            blob = self._chunk(chunk)
            n = min(length - done, CHUNK_BYTES - at, blob.length() - at)
            if n <= 0:
                return bytes(out[:done])
            blob.seek(at)
            blob.read_into(out, done, n)
            done += n
            chunk += 1
            at = 0
        return bytes(out)


def _check_range(start: Any, length: Any, size: Any, stream_end: int) -> None:
    """A damaged row must not make a reader gather gigabytes: its bytes lie inside the stream, and stored
    bytes are never more than the text (a frame that does not shrink the text is stored raw)."""
    if type(start) is not int or type(length) is not int or type(size) is not int:
        raise CorruptDocumentError("row fields have the wrong types")
    if not (0 <= start and 0 <= length <= size and start + length <= stream_end):
        raise CorruptDocumentError(
            f"stored bytes {start}..{start + length} (for {size} bytes of text) lie outside the frame stream's "
            f"{stream_end} bytes"
        )


def iter_rows(
    conn: apsw.Connection, start: int = 0
) -> Iterator[tuple[int, int, int, int, int, str | int | None, bytes | CorruptDocumentError]]:
    """(id, subset, codec, size, checksum, rest, stored) of every document from `start`, in order. A document
    whose bytes cannot be read comes with the CorruptDocumentError in place of its bytes, so a checker can go
    on to the next one."""
    reader = RowReader(conn, stream_bytes(conn))
    for row_id, *fields, begin, length in conn.execute(
        "SELECT id, subset, codec, size, checksum, rest, start, length FROM documents WHERE id >= ? ORDER BY id",
        (start,),
    ):
        try:
            stored: bytes | CorruptDocumentError = reader.stored_bytes(begin, length, fields[2])
        except CorruptDocumentError as err:
            stored = err
        yield (row_id, *fields, stored)  # type: ignore[misc]
