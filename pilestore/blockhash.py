"""A batch's token blocks checked against their checksums in one numba kernel, not a Python call per block.

tokens.py checks every 4 KiB block a read touches with python-xxhash's xxh3_64, one Python call per block. A
batch of 16 samples at seq_len 2048 reads ~43 blocks, and those calls (with the slicing and the per-partition
split around them) cost a third of the batch. first_mismatch hashes all of a batch's blocks in one kernel
with the C function python-xxhash wraps (XXH3_64bits, which its extension module exports), handed to the
kernel as a ctypes function so that the kernel still caches.

That symbol is not python-xxhash's documented API, so function() uses it only after it has given the same
hashes as xxhash.xxh3_64_intdigest on inputs of every length class XXH3 treats apart; where it is missing or
differs (another build, another platform) function() is None and the caller checks blocks the Python way.

    fn = function()
    bad = first_mismatch(fn, keys, addresses, part_tokens, itemsize, sum_addresses, sum_counts)  # -1: all match
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numba
import numpy as np

from .assemble import BLOCK_MASK, PART_SHIFT, _pointer
from .jit import kernel
from .tokens import BLOCK

_PROBE_LENGTHS = (0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 1025, BLOCK - 1, BLOCK, 3 * BLOCK + 5)


@functools.cache
def function() -> Any | None:
    """python-xxhash's XXH3_64bits as a ctypes function (data pointer, length) -> uint64, or None where it is
    not exported or does not hash as xxhash.xxh3_64_intdigest does."""
    try:
        import xxhash
        from xxhash import _xxhash

        fn = ctypes.CDLL(_xxhash.__file__).XXH3_64bits
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_uint64
    probe = np.random.default_rng(0).integers(0, 256, max(_PROBE_LENGTHS), dtype=np.uint8)
    for n in _PROBE_LENGTHS:
        if fn(probe.ctypes.data, n) != xxhash.xxh3_64_intdigest(probe[:n].tobytes()):
            return None
    return fn


@kernel(nogil=True)
def first_mismatch(
    fn: Any,
    keys: np.ndarray,
    addresses: np.ndarray,
    part_tokens: np.ndarray,
    itemsize: int,
    sum_addresses: np.ndarray,
    sum_counts: np.ndarray,
) -> int:
    """The position in `keys` (partition << PART_SHIFT | block, as assemble.fill returns them) of the first
    block whose xxh3_64 differs from its checksum, or that has no checksum; -1 when every block matches.
    Partition p's token file is part_tokens[p] items of itemsize bytes at addresses[p] (assemble.token_files);
    its checksums, sum_counts[p] uint64 at sum_addresses[p]. Block b is bytes b * BLOCK up to (b + 1) * BLOCK
    of its file, the last one shorter, as tokens.block_sums made them."""
    like = np.empty(0, np.uint64)
    for j in range(len(keys)):
        p = keys[j] >> PART_SHIFT
        block = keys[j] & BLOCK_MASK
        if p < 0 or p >= len(addresses) or block >= sum_counts[p]:
            return j
        sums = numba.carray(_pointer(sum_addresses[p], like), sum_counts[p])
        n = max(min(BLOCK, part_tokens[p] * itemsize - block * BLOCK), 0)
        if fn(addresses[p] + block * BLOCK, n) != sums[block]:
            return j
    return -1
