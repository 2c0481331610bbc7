from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pilestore
from pilestore.build import BUFFER_BYTES_PER_DOC, take_sample
from pilestore.codec import CompressionSettings
from pilestore.errors import IncompleteStoreError, SourceError, StoreLockedError
from pilestore.export import export
from pilestore.ingest import ingest
from pilestore.manifest import writer_lock
from pilestore.shards import Record, file_sha256

from .conftest import SAMPLE_MANIFEST, ShardMaker, doc, read_source_lines


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_source_lines(path)]


def test_export_gives_back_every_source_line_in_order(
    sample_store_dir: Path, sample_records: list[dict], tmp_path: Path
) -> None:
    out = tmp_path / "back.jsonl.zst"
    assert export(pilestore.open(sample_store_dir), out) == len(sample_records)
    assert _records(out) == sample_records  # text (quirks included) and meta, compared as JSON values


def test_every_quirk_line_reads_back_exactly(sample_store_dir: Path, sample_records: list[dict]) -> None:
    store = pilestore.open(sample_store_dir)
    quirks = json.loads(SAMPLE_MANIFEST.read_text())["quirk_lines"]
    lines = [q["line"] for q in quirks] if isinstance(quirks, list) else [int(k) for k in quirks]
    assert len(lines) >= 20
    for line in lines:
        document = store[line - 1]
        assert document.to_record() == sample_records[line - 1], f"line {line}"


def test_subset_counts_match_the_corpus_manifest(sample_store_dir: Path) -> None:
    expected = json.loads(SAMPLE_MANIFEST.read_text())["per_subset"]
    store = pilestore.open(sample_store_dir)
    assert store.subsets == {name: v["docs"] for name, v in expected.items()}
    part = store.manifest["partitions"][0]
    assert part["text_bytes"] == sum(v["text_utf8_bytes"] for v in expected.values())


def test_store_is_smaller_than_its_source(sample_store_dir: Path, sample_path: Path) -> None:
    """0.978x with the defaults, level 5 under 16 KiB and 3 above (MosaicML MDS's shards: 0.982x); level 3 for
    every document 0.992x; format v3's one-page chunks and frames with their magic number: 1.004x; with a shared
    dictionary trained on every subset's samples 1.017x; format v2's blob per document 1.085x."""
    size = sum(p.stat().st_size for p in sample_store_dir.rglob("*") if p.is_file())
    assert size <= 0.981 * sample_path.stat().st_size


def test_bad_lines_are_skipped_counted_and_located(make_shard: ShardMaker, tmp_path: Path) -> None:
    lines = [
        doc("one"),
        b"{not json",
        doc("two"),
        b'{"meta": {}}',
        b'{"text": 1}',
        b'{"text": "x", "meta": []}',
        b'{"text": "caf\xe9"}',
        b"",
        doc(""),
        doc("last"),
    ]
    shard = make_shard(lines)
    report = ingest([shard], tmp_path / "s.store").as_dict()
    assert report["documents"] == 4
    assert report["skipped"] == {
        "not_json": 1,
        "missing_text": 1,
        "text_not_string": 1,
        "meta_not_object": 1,
        "invalid_utf8": 1,
        "blank_line": 1,
    }
    assert (
        report["skipped_examples"][0] == f"{shard}:2: not JSON: Expecting property name enclosed in double "
        "quotes at column 2"
    )
    assert len(report["skipped_examples"]) == 5
    store = pilestore.open(tmp_path / "s.store")
    assert [d.text for d in store] == ["one", "two", "", "last"]  # empty text is a document


def test_a_source_of_only_empty_texts_is_ingested(make_shard: ShardMaker, tmp_path: Path) -> None:
    """Empty text is a document, also when every document of a source (or of one subset's dictionary in a
    compression batch) is empty: zstd refuses to compress a batch of only empty inputs, and ingest failed
    with its traceback."""
    records = [doc("", "Github"), doc("", "Github", lang="c"), doc("", "Pile-CC")]
    shard = make_shard(records)
    assert ingest([shard], tmp_path / "s.store").as_dict()["documents"] == 3
    store = pilestore.open(tmp_path / "s.store")
    assert [d.to_record() for d in store] == records


