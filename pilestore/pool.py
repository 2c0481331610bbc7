"""Memory that a process reuses for the batches it receives, instead of fresh memory for each one.

A DataLoader with no workers builds every batch in a new buffer, as a worker does a batch that finds no free
slot in its ring (pilestore.ring). Fresh memory of a large batch is faulted
in a page at a time on first write, and glibc often returns large freed blocks to the kernel: in some trainer
processes a batch of 128 lean int32 samples at seq_len 2048 (2 MB) cost ~320 page faults every time, 5x the
time of the copy itself. A Pool keeps the memory of batches nobody holds any more and hands it out again,
already faulted in.

    pool = Pool()
    out = pool.take(1000, np.dtype(np.int32))     # an array of 1,000 int32, its contents undefined
    tensor = torch.from_numpy(out)                # views of it (numpy or torch) keep its memory theirs
    del out, tensor                               # the last view gone: the memory goes back to the pool

An array that take() returns is the only way to its memory: it views memory through an object of its own,
not through the pooled array, so every numpy view of it (and every tensor made from it or its views) keeps it
alive, and its memory returns to the pool only when the last of them is gone (a weak reference's callback).
Memory is reused for a request of the same size class (sizes rounded up to 1/16 of their power of two, at
least one page); at most `keep` free blocks are held, the most recently returned ones, and the rest are freed.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

PAGE = 4096
_pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # every pool, for a forked child to renew their locks


def size_class(nbytes: int) -> int:
    """The bytes of the block that serves a request of nbytes: nbytes rounded up to a multiple of 1/16 of its
    power of two (at most 1/16 more memory), and to whole pages."""
    step = max(PAGE, 1 << max(nbytes.bit_length() - 5, 0))
    return -(-max(nbytes, 1) // step) * step


class Pool:
    """Blocks of memory reused by size class (see the module's docstring); safe to use from several threads."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._free: OrderedDict[int, list[np.ndarray]] = OrderedDict()  # size class -> free blocks, oldest first
        self._lock = threading.RLock()  # re-entered if a weakref callback runs inside take() (cyclic GC)
        self._lent: dict[int, tuple[weakref.ref, np.ndarray]] = {}  # id of a weak ref to an array out -> it, block
        self.reused = 0  # blocks handed out again (for tests and benchmarks)
        _pools.add(self)

    def take(self, count: int, dtype: np.dtype) -> np.ndarray:
        """An array of `count` items of `dtype` (contents undefined), in a free block of its size class if there
        is one, else in new memory; the block returns to the pool when the array and all its views are gone."""
        if count < 0:
            raise ValueError(f"cannot take {count} items")
        size = size_class(count * dtype.itemsize)
        block = self._reuse(size)
        if block is None:
            block = np.empty(size, np.uint8)
        else:
            self.reused += 1
        array = np.frombuffer(memoryview(block), dtype, count)  # its base is the memoryview, not block
        ref = weakref.ref(array, self._returned)  # a weakref's callback: a third of weakref.finalize's cost
        self._lent[id(ref)] = (ref, block)
        return array

    def free_blocks(self) -> int:
        """Blocks held for reuse now."""
        with self._lock:
            return sum(map(len, self._free.values()))

    def _reuse(self, size: int) -> np.ndarray | None:
        with self._lock:
            blocks = self._free.get(size)
            if not blocks:
                return None
            block = blocks.pop()
            if not blocks:
                del self._free[size]
            return block

    def _returned(self, ref: weakref.ref) -> None:
        _, block = self._lent.pop(id(ref))
        self._give(block)

    def _give(self, block: np.ndarray) -> None:
        with self._lock:
            self._free.setdefault(block.nbytes, []).append(block)
            self._free.move_to_end(block.nbytes)
            while self.free_blocks() > self.keep:  # drop the oldest: the least recently returned size class
                size, blocks = next(iter(self._free.items()))
                blocks.pop(0)
                if not blocks:
                    del self._free[size]


def _after_fork() -> None:
    """A forked child (a DataLoader worker) gets new locks: another thread of the parent may have held one."""
    for pool in list(_pools):
        pool._lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork)
