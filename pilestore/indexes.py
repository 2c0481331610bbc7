"""Building a view's sample indexes: documents of a split -> windows (numba) -> index files.

    pilestore index --seq-len L --context C                      eval + train over every document
    pilestore index --seq-len L --context C --val-fraction F     train over split "train", eval over split "val"

A document outside the split is given zero tokens before windowing, so the indexes keep the store's document
ids and never hold one of its tokens. Written under the store's writer lock, one index at a time, each made
visible by its .json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .manifest import read_sealed, writer_lock
from .samples import REBUILD, SAMPLES_DIR, IndexShape, built_for, write_index
from .splits import in_split
from .store import Store
from .tokens import TokenView
from .windows import eval_view, train_view


def document_table(store: Store) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per document in store order: its subset id (into the returned names) and its text checksum."""
    names = sorted(store.manifest["subsets"])
    ids, checksums = [], []
    for p, part in enumerate(store.manifest["partitions"]):
        local_to_global = np.array([names.index(n) for n in part["subsets"]] or [0], dtype=np.int16)
        index = store.index(p)
        ids.append(local_to_global[index.subset])
        checksums.append(index.checksum)
    if not ids:
        return np.zeros(0, np.int16), np.zeros(0, np.int64), names
    return np.concatenate(ids), np.concatenate(checksums), names


def index_shapes(seq_len: int, context: int, packing: str, val_fraction: float | None) -> list[IndexShape]:
    """The indexes `pilestore index` builds for these options."""
    if val_fraction is None:
        return [IndexShape("eval", seq_len, context, None), IndexShape("train", seq_len, context, packing)]
    return [
        IndexShape("eval", seq_len, context, None, "val", val_fraction),
        IndexShape("train", seq_len, context, packing, "train", val_fraction),
    ]


def build_index(view: TokenView, store: Store, shape: IndexShape) -> dict[str, Any]:
    """Build one index (call under the writer lock)."""
    view.check_build_inputs()
    subset, checksum, names = document_table(store)
    lengths = view.doc_lengths()
    if len(lengths) != len(subset):
        raise ValueError(f"{view.folder}: {len(lengths)} tokenized documents but the store has {len(subset)}")
    lengths = np.where(in_split(checksum, shape.split, shape.val_fraction), lengths, 0)
    if shape.kind == "eval":
        spans = eval_view(lengths, shape.seq_len, shape.context)
    else:
        spans = train_view(lengths, shape.seq_len, shape.context, shape.packing or "bestfit")
    return write_index(view, shape, spans, subset, names)


def build_indexes(
    view: TokenView, store: Store, seq_len: int, context: int, packing: str, val_fraction: float | None = None
) -> list[dict[str, Any]]:
    """The eval and train indexes for these options, written under the store's writer lock."""
    with writer_lock(store.path):
        return [build_index(view, store, shape) for shape in index_shapes(seq_len, context, packing, val_fraction)]


def shapes_behind(view: TokenView) -> list[IndexShape]:
    """The shapes of the view's indexes built before it gained the partitions it has now (SampleIndex refuses
    them: they would leave the new documents out)."""
    shapes = []
    for path in sorted((view.folder / SAMPLES_DIR).glob("*.json")):
        info = read_sealed(path, REBUILD)
        if built_for(info) < view.num_partitions:
            shapes.append(IndexShape.of(info))
    return shapes


def rebuild_behind(view: TokenView, store: Store) -> list[dict[str, Any]]:
    """Rebuild every index of the view that is behind it (after tokenize added partitions), under the lock."""
    with writer_lock(store.path):
        return [build_index(view, store, shape) for shape in shapes_behind(view)]
