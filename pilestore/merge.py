"""Combine separately built stores into one, without recompressing or re-tokenizing.

    pilestore merge a.store b.store --store all.store

Global document order: the target's own partitions first (if it exists), then each source store in the
order given, each with its partitions in their order. So merging the stores of shards 00..29 built on 30
machines gives the order a single `pilestore ingest 00.jsonl.zst ... 29.jsonl.zst` would.

Partition and index files are copied (hard-linked when on the same file system), checked against the
sha256 their manifest records, and committed like an ingest: staged under .staging/, then one atomic
manifest write. A source whose sha256 is already in the target is skipped, as ingest does.

Tokenized views move too: the token files of every view that all the merged stores share (same tokenizer
sha256) are copied under the new partition numbers with their .done markers, the view is completed by
`tokens.tokenize` (which finds every partition done and encodes nothing), and the sample indexes the sources
had are rebuilt from the token counts (numba kernels, seconds).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .build import INDEX_FILE, PARTITION_FILE
from .errors import PilestoreError
from .ingest import _commit
from .manifest import STAGING_DIR, read_or_empty, read_sealed, writer_lock
from .shards import file_sha256
from .store import Store
from .tokens import FILES, TOKENS_DIR, VIEW_FILE

if TYPE_CHECKING:
    from .indexes import StageCallback

ENTRY_KEYS_NOT_COPIED = ("id", "file", "index", "pilestore_version")


def _place(src: Path, dst: Path) -> None:
    """Hard link when possible (same file system, no bytes copied), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _stage(store: Store, p: int, folder: Path) -> dict[str, Any]:
    """Partition p of `store` staged in `folder` as an ingest would leave it; its manifest entry, checked."""
    entry = store.manifest["partitions"][p]
    folder.mkdir(parents=True)
    for key, rel, name in (("partition", entry["file"], PARTITION_FILE), ("index", entry["index"], INDEX_FILE)):
        _place(store.path / rel, folder / name)
        if file_sha256(folder / name) != entry["files"][key]["sha256"]:
            raise PilestoreError(
                f"{store.path / rel}: sha256 differs from its manifest's; run `pilestore verify --store {store.path}`"
            )
    return {k: v for k, v in entry.items() if k not in ENTRY_KEYS_NOT_COPIED}


def _shared_views(stores: Sequence[Store]) -> list[str]:
    """View folder names (<stem>-<sha12>) present, complete, in every store, matched by tokenizer hash."""
    by_sha = [{p.parent.name.rsplit("-", 1)[-1]: p.parent.name for p in s.path.glob(f"{TOKENS_DIR}/*/{VIEW_FILE}")}
              for s in stores]  # fmt: skip
    common = set.intersection(*(set(v) for v in by_sha)) if by_sha else set()
    return [by_sha[0][sha] for sha in sorted(common)]


def merge(sources: Sequence[Path], target: Path, on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Add every partition of the source stores to `target` (created if needed); returns what was done.
    on_stage: the progress of the sample indexes it rebuilds (indexes.StageCallback)."""
    from . import open as open_store

    stores = [open_store(Path(s)) for s in sources]
    if any(s.path.resolve() == Path(target).resolve() for s in stores):
        raise PilestoreError(f"{target}: cannot merge a store into itself")
    added: list[tuple[Store, int, int]] = []  # (source store, its partition, new partition id)
    skipped: list[str] = []
    with writer_lock(target):
        manifest = read_or_empty(target, __version__)
        first_new = len(manifest["partitions"])
        seen = {p["source"]["sha256"] for p in manifest["partitions"]}
        staging = target / STAGING_DIR / f"merge-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        results = []
        try:
            for store in stores:
                for p, entry in enumerate(store.manifest["partitions"]):
                    if entry["source"]["sha256"] in seen:
                        skipped.append(entry["source"]["name"])
                        continue
                    seen.add(entry["source"]["sha256"])
                    folder = staging / f"{len(results):05d}"
                    results.append((folder, _stage(store, p, folder)))
                    added.append((store, p, first_new + len(results) - 1))
            if results:
                _commit(target, manifest, results)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    merged = open_store(target)
    views = [_merge_view(name, added, merged, on_stage) for name in _shared_views(stores)] if added else []
    return {
        "store": str(target),
        "partitions_added": len(added),
        "documents": len(merged),
        "skipped_sources": skipped,
        "views": views,
    }


def _merge_view(
    name: str, added: list[tuple[Store, int, int]], merged: Store, on_stage: StageCallback | None
) -> dict[str, Any]:
    """Carry one tokenized view's files into the merged store, complete it and rebuild its sample indexes (the
    sources' shapes, and the target's own that the new partitions put behind)."""
    from .indexes import _no_stages, build_index, shapes_behind
    from .samples import SAMPLES_DIR, IndexShape
    from .tokens import TokenView, tokenize

    folder = merged.path / TOKENS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    source_folders = {id(store): store.path / TOKENS_DIR / name for store, _, _ in added}
    any_source = next(iter(source_folders.values()))
    if not (folder / "tokenizer.model").exists():
        shutil.copyfile(any_source / "tokenizer.model", folder / "tokenizer.model")
    for store, p, new in added:
        src = source_folders[id(store)]
        for ext in (*FILES, "done"):  # .done last: it says the rest is there
            _place(src / f"p{p:05d}.{ext}", folder / f"p{new:05d}.{ext}")
    result = tokenize(merged, folder / "tokenizer.model")  # every partition is done: writes view.json only
    view = TokenView(folder)
    rebuilt = []
    stages = on_stage or _no_stages
    with writer_lock(merged.path):
        for info_file in sorted((any_source / SAMPLES_DIR).glob("*.json")):
            info = read_sealed(info_file, "rebuild the source's index with `pilestore index`")
            rebuilt.append(build_index(view, merged, IndexShape.of(info), stages)["name"])
        for shape in shapes_behind(view):  # the target's own indexes of other shapes, built before the merge
            rebuilt.append(build_index(view, merged, shape, stages)["name"])
    return {"view": name, "tokens": result["tokens"], "indexes": rebuilt}
