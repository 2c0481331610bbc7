from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import pilestore
from pilestore import partition
from pilestore.cli import cli
from pilestore.errors import CorruptDocumentError, PilestoreError, StoreFormatError
from pilestore.verify import verify


@pytest.fixture
def store_copy(sample_store_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sample_store_dir, tmp_path / "copy.store"))


def _flip_inside_document(store_dir: Path, idx: int) -> None:
    """Flip one byte in the middle of document idx's stored bytes, found in the partition file."""
    path = store_dir / "partitions" / "00000.sqlite"
    conn = partition.connect_reader(path)
    stored = partition.RowReader(conn, partition.stream_bytes(conn)).read(idx)[-1]
    conn.close()
    data = bytearray(path.read_bytes())
    at = data.find(stored[:64])
    assert at > 0 and data.count(stored[:64]) == 1
    data[at + 40] ^= 0x20
    path.write_bytes(bytes(data))


def test_a_clean_store_verifies(sample_store_dir: Path) -> None:
    report = verify(pilestore.open(sample_store_dir))
    assert report.ok and report.documents_checked == 5993


def test_a_flipped_byte_is_found_and_named(store_copy: Path) -> None:
    _flip_inside_document(store_copy, 1234)
    report = verify(pilestore.open(store_copy))
    assert not report.ok
    assert report.corrupt_documents == [1234]
    assert any("sha256 differs" in p for p in report.problems)
    with pytest.raises(CorruptDocumentError, match="document 1234"):
        pilestore.open(store_copy)[1234]
    assert pilestore.open(store_copy)[1233].idx == 1233
    result = CliRunner().invoke(cli, ["verify", "--store", str(store_copy)])
    assert result.exit_code == 1
    assert "document 1234" in result.output


def test_a_damaged_index_is_reported(store_copy: Path) -> None:
    path = store_copy / "index" / "00000.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the column data
    path.write_bytes(bytes(data))
    report = verify(pilestore.open(store_copy))
    assert not report.ok
    assert any("index" in p for p in report.problems)


def test_a_truncated_index_is_a_format_error(store_copy: Path) -> None:
    path = store_copy / "index" / "00000.arrow"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StoreFormatError, match="00000.arrow"):
        pilestore.open(store_copy).index(0)


def test_a_missing_partition_is_a_clear_error(store_copy: Path) -> None:
    (store_copy / "partitions" / "00000.sqlite").unlink()
    with pytest.raises(StoreFormatError, match="partition file missing"):
        pilestore.open(store_copy)[0]
    assert not verify(pilestore.open(store_copy)).ok


def test_verify_checks_token_files_and_sample_indexes(small_store: Path, model: Path, tmp_path: Path) -> None:
    import shutil

    from pilestore.indexes import build_indexes
    from pilestore.tokens import TokenView, tokenize

    store_dir = tmp_path / "tok.store"
    shutil.copytree(small_store, store_dir, ignore=shutil.ignore_patterns("tokens"))
    view = TokenView(Path(tokenize(pilestore.open(store_dir), model)["view"]))
    build_indexes(view, pilestore.open(store_dir), 64, 16, "bestfit")
    assert verify(pilestore.open(store_dir)).ok
    damaged = [view.folder / "p00001.tokens", view.folder / "samples" / "train-L64-C16-bestfit.spans.arrow"]
    for path in damaged:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    report = verify(pilestore.open(store_dir))
    assert not report.ok and report.corrupt_documents == []
    assert sorted(p.split(":")[0] for p in report.problems) == sorted(str(p) for p in damaged)


def test_an_index_rebuild_killed_between_its_renames_is_told_from_damage(
    small_store: Path, model: Path, tmp_path: Path
) -> None:
    """A rebuild renames its three files, then writes the .json: killed in between, the files of the new build
    sit beside the old .json. verify says so and what to do, not 'damaged'; readers refuse the index; the re-run
    of tokenize rebuilds it (the .json is behind the view)."""
    from pilestore.indexes import build_indexes
    from pilestore.samples import SampleIndex
    from pilestore.tokens import TokenView, tokenize

    store_dir = tmp_path / "grow.store"
    shutil.copytree(small_store, store_dir, ignore=shutil.ignore_patterns("tokens"))
    view = TokenView(Path(tokenize(pilestore.open(store_dir), model)["view"]))
    build_indexes(view, pilestore.open(store_dir), 64, 16, "bestfit")
    old_json = (view.folder / "samples" / "eval-L64-C16.json").read_bytes()
    more = tmp_path / "more.jsonl"
    more.write_bytes(b'{"text": "one more document", "meta": {"pile_set_name": "Pile-CC"}}\n')
    assert CliRunner().invoke(cli, ["ingest", str(more), "--store", str(store_dir)]).exit_code == 0
    args = ["tokenize", "--store", str(store_dir), "--tokenizer", str(model), "--seq-len", "64", "--context", "16"]
    assert CliRunner().invoke(cli, args).exit_code == 0  # tokenizes the new partition, rebuilds both indexes
    (view.folder / "samples" / "eval-L64-C16.json").write_bytes(old_json)  # as if killed before the .json's rename
    report = verify(pilestore.open(store_dir))
    assert len(report.problems) == 3 and all("from another build than its .json" in p for p in report.problems)
    assert all("eval-L64-C16." in p and "pilestore index" in p for p in report.problems)
    with pytest.raises(PilestoreError, match="different builds"):
        SampleIndex(TokenView(view.folder), "eval-L64-C16", wait=0)
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert verify(pilestore.open(store_dir)).ok
    damaged = view.folder / "samples" / "eval-L64-C16.rows.arrow"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01  # a column's byte: the file still says it belongs to the .json's build
    damaged.write_bytes(bytes(data))
    assert [p.split(": ", 1)[1] for p in verify(pilestore.open(store_dir)).problems] == [
        "sha256 differs from the recorded one (the file was changed or damaged)"
    ]
