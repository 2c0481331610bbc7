"""Token files of synthetic views for the benchmarks: every token id 0, every token 0 bytes long, stored sparse."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_zero_tokens(view: Path, tokens: int, partition: int = 0) -> None:
    """Partition files of `tokens` zero uint16 token ids (sparse: reads give zeros, nothing is stored), their
    byte lengths (all 0, no long ones) and the xxh3 block checksums that readers check them against."""
    import xxhash

    from pilestore.tokens import BLOCK

    stem = view / f"p{partition:05d}"
    for suffix, itemsize in ((".tokens", 2), (".lens", 1)):
        with open(stem.with_suffix(suffix), "wb") as fh:
            fh.truncate(tokens * itemsize)
    stem.with_suffix(".long").write_bytes(b"")
    full, tail = divmod(tokens * 2, BLOCK)
    sums = np.full(full + bool(tail), xxhash.xxh3_64_intdigest(bytes(BLOCK)), dtype="<u8")
    if tail:
        sums[-1] = xxhash.xxh3_64_intdigest(bytes(tail))
    sums.tofile(stem.with_suffix(".sums"))
