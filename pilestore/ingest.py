"""Ingest: sources -> staged partitions (in parallel processes) -> one atomic manifest commit.

    lock store ─▶ drop leftovers of crashed runs ─▶ skip sources already in the store
               ─▶ build each remaining source in .staging/<key>/ (reused if an earlier run finished it
                 and its files are the ones its result.json describes: size and sha256)
               ─▶ move the files into partitions/ and index/ ─▶ write manifest.json (atomic) ─▶ unlock

Nothing a reader sees changes until the manifest is replaced, so an interrupted ingest (error, Ctrl-C,
kill -9) leaves the store as it was; re-running the same command finishes the job without cleanup.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from . import __version__
from .build import INDEX_FILE, PARTITION_FILE, RESULT_FILE, build_partition
from .cluster import check_executor, run_tasks
from .codec import CompressionSettings
from .errors import PilestoreError, SourceError
from .manifest import (
    INDEX_DIR,
    PARTITIONS_DIR,
    STAGING_DIR,
    now,
    read_or_empty,
    subset_totals,
    with_ratios,
    write_manifest,
    writer_lock,
)
from .shards import detect_format, file_matches, file_sha256

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (compressed bytes read, documents written) since last call


class Cancelled(PilestoreError):
    """A worker stopped because another source failed."""


@dataclass(slots=True)
class IngestReport:
    """What an ingest did: one entry per new partition, plus the sources it skipped and why."""

    store: Path
    partitions: list[dict[str, Any]] = field(default_factory=list)
    already_in_store: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        docs = sum(p["documents"] for p in self.partitions)
        text = sum(p["text_bytes"] for p in self.partitions)
        stored = sum(p["stored_bytes"] + p["dictionary_bytes"] for p in self.partitions)
        read = sum(p["source"]["size"] for p in self.partitions)
        skipped: Counter[str] = Counter()
        for part in self.partitions:
            skipped.update(part["skipped"])
        return {
            "store": str(self.store),
            "sources": [p["source"]["name"] for p in self.partitions],
            "already_in_store": self.already_in_store,
            "documents": docs,
            "text_bytes": text,
            "stored_bytes": stored,
            "source_bytes": read,
            "ratio": round(text / stored, 3) if stored else None,
            "seconds": round(self.seconds, 3),
            "text_mb_per_s": round(text / 1e6 / self.seconds, 2) if self.seconds else None,
            "source_mb_per_s": round(read / 1e6 / self.seconds, 2) if self.seconds else None,
            "subsets": with_ratios(subset_totals(self.partitions)),
            "skipped": dict(skipped),
            "skipped_examples": [e for p in self.partitions for e in p["skipped_examples"]],
        }


def staging_key(source: Path, settings: CompressionSettings) -> str:
    """Names the staging folder: same file (path, size, mtime) and settings -> same folder."""
    st = source.stat()
    ident = json.dumps([str(source.resolve()), st.st_size, st.st_mtime_ns, settings.as_dict()])
    return f"{source.name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _clean_leftovers(store: Path, manifest: dict[str, Any], keep: set[Path]) -> None:
    """Delete files of crashed runs: unlisted partition/index files, and staging folders that are unfinished,
    damaged or belong to no source of this command (finished ones of this command's sources are reused)."""
    listed = {p[key] for p in manifest["partitions"] for key in ("file", "index")}
    for folder in (PARTITIONS_DIR, INDEX_DIR):
        for path in (store / folder).glob("*"):
            if f"{folder}/{path.name}" not in listed:
                log.info("removing %s, left by an interrupted ingest", path)
                path.unlink()
    for path in (store / STAGING_DIR).glob("*"):
        if path in keep and _is_finished(path):
            continue
        if path in keep and (path / RESULT_FILE).exists():
            log.warning("%s: its files do not match its result.json; building that source again", path)
        else:
            log.info("removing %s, left by an interrupted ingest", path)
        shutil.rmtree(path)


def _is_finished(folder: Path) -> bool:
    """Whether a staging folder holds a finished build: its result.json and the files it describes, with the sizes
    and sha256 it records. A commit killed after moving a file leaves result.json without it; a file damaged since,
    or rewritten by another attempt at the same build (a Ray task on a node that was only unreachable), differs."""
    try:
        files = json.loads((folder / RESULT_FILE).read_text())["files"]
        return all(
            file_matches(folder / name, files[key])
            for key, name in (("partition", PARTITION_FILE), ("index", INDEX_FILE))
        )
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or not the JSON a build writes
        return False


def _already_in_store(source: Path, manifest: dict[str, Any]) -> bool:
    size = source.stat().st_size
    same_size = [p["source"]["sha256"] for p in manifest["partitions"] if p["source"]["size"] == size]
    return bool(same_size) and file_sha256(source) in same_size


def _finished_result(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RESULT_FILE).read_text())
    except FileNotFoundError:
        return None