def test_strict_fails_on_the_first_bad_line_and_commits_nothing(make_shard: ShardMaker, tmp_path: Path) -> None:
    shard = make_shard([doc("one"), b'{"text": 1}'])
    with pytest.raises(SourceError, match=rf"{shard}:2: 'text' is a JSON number"):
        ingest([shard], tmp_path / "s.store", strict=True)
    with pytest.raises(IncompleteStoreError, match="Re-run the same `pilestore ingest"):
        pilestore.open(tmp_path / "s.store")


def test_a_bad_source_leaves_an_existing_store_unchanged(make_shard: ShardMaker, tmp_path: Path) -> None:
    store_dir = tmp_path / "s.store"
    ingest([make_shard([doc("a"), doc("b")], name="good.jsonl.zst")], store_dir)
    before = (store_dir / "manifest.json").read_bytes()
    truncated = tmp_path / "cut.jsonl.zst"
    data = make_shard([doc(f"document {i} " * 30) for i in range(3000)], name="big.jsonl.zst").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated"):
        ingest([truncated], store_dir)
    with pytest.raises(SourceError, match="no such file"):
        ingest([tmp_path / "missing.jsonl.zst"], store_dir)
    assert (store_dir / "manifest.json").read_bytes() == before
    assert [d.text for d in pilestore.open(store_dir)] == ["a", "b"]


def test_adding_a_source_keeps_old_readers_working(make_shard: ShardMaker, tmp_path: Path) -> None:
    store_dir = tmp_path / "s.store"
    ingest([make_shard([doc("a"), doc("b")], name="one.jsonl")], store_dir)
    old = pilestore.open(store_dir)
    report = ingest([make_shard([doc("c", "Github")], name="two.jsonl", compress=False)], store_dir)
    assert [p["id"] for p in report.partitions] == [1]
    new = pilestore.open(store_dir)
    assert [d.text for d in old] == ["a", "b"] and len(old) == 2
    assert [(d.idx, d.text, d.subset) for d in new] == [(0, "a", "Pile-CC"), (1, "b", "Pile-CC"), (2, "c", "Github")]
    assert new.subsets == {"Github": 1, "Pile-CC": 2}


def test_ingesting_the_same_source_twice_is_a_no_op(make_shard: ShardMaker, tmp_path: Path) -> None:
    shard = make_shard([doc("a")])
    ingest([shard], tmp_path / "s.store")
    report = ingest([shard, shard], tmp_path / "s.store")
    assert report.already_in_store == [shard.name] and not report.partitions
    assert len(pilestore.open(tmp_path / "s.store")) == 1


def test_two_workers_give_the_same_store_as_one(make_shard: ShardMaker, tmp_path: Path) -> None:
    shards = [
        make_shard([doc(f"{n} doc {i} " * 20, subset=n) for i in range(300)], name=f"{n}.jsonl.zst")
        for n in ("a", "b", "c")
    ]
    seen: list[int] = []
    ingest(shards, tmp_path / "one.store", workers=1)
    ingest(shards, tmp_path / "two.store", workers=2, on_progress=lambda b, d: seen.append(d))
    one, two = pilestore.open(tmp_path / "one.store"), pilestore.open(tmp_path / "two.store")
    assert [d.to_record() for d in one] == [d.to_record() for d in two]
    assert [p["source"]["name"] for p in two.manifest["partitions"]] == ["a.jsonl.zst", "b.jsonl.zst", "c.jsonl.zst"]
    assert sum(seen) == 900  # progress from worker processes reaches the caller


def test_a_second_writer_is_refused(tmp_path: Path, make_shard: ShardMaker) -> None:
    with writer_lock(tmp_path / "s.store"):
        with pytest.raises(StoreLockedError, match="another pilestore command is writing"):
            ingest([make_shard([doc("a")])], tmp_path / "s.store")


