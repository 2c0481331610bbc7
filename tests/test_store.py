from __future__ import annotations

import json
import multiprocessing
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

import pilestore
from pilestore.errors import IncompleteStoreError, StoreFormatError, StoreNotFoundError
from pilestore.manifest import FORMAT_VERSION


def test_open_refuses_missing_and_non_store_directories(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="pilestore ingest"):
        pilestore.open(tmp_path / "nothing")
    with pytest.raises(StoreNotFoundError, match="no manifest.json"):
        pilestore.open(tmp_path)


def test_open_refuses_an_incomplete_store_and_says_how_to_finish(tmp_path: Path) -> None:
    (tmp_path / "s" / ".staging").mkdir(parents=True)
    with pytest.raises(IncompleteStoreError, match="Re-run the same `pilestore ingest"):
        pilestore.open(tmp_path / "s")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "corrupt manifest"),
        (json.dumps({"format": "pilestore", "format_version": 99}).encode(), "format version 99"),
        (
            json.dumps({"format": "pilestore", "format_version": FORMAT_VERSION - 1}).encode(),
            "older pilestore.*ingest the sources again",
        ),
        (json.dumps({"format": "other"}).encode(), "not a pilestore manifest"),
        (
            json.dumps(
                {
                    "format": "pilestore",
                    "format_version": FORMAT_VERSION,
                    "documents": 5,
                    "subsets": [],
                    "partitions": [],
                }
            ).encode(),
            "inconsistent manifest",
        ),
    ],
)
def test_open_refuses_bad_manifests(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(StoreFormatError, match=message):
        pilestore.open(tmp_path)


def test_a_partition_of_an_older_format_is_refused_with_what_to_do(sample_store_dir: Path, tmp_path: Path) -> None:
    import shutil

    import apsw

    shutil.copytree(sample_store_dir, tmp_path / "s.store")
    part = next((tmp_path / "s.store" / "partitions").glob("*.sqlite"))
    conn = apsw.Connection(str(part))
    conn.execute("PRAGMA user_version = 3")  # what pilestore wrote before chunks of 16 pages
    conn.close()
    with pytest.raises(
        StoreFormatError,
        match=rf"{part.name}: partition format 3, written by an older pilestore.*ingest the source again",
    ):
        pilestore.open(tmp_path / "s.store")[0]


def test_indexing_matches_the_source_lines(sample_store_dir: Path, sample_records: list[dict]) -> None:
    store = pilestore.open(sample_store_dir)
    assert len(store) == len(sample_records) == 5993
    rng = random.Random(0)
    for i in [0, 1, 5992, *rng.sample(range(5993), 200)]:
        document = store[i]
        assert document.idx == i
        assert document.text == sample_records[i]["text"]
        assert document.meta == sample_records[i]["meta"]
        assert document.subset == sample_records[i]["meta"]["pile_set_name"]
    assert store[-1].idx == 5992 and len(store[-1].text) == len(sample_records[-1]["text"])
    assert store[np.int64(3)].idx == 3


@pytest.mark.parametrize("bad", [5993, -5994, 10**12])
def test_out_of_range_raises_index_error(sample_store_dir: Path, bad: int) -> None:
    with pytest.raises(IndexError, match="out of range"):
        pilestore.open(sample_store_dir)[bad]


def test_non_integer_index_is_a_type_error(sample_store_dir: Path) -> None:
    with pytest.raises(TypeError):
        pilestore.open(sample_store_dir)[1.5]  # type: ignore[index]


def test_iteration_equals_indexing(sample_store_dir: Path) -> None:
    store = pilestore.open(sample_store_dir)
    docs = list(store)
    assert [d.idx for d in docs] == list(range(len(store)))
    for i in random.Random(1).sample(range(len(store)), 50):
        assert docs[i] == store[i]


def test_index_columns_are_memory_mapped_views(sample_store_dir: Path, sample_records: list[dict]) -> None:
    store = pilestore.open(sample_store_dir)
    index = store.index(0)
    assert len(index) == len(store)
    assert not index.text_bytes.flags.owndata and not index.text_bytes.flags.writeable
    expected = [len(r["text"].encode("utf-8", "surrogatepass")) for r in sample_records]
    assert index.text_bytes.tolist() == expected


def test_a_pickled_store_reopens_lazily(sample_store_dir: Path) -> None:
    store = pilestore.open(sample_store_dir)
    _ = store[10]
    clone = pickle.loads(pickle.dumps(store))
    assert clone[10] == store[10]


def _read(store: pilestore.Store, indices: list[int]) -> list[tuple[int, str]]:
    return [(store[i].idx, store[i].text[:50]) for i in indices]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_store_works_in_worker_processes(sample_store_dir: Path, method: str) -> None:
    store = pilestore.open(sample_store_dir)
    _ = store[0]  # the parent has open connections: forked children must not reuse them
    chunks = [list(range(k, 5993, 397)) for k in range(4)]
    with multiprocessing.get_context(method).Pool(4) as pool:
        got = pool.starmap(_read, [(store, c) for c in chunks])
    assert got == [_read(store, c) for c in chunks]


class DocumentTexts:
    """A map-style dataset over some documents of a store (module level: spawn pickles it)."""

    def __init__(self, store: pilestore.Store, indices: list[int]) -> None:
        self.store, self.indices = store, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, str]:
        document = self.store[self.indices[i]]
        return document.idx, document.text


def as_list(batch: list) -> list:
    return batch


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_store_in_four_dataloader_workers(sample_store_dir: Path, sample_records: list[dict], method: str) -> None:
    from torch.utils.data import DataLoader  # the torch extra is part of the test setup

    store = pilestore.open(sample_store_dir)
    _ = store[0]
    indices = random.Random(2).sample(range(len(store)), 400)
    loader = DataLoader(
        DocumentTexts(store, indices),
        batch_size=16,
        num_workers=4,  # type: ignore[arg-type]
        multiprocessing_context=method,
        collate_fn=as_list,
    )
    seen = [item for batch in loader for item in batch]
    assert seen == [(i, sample_records[i]["text"]) for i in indices]


def test_threads_sharing_a_store_read_correctly(sample_store_dir: Path, sample_records: list[dict]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = pilestore.open(sample_store_dir)
    indices = random.Random(5).sample(range(len(store)), 2000)
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda i: store[i].text, indices))
    assert texts == [sample_records[i]["text"] for i in indices]
