"""Shared-memory slots that carry batches from a DataLoader worker to the trainer process.

A worker's batch pickled by value is copied several times on its way through the worker's result pipe (into
the pickle, into and out of the kernel's 64 KiB pipe buffer a piece at a time, out of the reader's buffer);
torch's own way (a new shared-memory segment per batch, its file descriptor sent over a socket) creates,
faults in and maps fresh memory every time. A Ring is made once per worker: a file in /dev/shm holding a few
slots, its space reserved up front (posix_fallocate: a full /dev/shm, as in a default Docker container, makes
the ring fail to open here rather than crash a process later). The worker builds a batch in a free slot
(claim; or copies one built elsewhere into a free slot: put) and sends only (ring name, slot, size); the
trainer process maps the ring once and reads the batch in the slot itself (lend: no copy), which is marked
free when the batch and every view of it are gone. A batch that does not fit, or finds no free slot, is sent
by value as before, so a trainer that falls behind, or keeps batches, never blocks a worker.

    header (4096 bytes)   magic, slot count, slot size, closed flag, one busy byte per slot
    slot k                at 4096 + k * slot_bytes

The trainer's side unlinks the file as soon as it has mapped it (both mappings live on), so nothing stays in
/dev/shm once the first batch has arrived; a worker that ends unlinks it too (if nobody opened it) and marks
the ring closed, and the trainer drops the mappings of closed rings and of rings whose worker is gone.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import mmap
import os
import secrets
import signal
import struct
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PilestoreError

HEADER = 4096
MAGIC = b"PSRING1\0"
_LAYOUT = struct.Struct("<8sIQ")  # magic, slots, slot_bytes
_CLOSED = 32  # header byte: the worker has ended
_BUSY = 64  # header bytes from here: one per slot, 1 while a batch waits in it
# A worker's batches in flight (DataLoader's prefetch_factor: 4 recommended, default 2), the one the trainer holds
# (its slot is lent, busy until the batch is dropped) and the one being built: prefetch_factor up to 4 in slots.
SLOTS = 6
FOLDER = Path("/dev/shm")
_claims = itertools.count()  # numbers Ring.claim's claims


class RingError(PilestoreError):
    """A batch's shared-memory ring that cannot be read."""