def test_settings_are_recorded_in_the_manifest(make_shard: ShardMaker, tmp_path: Path) -> None:
    settings = CompressionSettings(level=7, small_level=9, small_bytes=100, dict_size=0)
    ingest([make_shard([doc("a")])], tmp_path / "s.store", settings=settings)
    part = pilestore.open(tmp_path / "s.store").manifest["partitions"][0]
    assert part["compression"]["level"] == 7 and part["compression"]["dict_size"] == 0
    assert part["compression"]["small_level"] == 9 and part["compression"]["small_bytes"] == 100
    assert part["compression"]["frame_format"] == "magicless"
    assert part["source"]["sha256"] and part["files"]["partition"]["sha256"]


def _run_ingest(source: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pilestore", "ingest", str(source), "--store", str(store), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_ingest_reruns_to_the_same_result(
    sample_path: Path, sample_store_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    store_dir = tmp_path / "killed.store"
    proc = _run_ingest(sample_path, store_dir)
    deadline = time.monotonic() + 60
    while not list(store_dir.glob(".staging/*/partition.sqlite")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # well inside the build
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not (store_dir / "manifest.json").exists()
    with pytest.raises(IncompleteStoreError):
        pilestore.open(store_dir)
    rerun = _run_ingest(sample_path, store_dir)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read().decode() if rerun.stderr else ""
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    export(pilestore.open(store_dir), out_a)
    export(pilestore.open(sample_store_dir), out_b)
    assert out_a.read_bytes() == out_b.read_bytes()
    assert not list((store_dir / ".staging").iterdir())


def test_crafted_edge_cases_round_trip_through_the_store(make_shard: ShardMaker, tmp_path: Path) -> None:
    lines = [
        b'{"text": "no meta at all"}',
        b'{"text": "top-level extras", "meta": {"pile_set_name": "Github"}, "id": 17, "url": "http://x"}',
        b'{"text": "big ints", "meta": {"pile_set_name": "ArXiv", "n": 123456789012345678901234567890}}',
        b'{"text": "lone \\ud83d and \\ude00\\ud83d", "meta": {"pile_set_name": "Pile-CC"}}',
        b'{"text": "nul \\u0000 and \\u2028 raw \xe2\x80\xa8", "meta": {"pile_set_name": "Pile-CC", "x": null}}',
        b'{"text": "odd subset", "meta": {"pile_set_name": 5}}',
        b'{"text": "surrogate subset", "meta": {"pile_set_name": "\\udc00"}}',
        b'{"meta": {"pile_set_name": "Github"}, "text": "meta first"}\r',
        b'{"text": "' + b"long " * 100_000 + b'", "meta": {"pile_set_name": "Books3"}}',
    ]
    shard = make_shard(lines)
    ingest([shard], tmp_path / "s.store")
    out = tmp_path / "out.jsonl"
    export(pilestore.open(tmp_path / "s.store"), out)
    assert [json.loads(line) for line in out.read_bytes().split(b"\n")[:-1]] == [json.loads(x) for x in lines]
    store = pilestore.open(tmp_path / "s.store")
    assert store[0].meta is None and store[0].subset == "(none)"
    assert store[1].extra == {"id": 17, "url": "http://x"}
    assert [store[i].subset for i in (5, 6)] == ["(none)", "(none)"]


def test_the_training_sample_is_bounded_by_memory_not_only_by_text() -> None:
    """One-byte documents must not all be buffered (a 10M-document source once took 6.7 GB)."""
    records = (Record(i, "d", {"meta": {"pile_set_name": "Pile-CC"}}) for i in range(1_000_000))
    sample = take_sample(records, 1 << 20)
    assert len(sample) == (1 << 20) // (1 + BUFFER_BYTES_PER_DOC) + 1
    assert next(records).line_no == len(sample)  # the rest is left for streaming


def test_the_training_sample_takes_whole_documents_up_to_the_budget() -> None:
    records = iter([Record(i, "x" * 1000, {}) for i in range(100)])
    assert len(take_sample(records, 10_000)) == 7  # 7 x (1000 + 512) >= 10,000
    assert len(take_sample(iter([]), 10_000)) == 0


def test_finished_sources_of_a_failed_run_are_reused_then_cleaned(
    make_shard: ShardMaker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_dir = tmp_path / "s.store"
    good = make_shard([doc("a")], name="good.jsonl.zst")
    bad = make_shard([doc("b"), b"oops"], name="bad.jsonl.zst")
    with pytest.raises(SourceError, match="bad.jsonl.zst:2"):
        ingest([good, bad], store_dir, strict=True)
    (staged,) = list((store_dir / ".staging").iterdir())  # good.jsonl.zst was finished before bad failed
    staged_result = json.loads((staged / "result.json").read_text())
    with caplog.at_level("WARNING", logger="pilestore.ingest"):
        report = ingest([good, bad], store_dir)
    assert "do not match" not in caplog.text
    assert [p["source"]["name"] for p in report.partitions] == ["good.jsonl.zst", "bad.jsonl.zst"]
    assert report.partitions[0]["created"] == staged_result["created"]  # reused, not rebuilt
    assert not list((store_dir / ".staging").iterdir())


@pytest.mark.parametrize("damage", ["flipped byte", "cut short", "result unreadable"])
def test_a_finished_staged_build_whose_files_do_not_match_its_result_is_built_again(
    make_shard: ShardMaker, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A staged partition is reused only if it is the file its result.json describes (size and sha256)."""
    store_dir = tmp_path / "s.store"
    good = make_shard([doc(f"document {i} " * 50) for i in range(200)], name="good.jsonl.zst")
    bad = make_shard([doc("b"), b"oops"], name="bad.jsonl.zst")
    with pytest.raises(SourceError):
        ingest([good, bad], store_dir, strict=True)
    (staged,) = list((store_dir / ".staging").iterdir())
    partition_file = staged / "partition.sqlite"
    data = bytearray(partition_file.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
        partition_file.write_bytes(bytes(data))
    elif damage == "cut short":
        partition_file.write_bytes(bytes(data[:-4096]))
    else:
        (staged / "result.json").write_text("{")
    with caplog.at_level("WARNING", logger="pilestore.ingest"):
        report = ingest([good, bad], store_dir)
    assert f"{staged}: its files do not match its result.json" in caplog.text  # built again, not reused
    assert [p["source"]["name"] for p in report.partitions] == ["good.jsonl.zst", "bad.jsonl.zst"]
    entry = report.partitions[0]
    assert entry["files"]["partition"]["sha256"] == file_sha256(store_dir / entry["file"])  # not the damaged file
    store = pilestore.open(store_dir)
    assert [store[i].text for i in range(200)] == [f"document {i} " * 50 for i in range(200)]
    assert not list((store_dir / ".staging").iterdir())


def test_a_staged_build_not_asked_for_again_is_removed(make_shard: ShardMaker, tmp_path: Path) -> None:
    store_dir = tmp_path / "s.store"
    bad = make_shard([b"oops"], name="bad.jsonl.zst")
    with pytest.raises(SourceError):
        ingest([make_shard([doc("c")], name="c.jsonl.zst"), bad], store_dir, strict=True)
    assert len(list((store_dir / ".staging").iterdir())) == 1
    ingest([make_shard([doc("a")], name="other.jsonl.zst")], store_dir)
    assert not list((store_dir / ".staging").iterdir())


def test_an_unknown_executor_is_refused_before_any_work(make_shard: ShardMaker, tmp_path: Path) -> None:
    shard = make_shard([doc("one")])
    with pytest.raises(ValueError, match="executor must be one of local, ray, got 'rya'"):
        ingest([shard], tmp_path / "s.store", executor="rya")
    assert not (tmp_path / "s.store").exists()
