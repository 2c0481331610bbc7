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
had are rebuilt from the token counts (numba kernels, seconds). Every step is skipped where it is done, so a
merge killed at any point is finished by running it again (the partitions it committed are recognised by their
files' sha256: their token files are carried over then).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .atomic import copy_atomic
from .build import INDEX_FILE, PARTITION_FILE
from .errors import PilestoreError
from .ingest import _commit
from .manifest import STAGING_DIR, read_or_empty, read_sealed, writer_lock
from .shards import file_sha256
from .store import Store
from .tokens import FILES, TOKENS_DIR, VIEW_FILE, TokenView

if TYPE_CHECKING:
    from .indexes import StageCallback
    from .samples import IndexShape

ENTRY_KEYS_NOT_COPIED = ("id", "file", "index", "pilestore_version")


def _place(src: Path, dst: Path) -> None:
    """Hard link when possible (same file system, no bytes copied), else copy; replaces what a killed run left."""
    dst.unlink(missing_ok=True)  # never write through it: it may be a link to the source's file
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
        for killed in (target / STAGING_DIR).glob("merge-*"):  # with the lock held, no merge is running
            shutil.rmtree(killed, ignore_errors=True)
        staging = target / STAGING_DIR / f"merge-{os.getpid()}"
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
    held = _held_partitions(stores, merged)
    views = [v for name in _shared_views(stores) if (v := _merge_view(name, held, merged, on_stage)) is not None]
    return {
        "store": str(target),
        "partitions_added": len(added),
        "documents": len(merged),
        "skipped_sources": skipped,
        "views": views,
    }


def _held_partitions(stores: Sequence[Store], merged: Store) -> list[tuple[Store, int, int]]:
    """(source store, its partition, the target's partition) for every source partition that the target holds
    as the very same file (sha256): this merge's, or a killed one's. Their token files apply as they are."""
    by_file = {entry["files"]["partition"]["sha256"]: i for i, entry in enumerate(merged.manifest["partitions"])}
    return [
        (store, p, by_file[sha])
        for store in stores
        for p, entry in enumerate(store.manifest["partitions"])
        if (sha := entry["files"]["partition"]["sha256"]) in by_file
    ]


def _merge_view(
    name: str, held: list[tuple[Store, int, int]], merged: Store, on_stage: StageCallback | None
) -> dict[str, Any] | None:
    """Carry one tokenized view's files into the merged store, complete it and build its sample indexes (the
    sources' shapes, and the target's own that the new partitions put behind); None if all that is done.

    Each step is skipped where it is done, so that re-running a merge killed at any point completes it."""
    from .indexes import _no_stages, build_index
    from .samples import SAMPLES_DIR, IndexShape
    from .tokens import tokenize

    folder = merged.path / TOKENS_DIR / name
    source_folders = {id(store): store.path / TOKENS_DIR / name for store, _, _ in held}
    missing = [(store, p, new) for store, p, new in held if not (folder / f"p{new:05d}.done").exists()]
    shapes: dict[str, IndexShape] = {}
    for source in source_folders.values():
        for info_file in sorted((source / SAMPLES_DIR).glob("*.json")):
            shape = IndexShape.of(read_sealed(info_file, "rebuild the source's index with `pilestore index`"))
            shapes.setdefault(shape.name, shape)
    if not held or (not missing and _view_done(folder, 1 + max(new for _, _, new in held), shapes)):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    copy_atomic(next(iter(source_folders.values())) / "tokenizer.model", folder / "tokenizer.model")
    for store, p, new in missing:
        src = source_folders[id(store)]
        for ext in (*FILES, "done"):  # .done last: it says the rest is there
            _place(src / f"p{p:05d}.{ext}", folder / f"p{new:05d}.{ext}")
    result = tokenize(merged, folder / "tokenizer.model")  # every partition is done: writes view.json only
    view = TokenView(folder)
    stages = on_stage or _no_stages
    with writer_lock(merged.path):
        rebuilt = [build_index(view, merged, shape, stages)["name"] for shape in _to_build(view, shapes).values()]
    return {"view": name, "tokens": result["tokens"], "indexes": rebuilt}


def _to_build(view: TokenView, shapes: Mapping[str, IndexShape]) -> dict[str, IndexShape]:
    """The sources' index shapes the view has no index of, and the indexes of the view that are behind it (the
    target's own too, made before the merge), by name."""
    from .indexes import shapes_behind
    from .samples import SAMPLES_DIR

    built = {path.stem for path in (view.folder / SAMPLES_DIR).glob("*.json")}
    return {n: shape for n, shape in shapes.items() if n not in built} | {s.name: s for s in shapes_behind(view)}


def _view_done(folder: Path, partitions: int, shapes: Mapping[str, IndexShape]) -> bool:
    """The view covers the first `partitions` partitions (the merged ones among them) and needs no index built."""
    if not (folder / VIEW_FILE).exists():
        return False
    view = TokenView(folder)
    return view.num_partitions >= partitions and not _to_build(view, shapes)
