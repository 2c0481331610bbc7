"""Verify a store end to end: file hashes, index against partition rows, every document's checksum, and the
hashes of every tokenized view's files and sample indexes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from . import partition
from .document import checksum, encode_text
from .errors import CorruptDocumentError, StoreFormatError
from .index import map_columns
from .manifest import read_sealed
from .samples import GENERATION_KEY, REBUILD
from .shards import file_matches, file_sha256
from .store import Store
from .tokens import FILES, TOKENS_DIR


@dataclass(slots=True)
class VerifyReport:
    documents_checked: int = 0
    problems: list[str] = field(default_factory=list)
    corrupt_documents: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "documents_checked": self.documents_checked,
            "corrupt_documents": self.corrupt_documents,
            "problems": self.problems,
        }


def _check_files(store: Store, p: int, report: VerifyReport) -> None:
    entry = store.manifest["partitions"][p]
    for key, rel in (("partition", entry["file"]), ("index", entry["index"])):
        path = store.path / rel
        expected = entry["files"][key]
        if not path.exists():
            report.problems.append(f"{path}: missing")
        elif not file_matches(path, expected):
            report.problems.append(f"{path}: sha256 differs from the manifest's (the file was changed or damaged)")


def _check_rows(store: Store, p: int, report: VerifyReport, on_document: Callable[[int], None]) -> None:
    """Every row decompresses, matches its checksum and the index; names each bad document."""
    entry = store.manifest["partitions"][p]
    start = store.partition_start(p)
    try:
        index = store.index(p)
        part = store._partition(p)  # noqa: SLF001 - verify is the store's own checker
    except StoreFormatError as err:
        report.problems.append(str(err))
        return
    expected_row = 0
    decompressor = part.thread_state().decompressor
    try:
        for row, subset, codec, size, digest, rest, stored in partition.iter_rows(part.conn):
            gidx = start + row
            where = f"{store.path / entry['file']}: document {gidx} (row {row})"
            if row != expected_row or row >= len(index):
                report.problems.append(f"{where}: unexpected row id (expected {expected_row})")
                break
            expected_row += 1
            report.documents_checked += 1
            on_document(1)
            problem = None
            if (index.text_bytes[row], index.subset[row]) != (size, subset):
                problem = "index entry differs from the partition row"
            else:
                try:
                    doc = store._document(gidx, part, decompressor, subset, codec, size, digest, rest, stored)  # noqa: SLF001
                    if checksum(encode_text(doc.text)) != index.checksum[row]:
                        problem = "index checksum differs from the text"
                except (CorruptDocumentError, StoreFormatError) as err:
                    problem = str(err)
            if problem:
                report.problems.append(f"{where}: {problem}")
                report.corrupt_documents.append(gidx)
    except apsw.Error as err:
        report.problems.append(f"{store.path / entry['file']}: SQLite error after row {expected_row}: {err}")
    if expected_row != entry["documents"]:
        report.problems.append(f"{store.path / entry['file']}: {expected_row} rows, manifest says {entry['documents']}")


def verify(store: Store, on_document: Callable[[int], None] = lambda n: None) -> VerifyReport:
    """Check every file and document of `store`; the report lists every problem found."""
    report = VerifyReport()
    for p in range(store.num_partitions):
        _check_files(store, p, report)
        _check_rows(store, p, report, on_document)
    for view_file in sorted((store.path / TOKENS_DIR).glob("*/view.json")):
        _check_view(view_file.parent, report)
    return report


def _check_hash(
    path: Path, expected: str | None, report: VerifyReport, explain: Callable[[Path], str | None] = lambda path: None
) -> None:
    """A problem if the file is missing or its sha256 is not `expected`; `explain` may say why it differs."""
    if expected is None:
        report.problems.append(f"{path}: no sha256 recorded (written by an older pilestore); re-run the command")
    elif not path.exists():
        report.problems.append(f"{path}: missing")
    elif file_sha256(path) != expected:
        why = explain(path) or "sha256 differs from the recorded one (the file was changed or damaged)"
        report.problems.append(f"{path}: {why}")


def _another_build(path: Path, generation: str | None) -> str | None:
    """Why a sample index file differs from its .json's hash if it belongs to another build (a rebuild killed
    between renaming its files and writing its .json); None if it says it is the .json's build, or cannot say."""
    found: dict[bytes, bytes] = {}
    try:
        map_columns(path, metadata=found)
    except StoreFormatError:
        return None
    if found.get(GENERATION_KEY.encode(), b"").decode(errors="replace") in ("", generation):
        return None
    return f"from another build than its .json (a rebuild that did not finish); {REBUILD}"


def _check_view(folder: Path, report: VerifyReport) -> None:
    """A tokenized view's token, byte-offset and document files, and its sample indexes, against their hashes."""
    try:
        view = read_sealed(folder / "view.json", "run `pilestore tokenize` again")
    except (OSError, StoreFormatError) as err:
        report.problems.append(f"{folder / 'view.json'}: unreadable ({err})")
        return
    model = folder / "tokenizer.model"
    if model.exists() and file_sha256(model) != view.get("tokenizer", {}).get("sha256"):
        report.problems.append(f"{model}: sha256 differs from the tokenizer recorded in view.json (changed or damaged)")
    for entry in view.get("partitions", []):
        done = folder / f"p{entry['partition']:05d}.done"
        try:
            read_sealed(done, "delete it and run `pilestore tokenize` again")
        except (OSError, StoreFormatError) as err:
            report.problems.append(f"{done}: unreadable ({err})")
        recorded = entry.get("sha256", {})
        for ext in FILES:
            _check_hash(folder / f"p{entry['partition']:05d}.{ext}", recorded.get(ext), report)
    for info_file in sorted((folder / "samples").glob("*.json")):
        try:
            info = read_sealed(info_file, "rebuild it with `pilestore index`")
            recorded = info.get("sha256")
        except (OSError, StoreFormatError) as err:
            report.problems.append(f"{info_file}: unreadable ({err})")
            continue
        stem = info_file.name.removesuffix(".json")
        for part in ("spans", "samples", "rows"):
            name = f"{stem}.{part}.arrow"
            explain = functools.partial(_another_build, generation=info.get("generation"))
            _check_hash(folder / "samples" / name, (recorded or {}).get(name), report, explain)