_worker_queue: Any = None
_worker_stop: Any = None


def _init_worker(progress_queue: Any, stop: Any) -> None:
    global _worker_queue, _worker_stop  # per worker process, set once by the pool initializer
    _worker_queue, _worker_stop = progress_queue, stop


def _build_one(
    source: Path, folder: Path, settings: CompressionSettings, strict: bool, threads: int, on_progress: ProgressCallback
) -> dict[str, Any]:
    """build_partition, removing its half-built folder if it fails (a killed one is removed by the next run)."""
    try:
        return build_partition(source, folder, settings, strict=strict, threads=threads, on_progress=on_progress)
    except apsw.Error as err:  # SQLite could not write: a full disk or file-size limit, mostly
        shutil.rmtree(folder, ignore_errors=True)
        raise PilestoreError(
            f"{source}: writing its partition under {folder.parent} failed ({type(err).__name__}: {err}); "
            "is the disk full or a file-size limit reached? The store is unchanged: free space and re-run"
        ) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _build_in_worker(
    source: Path, folder: Path, settings: CompressionSettings, strict: bool, threads: int
) -> dict[str, Any]:
    def report(nbytes: int, ndocs: int) -> None:
        if _worker_stop.is_set():
            raise Cancelled(f"{source}: stopped because another source failed")
        _worker_queue.put((nbytes, ndocs))

    return _build_one(source, folder, settings, strict, threads, report)


def _no_progress(nbytes: int, ndocs: int) -> None:
    """A Ray task reports when it is done, not as it goes."""


def _build_on_ray(
    jobs: list[tuple[Path, Path]],
    settings: CompressionSettings,
    strict: bool,
    threads: int | None,
    on_progress: ProgressCallback,
    address: str | None,
) -> list[dict[str, Any]]:
    """One Ray task per source, each with `threads` zstd threads (default 1) and as many CPUs."""
    threads = threads or 1
    tasks = [(src, folder, settings, strict, threads, _no_progress) for src, folder in jobs]
    return run_tasks(
        _build_one,
        tasks,
        address=address,
        num_cpus=threads,
        on_done=lambda k, result: on_progress(jobs[k][0].stat().st_size, result["documents"]),
        names=[str(src) for src, _ in jobs],
    )


