"""manifest.json: the one file that makes a directory a complete store. Written last, atomically.

A store directory:

    manifest.json            this file; absent = incomplete (an ingest never finished)
    partitions/00000.sqlite  documents of source 0 (partition.py)
    index/00000.arrow        their index (index.py)
    .staging/                work in progress of a running or interrupted ingest; readers ignore it
    .lock                    held (flock) by a writing command; readers never touch it

A writing command that was killed can leave temporary files (`NAME.tmp`, `.NAME.tmp-PID`) anywhere in the
store; the next command to take the writer lock deletes them (`.staging/` is ingest's to clean).

Partitions are immutable once listed: adding sources writes new files, then a new manifest replaces the
old by rename, so a reader that loaded the old manifest keeps a consistent view.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import remove_temps, write_atomic
from .errors import IncompleteStoreError, StoreFormatError, StoreLockedError, StoreNotFoundError

FORMAT_NAME = "pilestore"
FORMAT_VERSION = 4
"""2: row checksums cover subset and meta; 3: chunked frame stream, index without row_id; 4: chunks of 16 pages,
magicless frames (partition.SCHEMA_VERSION)."""
MANIFEST = "manifest.json"
PARTITIONS_DIR = "partitions"
INDEX_DIR = "index"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def empty_manifest(version: str) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "pilestore_version": version,
        "created": now(),
        "updated": now(),
        "documents": 0,
        "subsets": [],
        "partitions": [],
    }


SEAL = "seal"  # key of a sealed JSON file's checksum of its own content


def _seal_of(obj: dict[str, Any]) -> str:
    import xxhash

    body = {k: v for k, v in obj.items() if k != SEAL}
    return xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True, ensure_ascii=False).encode())


def write_sealed(path: Path, obj: dict[str, Any]) -> None:
    """write_atomic a JSON object that carries an xxh3 of its own content (read_sealed checks it)."""
    write_atomic(path, json.dumps({**obj, SEAL: _seal_of(obj)}, indent=1, ensure_ascii=False).encode() + b"\n")


def read_sealed(path: Path, remedy: str) -> dict[str, Any]:
    """A JSON object written by write_sealed; a StoreFormatError naming the file (and `remedy`) if it was changed.

    FileNotFoundError passes through: callers say what a missing file means."""
    raw = path.read_bytes()
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreFormatError(f"{path}: not valid JSON ({err}): the file is damaged; {remedy}") from err
    if not isinstance(obj, dict) or obj.get(SEAL) != _seal_of(obj):
        raise StoreFormatError(f"{path}: content does not match its seal (damaged or edited); {remedy}")
    return obj


def write_manifest(store: Path, manifest: dict[str, Any]) -> None:
    write_atomic(store / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode() + b"\n")


def read_manifest(store: Path) -> dict[str, Any]:
    """The manifest of a complete store, validated; a clear error for every way this can fail."""
    path = store / MANIFEST
    if not store.exists():
        raise StoreNotFoundError(f"{store}: no such store; create one with `pilestore ingest SHARD --store {store}`")
    if not store.is_dir():
        raise StoreNotFoundError(f"{store}: not a directory; a store is a directory made by `pilestore ingest`")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if (store / STAGING_DIR).exists() or (store / PARTITIONS_DIR).exists():
            raise IncompleteStoreError(
                f"{store}: incomplete store (no {MANIFEST}): an ingest started here and did not finish. "
                f"Re-run the same `pilestore ingest ... --store {store}` to finish it (finished sources are "
                "reused), or delete the directory to start over."
            ) from None
        raise StoreNotFoundError(f"{store}: not a pilestore store (no {MANIFEST})") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreFormatError(f"{path}: corrupt manifest ({err}); restore it from a backup or re-ingest") from err
    _check(manifest, path)
    return manifest


def _check(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreFormatError(f"{path}: not a pilestore manifest")
    version = manifest.get("format_version")
    if isinstance(version, int) and 1 <= version < FORMAT_VERSION:
        raise StoreFormatError(
            f"{path}: store format version {version}, written by an older pilestore (this one reads version "
            f"{FORMAT_VERSION}); ingest the sources again into a new store"
        )
    if version != FORMAT_VERSION:
        raise StoreFormatError(
            f"{path}: store format version {version!r}; this pilestore reads version "
            f"{FORMAT_VERSION}. Upgrade pilestore or re-ingest."
        )
    try:
        subsets = manifest["subsets"]
        total = 0
        for i, part in enumerate(manifest["partitions"]):
            if part["id"] != i or not isinstance(part["documents"], int) or part["documents"] < 0:
                raise ValueError(f"partition {i} has a bad id or document count")
            if any(name not in subsets for name in part["subsets"]):
                raise ValueError(f"partition {i} names a subset the store does not list")
            for key in ("file", "index"):
                if not isinstance(part[key], str) or ".." in part[key] or part[key].startswith("/"):
                    raise ValueError(f"partition {i} has a bad {key} path {part[key]!r}")
            total += part["documents"]
        if manifest["documents"] != total:
            raise ValueError(f"documents {manifest['documents']} != sum over partitions {total}")
    except (KeyError, TypeError, ValueError) as err:
        raise StoreFormatError(f"{path}: inconsistent manifest: {err}") from err


def read_or_empty(store: Path, version: str) -> dict[str, Any]:
    """The store's manifest, or a new empty one if the directory has none yet (a damaged one still raises)."""
    if not (store / MANIFEST).exists():
        return empty_manifest(version)
    return read_manifest(store)


def subset_totals(partitions: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Documents, text bytes and stored bytes per subset, summed over partition entries, sorted by name."""
    totals: dict[str, dict[str, int]] = {}
    for part in partitions:
        for name, values in part["subset_stats"].items():
            acc = totals.setdefault(name, {"documents": 0, "text_bytes": 0, "stored_bytes": 0})
            for key in acc:
                acc[key] += values[key]
    return dict(sorted(totals.items()))


def with_ratios(totals: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """subset_totals plus each subset's compression ratio (text bytes / stored bytes)."""
    return {
        name: {**v, "ratio": round(v["text_bytes"] / v["stored_bytes"], 3) if v["stored_bytes"] else None}
        for name, v in totals.items()
    }


@contextmanager
def writer_lock(store: Path) -> Iterator[None]:
    """Exclusive right to change `store`; the OS releases it if the process dies (even by kill -9)."""
    store.mkdir(parents=True, exist_ok=True)
    fd = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise StoreLockedError(
                    f"{store}: another pilestore command is writing to this store; wait for it to finish, then re-run"
                ) from None
            raise
        remove_temps(store, keep=STAGING_DIR)  # ingest reuses the finished builds there, cleans the rest
        yield
    finally:
        os.close(fd)
