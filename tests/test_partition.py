"""The partition file's frame stream: every document's stored bytes back exactly, pages full whatever the
documents' sizes, and damaged rows or chunks named instead of read as something else."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pilestore
from pilestore import partition
from pilestore.errors import CorruptDocumentError, StoreFormatError
from pilestore.partition import CHUNK_BYTES
from pilestore.verify import verify

C = CHUNK_BYTES
# stored lengths around the chunk size's edges: empty, one byte, exactly one or two chunks, one more or less
EDGE_LENGTHS = st.sampled_from([0, 1, C - 1, C, C + 1, 2 * C, 2 * C + 1, 3 * C - 1])
LENGTHS = st.lists(st.one_of(EDGE_LENGTHS, st.integers(0, 3 * C)), max_size=40)


def _write(path: Path, stored: list[bytes], batch_ends: list[int]) -> None:
    conn = partition.connect_writer(path)
    writer = partition.DocumentWriter(conn)
    begin = 0
    for end in [*sorted(min(e, len(stored)) for e in batch_ends), len(stored)]:  # batches, some empty
        writer.write([(i, 0, 0, len(stored[i]), 0, None, stored[i]) for i in range(begin, end)])
        begin = end
    writer.close()
    partition.finish(conn, path)


@settings(max_examples=60, deadline=None)
@given(lengths=LENGTHS, cuts=st.lists(st.integers(0, 40), max_size=4), starts=st.lists(st.integers(0, 45), max_size=3))
def test_the_frame_stream_gives_back_every_documents_bytes(
    tmp_path_factory: pytest.TempPathFactory, lengths: list[int], cuts: list[int], starts: list[int]
) -> None:
    rng = random.Random(len(lengths))
    stored = [rng.randbytes(n) for n in lengths]
    path = tmp_path_factory.mktemp("stream") / "p.sqlite"
    _write(path, stored, cuts)
    conn = partition.connect_reader(path)
    end = partition.stream_bytes(conn)
    assert end == sum(lengths)
    reader = partition.RowReader(conn, end)
    for i in rng.sample(range(len(stored)), len(stored)):  # random order
        assert reader.read(i) == (0, 0, lengths[i], 0, None, stored[i])
    assert reader.read(len(stored)) is None
    for start in [0, *starts]:
        got = [(row[0], row[-1]) for row in partition.iter_rows(conn, start)]
        assert got == list(enumerate(stored))[start:]
    chunk_sizes = [n for (n,) in conn.execute("SELECT length(data) FROM chunks ORDER BY id")]
    assert all(n == C for n in chunk_sizes[:-1]) and 0 < (chunk_sizes or [1])[-1] <= C


def test_chunks_fill_their_pages(sample_store_dir: Path) -> None:
    """What the chunk size is for: each chunk fills one leaf cell and OVERFLOW_PAGES overflow pages exactly, so
    pages are ~99.85% payload (the sample corpus's blob-per-document rows left 17% of their leaf pages empty;
    one-page chunks, format 3, 99.0%)."""
    conn = partition.connect_reader(sample_store_dir / "partitions" / "00000.sqlite")
    pages = {
        (name, kind): (count, payload, unused)
        for name, kind, count, payload, unused in conn.execute(
            "SELECT name, pagetype, count(*), sum(payload), sum(unused) FROM dbstat GROUP BY name, pagetype"
        )
    }
    assert ("documents", "overflow") not in pages
    end = partition.stream_bytes(conn)
    chunks = -(-end // C)
    leaves, leaf_payload, leaf_unused = pages[("chunks", "leaf")]
    overflows, overflow_payload, overflow_unused = pages[("chunks", "overflow")]
    assert leaves == chunks  # one chunk per leaf page
    full_chunks = chunks - 1
    assert overflows >= full_chunks * partition.OVERFLOW_PAGES
    assert leaf_unused + overflow_unused < 8 * partition.PAGE_SIZE  # only the last, shorter chunk leaves room
    assert (leaf_payload + overflow_payload) / ((leaves + overflows) * partition.PAGE_SIZE) > 0.998
    stored = sum(p["stored_bytes"] for p in pilestore.open(sample_store_dir).manifest["partitions"])
    assert end == stored


@pytest.fixture
def damaged(sample_store_dir: Path, tmp_path: Path) -> tuple[Path, apsw.Connection]:
    store = Path(shutil.copytree(sample_store_dir, tmp_path / "damaged.store"))
    return store, apsw.Connection(str(store / "partitions" / "00000.sqlite"))


def _bytes_range(conn: apsw.Connection, idx: int) -> tuple[int, int]:
    return conn.execute("SELECT start, length FROM documents WHERE id = ?", (idx,)).fetchone()


def test_a_row_pointing_outside_the_stream_is_named(damaged: tuple[Path, apsw.Connection]) -> None:
    store_dir, conn = damaged
    end = partition.stream_bytes(conn)
    conn.execute("UPDATE documents SET start = ? WHERE id = 100", (end - 1,))
    conn.execute("UPDATE documents SET length = 1 << 40 WHERE id = 200")
    conn.close()
    store = pilestore.open(store_dir)
    for idx in (100, 200):
        with pytest.raises(CorruptDocumentError, match=f"document {idx} .*outside the frame stream"):
            store[idx]
    assert store[101].idx == 101
    report = verify(store)
    assert report.corrupt_documents == [100, 200]


def test_a_missing_chunk_fails_exactly_the_documents_that_use_it(damaged: tuple[Path, apsw.Connection]) -> None:
    store_dir, conn = damaged
    start, length = _bytes_range(conn, 3000)
    lost = start // C + 1 if length > C else start // C
    using = [
        i
        for i, (s, n) in enumerate(conn.execute("SELECT start, length FROM documents ORDER BY id"))
        if n and s // C <= lost <= (s + n - 1) // C
    ]
    assert 3000 in using
    conn.execute("DELETE FROM chunks WHERE id = ?", (lost,))
    conn.close()
    store = pilestore.open(store_dir)
    for idx in using:
        with pytest.raises(CorruptDocumentError, match=f"document {idx} .*chunk {lost} of the frame stream"):
            store[idx]
    for idx in (using[0] - 1, using[-1] + 1):
        assert store[idx].idx == idx
    report = verify(store)
    assert report.corrupt_documents == using
    assert report.documents_checked == len(store)  # the scan went on past them
    with pytest.raises(CorruptDocumentError, match=f"document {using[0]} .*chunk {lost} of the frame stream"):
        list(store.iter_partition(0))


def test_dictionaries_are_stored_compressed_and_a_damaged_one_is_named(
    damaged: tuple[Path, apsw.Connection],
) -> None:
    store_dir, conn = damaged
    trained = dict(pilestore.open(store_dir).manifest["partitions"][0]["dictionaries"])
    packed = {i: data for i, data in conn.execute("SELECT id, data FROM dictionaries") if data is not None}
    unpacked = dict(partition.read_dictionaries(conn))
    assert packed and all(len(packed[i]) < len(unpacked[i]) / 2 for i in packed)  # text samples shrink 2-3x
    assert sorted(len(d) for d in unpacked.values() if d) == sorted(n for n in trained.values() if n)
    victim = min(packed)
    data = bytearray(packed[victim])
    data[len(data) // 2] ^= 0xFF
    conn.execute("UPDATE dictionaries SET data = ? WHERE id = ?", (bytes(data), victim))
    conn.close()
    with pytest.raises(StoreFormatError, match=f"00000.sqlite: .*zstd dictionary {victim} is damaged"):
        pilestore.open(store_dir)[0]