@dataclass
class Ring:
    """One process's slots (the worker's side writes, the trainer's side reads and frees)."""

    name: str
    map: mmap.mmap
    slots: int
    slot_bytes: int
    pid: int
    claimed: dict[int, tuple[int, int]] = field(default_factory=dict)  # worker side: address -> (slot, claim number)
    _watched: dict[int, tuple[weakref.ref, int, tuple[int, int]]] = field(default_factory=dict)  # claimed arrays
    lock: threading.Lock = field(default_factory=threading.Lock)  # worker side: claim() and put() pick slots
    _lent: dict[int, tuple[weakref.ref, int]] = field(default_factory=dict)  # trainer side: lend()'s arrays, slots

    @property
    def busy(self) -> np.ndarray:
        return np.frombuffer(self.map, np.uint8, self.slots, _BUSY)

    @property
    def closed(self) -> bool:
        return bool(self.map[_CLOSED])

    def slot(self, k: int, nbytes: int) -> np.ndarray:
        """Slot k's first nbytes bytes."""
        return np.frombuffer(self.map, np.uint8, nbytes, HEADER + k * self.slot_bytes)

    def claim(self, nbytes: int, dtype: np.dtype) -> np.ndarray | None:
        """A free slot, marked busy, as an array of nbytes // dtype.itemsize items for the worker to build its
        next batch in (no copy when it is sent: sent()); None when it does not fit or every slot is busy. A slot
        whose array is garbage-collected without having been sent is free again."""
        k = self._reserve(nbytes)
        if k is None:
            return None
        at = HEADER + k * self.slot_bytes
        # made from the map itself (not as a view of another array): numpy views of it keep it, and the claim, alive
        array = np.frombuffer(self.map, dtype, nbytes // dtype.itemsize, at)
        address, claim = self._address + at, (k, next(_claims))  # a later claim of the same slot is another claim
        self.claimed[address] = claim
        ref = weakref.ref(array, self._dropped)  # a weakref's callback: a third of weakref.finalize's cost
        self._watched[id(ref)] = (ref, address, claim)
        return array

    def sent(self, address: int) -> int | None:
        """The slot that claim() handed out at this address, now on its way to the trainer (which frees it);
        None when no unsent claimed slot starts there."""
        claim = self.claimed.pop(address, None)
        return None if claim is None else claim[0]

    def _dropped(self, ref: weakref.ref) -> None:
        _, address, claim = self._watched.pop(id(ref))
        if self.claimed.get(address) == claim:  # never sent: nobody else will free it
            self.claimed.pop(address, None)
            self.map[_BUSY + claim[0]] = 0

    @functools.cached_property
    def _address(self) -> int:
        """Where the map begins in this process's memory (read once: an array over the map is dropped at once,
        so the map can still be closed)."""
        return np.frombuffer(self.map, np.uint8, 1).ctypes.data

    def _reserve(self, nbytes: int) -> int | None:
        """A free slot of room for nbytes, marked busy (before any message that names it leaves this process);
        None when nbytes do not fit a slot or every slot is busy."""
        if nbytes > self.slot_bytes:
            return None
        with self.lock:
            at = self.map.find(b"\0", _BUSY, _BUSY + self.slots)
            if at < 0:
                return None
            self.map[at] = 1
            return at - _BUSY

    def put(self, data: np.ndarray) -> int | None:
        """Copy data (bytes of a contiguous array) into a free slot, mark it busy and return its number; None
        when it does not fit or every slot is busy (the caller sends the data by value instead)."""
        k = self._reserve(data.nbytes)
        if k is not None:
            self.slot(k, data.nbytes)[:] = data.reshape(-1).view(np.uint8)
        return k

    def lend(self, k: int, count: int, dtype: np.dtype) -> np.ndarray:
        """Slot k itself as an array of `count` items (no copy); the slot is marked free, for the worker to
        build another batch in, only when this array and every view of it (numpy or torch) are gone."""
        if not 0 <= k < self.slots or count * dtype.itemsize > self.slot_bytes:
            raise RingError(f"{self.name}: slot {k} of {count * dtype.itemsize} bytes does not fit this ring of "
                            f"{self.slots}")  # fmt: skip
        array = np.frombuffer(self.map, dtype, count, HEADER + k * self.slot_bytes)  # views of it keep it alive
        ref = weakref.ref(array, self._returned)
        self._lent[id(ref)] = (ref, k)
        return array

    def _returned(self, ref: weakref.ref) -> None:
        _, k = self._lent.pop(id(ref))
        with contextlib.suppress(ValueError):  # the map closed already: nobody writes the slot again anyway
            self.map[_BUSY + k] = 0


def create(slot_bytes: int, slots: int = SLOTS, folder: Path = FOLDER) -> Ring | None:
    """A new ring in `folder` with room for `slots` batches of slot_bytes, or None where there is no such
    folder or not enough room in it (the caller sends batches by value)."""
    slot_bytes = -(-slot_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
    path = folder / f"pilestore-ring-{os.getpid()}-{secrets.token_hex(6)}"
    size = HEADER + slots * slot_bytes
    if not hasattr(os, "posix_fallocate"):  # cannot reserve the space up front (macOS): no ring
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        os.posix_fallocate(fd, 0, size)  # the space is there now, or this fails (no SIGBUS on a later write)
        mapped = mmap.mmap(fd, size)
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    finally:
        os.close(fd)
    mapped[: _LAYOUT.size] = _LAYOUT.pack(MAGIC, slots, slot_bytes)
    return Ring(str(path), mapped, slots, slot_bytes, os.getpid())


def close(ring: Ring) -> None:
    """The worker's side is done: mark the ring closed and remove its file if the trainer never opened it."""
    ring.map[_CLOSED] = 1
    Path(ring.name).unlink(missing_ok=True)


def remove_on_sigterm(ring: Ring) -> None:
    """Remove the ring's file if this process is terminated: multiprocessing ends daemonic DataLoader workers
    with SIGTERM at interpreter exit, and no Finalize runs then; a ring the trainer never mapped (its batches all
    went by value) would stay in /dev/shm. The process then ends of the signal as it would have. Installed from
    the main thread only (Python runs signal handlers there), and not where SIGTERM is ignored (the process
    goes on, its ring with it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return

    def handler(signum: int, frame: Any) -> None:
        close(ring)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)


_opened: dict[str, Ring] = {}  # the trainer's side: rings mapped in this process, by name
_lock = threading.Lock()  # DataLoader's pin-memory thread unpickles batches too


def opened(name: str, pid: int) -> Ring:
    """The ring `name` of worker `pid`, mapped in this process once (its file is removed as soon as it is)."""
    with _lock:
        ring = _opened.get(name)
        if ring is None:
            ring = _opened[name] = _open(name, pid)
            for other in [r for r in _opened.values() if r is not ring and _ended(r)]:
                del _opened[other.name]
                with contextlib.suppress(BufferError):  # a view of it still alive: the map goes with the view
                    other.map.close()
        return ring


def _open(name: str, pid: int) -> Ring:
    try:
        fd = os.open(name, os.O_RDWR)
    except OSError as err:
        raise RingError(
            f"{name}: the shared memory of DataLoader worker {pid}'s batches is gone ({err.strerror}); was the "
            "batch unpickled in a process other than the DataLoader's own? Pickle batches with plain pickle there"
        ) from err
    try:
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size) if size >= HEADER else None
    finally:
        os.close(fd)
        Path(name).unlink(missing_ok=True)  # both processes keep their mappings; nothing is left in /dev/shm
    magic, slots, slot_bytes = _LAYOUT.unpack_from(mapped) if mapped is not None else (b"", 0, 0)
    if mapped is None or magic != MAGIC or size != HEADER + slots * slot_bytes:
        if mapped is not None:
            mapped.close()
        raise RingError(f"{name}: not a pilestore batch ring ({size} bytes, magic {magic!r})")
    return Ring(name, mapped, slots, slot_bytes, pid)


def _ended(ring: Ring) -> bool:
    """Whether the ring's worker has closed it or is gone."""
    if ring.closed:
        return True
    try:
        os.kill(ring.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