def _build_all(
    jobs: list[tuple[Path, Path]],
    settings: CompressionSettings,
    strict: bool,
    workers: int,
    threads: int | None,
    on_progress: ProgressCallback,
    executor: str = "local",
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Build every (source, folder) job, in parallel processes when workers > 1 (or as Ray tasks); results in
    job order."""
    for _, folder in jobs:
        folder.mkdir(parents=True)
    if executor == "ray":
        return _build_on_ray(jobs, settings, strict, threads, on_progress, address)
    processes = max(1, min(workers, len(jobs)))
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // processes)  # zstd threads per process: use every core
    if processes == 1:
        return [_build_one(src, folder, settings, strict, threads, on_progress) for src, folder in jobs]
    ctx = multiprocessing.get_context("spawn")  # no fork of a parent that runs a progress thread
    progress_queue, stop = ctx.Queue(), ctx.Event()
    with ProcessPoolExecutor(
        processes, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue, stop)
    ) as pool:
        futures = [pool.submit(_build_in_worker, src, folder, settings, strict, threads) for src, folder in jobs]
        try:
            pending: set[Future[dict[str, Any]]] = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                _drain(progress_queue, on_progress)
                for future in futures:
                    if future.done() and future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
            _drain(progress_queue, on_progress)
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise


def _drain(progress_queue: Any, on_progress: ProgressCallback) -> None:
    while True:
        try:
            nbytes, ndocs = progress_queue.get_nowait()
        except queue.Empty:
            return
        on_progress(nbytes, ndocs)


def _commit(store: Path, manifest: dict[str, Any], results: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Move staged files into the store and replace the manifest (read under the same lock); returns the new
    partition entries."""
    (store / PARTITIONS_DIR).mkdir(exist_ok=True)
    (store / INDEX_DIR).mkdir(exist_ok=True)
    added = []
    for folder, result in results:
        pid = len(manifest["partitions"])
        entry = {
            "id": pid,
            "file": f"{PARTITIONS_DIR}/{pid:05d}.sqlite",
            "index": f"{INDEX_DIR}/{pid:05d}.arrow",
            **result,
            "pilestore_version": __version__,
        }
        os.replace(folder / PARTITION_FILE, store / entry["file"])
        os.replace(folder / INDEX_FILE, store / entry["index"])
        for name in result["subsets"]:
            if name not in manifest["subsets"]:
                manifest["subsets"].append(name)
        manifest["partitions"].append(entry)
        manifest["documents"] += entry["documents"]
        added.append(entry)
    manifest["updated"] = now()
    manifest["pilestore_version"] = __version__
    write_manifest(store, manifest)
    for folder, _ in results:
        shutil.rmtree(folder)
    return added


def ingest(
    sources: Sequence[Path],
    store: Path,
    *,
    settings: CompressionSettings | None = None,
    workers: int = 1,
    threads: int | None = None,
    strict: bool = False,
    on_progress: ProgressCallback = lambda b, d: None,
    on_start: Callable[[int], None] = lambda total: None,
    executor: str = "local",
    address: str | None = None,
) -> IngestReport:
    """Add every source to `store` (created if needed) as one atomic step. See the module docstring.

    `workers` processes build sources in parallel; each compresses with `threads` zstd threads
    (default: the machine's cores divided among the workers). executor="ray" builds each source as a Ray
    task instead (cluster.py; `address` of the cluster, else a local Ray instance); `store` must then be on
    storage every node sees.
    """
    settings = settings or CompressionSettings()
    check_executor(executor)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    started = time.perf_counter()
    unique = list(dict.fromkeys(Path(s).resolve() for s in sources))
    for source in unique:
        detect_format(source)  # fail fast on a missing or unreadable file, before any work
    report = IngestReport(store=store)
    with writer_lock(store):
        manifest = read_or_empty(store, __version__)
        todo: list[tuple[Path, Path]] = []
        for source in unique:
            if _already_in_store(source, manifest):
                report.already_in_store.append(source.name)
            else:
                todo.append((source, store / STAGING_DIR / staging_key(source, settings)))
        _clean_leftovers(store, manifest, keep={folder for _, folder in todo})
        finished = {folder: _finished_result(folder) for _, folder in todo}
        jobs = [(src, folder) for src, folder in todo if finished[folder] is None]
        on_start(sum(src.stat().st_size for src, _ in jobs))
        built = dict(
            zip(
                [folder for _, folder in jobs],
                _build_all(jobs, settings, strict, workers, threads, on_progress, executor, address),
                strict=True,
            )
        )
        results = [(folder, finished[folder] or built[folder]) for _, folder in todo]
        if results:
            report.partitions = _commit(store, manifest, results)
    report.seconds = time.perf_counter() - started
    if not report.partitions and not report.already_in_store:
        raise SourceError("no sources given")
    return report
