"""Held-out validation split by document hash (pure).

    document  ->  checksum (xxh3_64 of its text, from the store index)  ->  u = mix(checksum) / 2**64
    held out (split "val") when u < val_fraction, else split "train"

The assignment depends on the text only: not on the document's position, its partition, the order sources
were ingested in, the number of workers or machines. Documents with identical text fall on the same side,
so exact duplicates never leak from training into validation. Changing val_fraction from f to g > f only
moves documents from train to val (u < f implies u < g).

The split applies to documents, before windowing and packing: the train view of split "train" never holds a
token of a held-out document, and the eval view of split "val" holds exactly the held-out documents.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("all", "train", "val")
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def check_split(split: str, val_fraction: float | None) -> None:
    """A ValueError naming what to pass when the split and fraction do not go together."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all" and val_fraction is not None:
        raise ValueError("val_fraction needs split='train' or split='val'")
    if split != "all" and val_fraction is None:
        raise ValueError(f"split={split!r} needs val_fraction (the held-out fraction, e.g. 0.01)")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def unit_hash(checksums: np.ndarray) -> np.ndarray:
    """splitmix64 of each checksum mapped to [0, 1): uniform whatever the checksums look like."""
    z = np.asarray(checksums, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _MIX[0]
        z = (z ^ (z >> np.uint64(30))) * _MIX[1]
        z = (z ^ (z >> np.uint64(27))) * _MIX[2]
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def in_split(checksums: np.ndarray, split: str, val_fraction: float | None) -> np.ndarray:
    """Boolean mask of the documents that belong to `split` ("all" keeps every document)."""
    check_split(split, val_fraction)
    if split == "all":
        return np.ones(len(checksums), dtype=bool)
    held_out = unit_hash(checksums) < val_fraction
    return held_out if split == "val" else ~held_out


def split_suffix(split: str, val_fraction: float | None) -> str:
    """The part of an index name that says its split: '' for all, '-val0.01' / '-train0.01' otherwise."""
    check_split(split, val_fraction)
    return "" if split == "all" else f"-{split}{val_fraction:g}"
