"""The shared-memory ring a DataLoader worker sends batches through (pilestore.ring), on real files and maps;
the ring under a real DataLoader is tested in test_torch_dataset.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pilestore import ring as rings


def _read(trainer: rings.Ring, k: int, count: int) -> np.ndarray:
    """The trainer's side reads slot k (int32 items) and drops it, which frees the slot: a copy of the batch."""
    lent = trainer.lend(k, count, np.dtype(np.int32))
    batch = lent.copy()
    del lent
    return batch


def test_a_batch_goes_through_a_slot_and_frees_it(tmp_path: Path) -> None:
    ring = rings.create(10_000, slots=3, folder=tmp_path)
    assert ring is not None and ring.slot_bytes % 4096 == 0 and ring.slot_bytes >= 10_000
    batches = [np.arange(k * 1000, k * 1000 + 2500, dtype=np.int32) for k in range(4)]
    slots = [ring.put(b) for b in batches]
    assert slots == [0, 1, 2, None]  # the fourth finds no free slot: its caller sends it by value
    other = rings.opened(ring.name, os.getpid())  # the trainer's side: a mapping of its own
    assert other is not ring and not Path(ring.name).exists()  # nothing left in the folder once opened
    assert np.array_equal(_read(other, 1, 2500), batches[1]) and ring.busy.tolist() == [1, 0, 1]
    assert ring.put(batches[3]) == 1  # the freed slot is used again, the others still hold their batches
    for k, expected in ((0, batches[0]), (1, batches[3]), (2, batches[2])):
        assert np.array_equal(_read(other, k, 2500), expected)
    assert ring.busy.tolist() == [0, 0, 0]
    assert ring.put(np.zeros(ring.slot_bytes + 1, np.uint8)) is None  # too big for a slot: by value
    with pytest.raises(rings.RingError, match="does not fit"):
        other.lend(3, 2500, np.dtype(np.int32))


def test_a_batch_built_in_a_claimed_slot_is_sent_without_a_copy_or_freed_when_dropped(tmp_path: Path) -> None:
    import gc

    ring = rings.create(8192, slots=2, folder=tmp_path)
    assert ring is not None
    first = ring.claim(4000, np.dtype(np.int32))
    assert first is not None and first.dtype == np.int32 and len(first) == 1000 and ring.busy.tolist() == [1, 0]
    first[:] = np.arange(1000)  # the worker builds its batch in the slot
    second = ring.claim(8, np.dtype(np.int64))
    assert second is not None and ring.busy.tolist() == [1, 1]
    assert ring.claim(8, np.dtype(np.int64)) is None and ring.put(np.zeros(2, np.int64)) is None  # all busy
    assert ring.claim(ring.slot_bytes + 8, np.dtype(np.int64)) is None  # too big
    k = ring.sent(first.ctypes.data)
    assert k == 0 and ring.sent(first.ctypes.data) is None  # sent once; the trainer frees it
    del first, second
    gc.collect()
    assert ring.busy.tolist() == [1, 0]  # the unsent one is free again, the sent one waits for the trainer
    trainer = rings.opened(ring.name, os.getpid())
    assert np.array_equal(_read(trainer, 0, 1000), np.arange(1000)) and ring.busy.tolist() == [0, 0]
    old = ring.claim(4000, np.dtype(np.int32))  # sent, read by the trainer, yet still alive in the worker
    assert old is not None and ring.sent(old.ctypes.data) == 0
    _read(trainer, 0, 1000)
    new = ring.claim(4000, np.dtype(np.int32))  # the same slot, claimed again for the next batch
    assert new is not None and new.ctypes.data == old.ctypes.data and ring.busy.tolist() == [1, 0]
    del old
    gc.collect()
    assert ring.busy.tolist() == [1, 0]  # the old batch's end does not free the new one's slot
    rings.close(ring)


def test_a_view_of_a_claimed_slot_keeps_it_claimed(tmp_path: Path) -> None:
    """Only dropping every view of a claimed slot frees it: a slot freed under a live view would be built
    over by the next batch."""
    import gc

    ring = rings.create(4096, slots=1, folder=tmp_path)
    assert ring is not None
    array = ring.claim(4000, np.dtype(np.int32))
    assert array is not None
    views = [array[10:20], array.view(np.uint8), array.reshape(2, 500)]
    del array
    while views:
        gc.collect()
        assert ring.busy.tolist() == [1] and ring.claim(8, np.dtype(np.int64)) is None  # a view still lives
        views.pop()
    gc.collect()
    assert ring.busy.tolist() == [0]
    rings.close(ring)


def test_a_lent_slot_stays_busy_until_every_view_of_it_is_gone(tmp_path: Path) -> None:
    """The trainer's side reads a batch where it lies (lend): the worker may build in that slot again only
    once the batch and every numpy or torch view of it are gone; until then the batch stays as it was sent."""
    import gc

    import torch

    ring = rings.create(4096, slots=2, folder=tmp_path)
    assert ring is not None
    trainer = rings.opened(ring.name, os.getpid())
    assert ring.put(np.arange(1000, dtype=np.int32)) == 0 and ring.put(np.full(1000, 7, np.int32)) == 1
    first = trainer.lend(0, 1000, np.dtype(np.int32))
    assert np.array_equal(first, np.arange(1000)) and not np.shares_memory(first, np.arange(1000))
    tensor = torch.from_numpy(first)[10:20]  # as a batch's fields are: torch views of the lent array
    held = first.reshape(10, 100)[2]
    del first
    gc.collect()
    assert ring.busy.tolist() == [1, 1] and ring.claim(8, np.dtype(np.int64)) is None  # both still held
    second = trainer.lend(1, 1000, np.dtype(np.int32))
    del second
    gc.collect()
    assert ring.busy.tolist() == [1, 0]  # the dropped one is free, the held one is not
    again = ring.claim(4000, np.dtype(np.int32))
    assert again is not None and ring.busy.tolist() == [1, 1]
    again[:] = -1  # the worker builds its next batch in the freed slot: the held batch is not touched
    assert tensor.tolist() == list(range(10, 20)) and held.tolist() == list(range(200, 300))
    del tensor
    gc.collect()
    assert ring.busy.tolist() == [1, 1]  # `held` still views slot 0
    del held
    gc.collect()
    assert ring.busy.tolist() == [0, 1]
    with pytest.raises(rings.RingError, match="does not fit"):
        trainer.lend(2, 10, np.dtype(np.int32))
    del again
    rings.close(ring)


def test_the_trainer_side_drops_rings_whose_worker_ended(tmp_path: Path) -> None:
    first = rings.create(4096, folder=tmp_path)
    second = rings.create(4096, folder=tmp_path)
    assert first is not None and second is not None
    rings.opened(first.name, os.getpid())
    rings.close(first)  # the worker's side ends (after the trainer opened it: the file is already gone)
    rings.opened(second.name, os.getpid())
    assert first.name not in rings._opened and second.name in rings._opened
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    third = rings.create(4096, folder=tmp_path)
    assert third is not None
    rings.opened(third.name, int(gone.stdout))  # a worker that is gone without closing (killed)
    fourth = rings.create(4096, folder=tmp_path)
    assert fourth is not None
    rings.opened(fourth.name, os.getpid())
    assert third.name not in rings._opened and second.name in rings._opened  # the live one stays
    for ring in (second, fourth):
        rings.close(ring)


def test_a_ring_nobody_opened_is_removed_when_its_worker_ends(tmp_path: Path) -> None:
    ring = rings.create(4096, folder=tmp_path)
    assert ring is not None and Path(ring.name).exists()
    rings.close(ring)
    assert ring.closed and not list(tmp_path.iterdir())


def test_no_folder_or_no_room_means_no_ring(tmp_path: Path) -> None:
    assert rings.create(4096, folder=tmp_path / "missing") is None
    if Path("/dev/shm").is_dir():
        free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
        assert rings.create(free + (1 << 30), slots=1) is None  # refused now, not a SIGBUS on a later write
        assert not [p for p in Path("/dev/shm").glob(f"pilestore-ring-{os.getpid()}-*")]


def test_a_missing_or_foreign_ring_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(rings.RingError, match=r"worker 123's batches is gone"):
        rings.opened(str(tmp_path / "pilestore-ring-123-gone"), 123)
    foreign = tmp_path / "pilestore-ring-1-foreign"
    foreign.write_bytes(b"\0" * 8192)
    with pytest.raises(rings.RingError, match="not a pilestore batch ring"):
        rings.opened(str(foreign), os.getpid())


def test_a_terminated_worker_removes_its_ring_unless_it_ignores_termination(tmp_path: Path) -> None:
    """remove_on_sigterm in a process of its own: SIGTERM removes the ring's file and still ends the process;
    where SIGTERM is ignored the process goes on, so its ring stays (a handler there would remove a ring in use)."""
    script = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from pilestore import ring as rings\n"
        "if sys.argv[2] == 'ignore':\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "ring = rings.create(4096, folder=Path(sys.argv[1]))\n"
        "rings.remove_on_sigterm(ring)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)\n"
        "print('alive', Path(ring.name).exists())\n"
    )
    ended = subprocess.run([sys.executable, "-c", script, str(tmp_path), "end"], capture_output=True, text=True)
    assert ended.returncode == -15 and "alive" not in ended.stdout and not list(tmp_path.iterdir())
    ignored = subprocess.run([sys.executable, "-c", script, str(tmp_path), "ignore"], capture_output=True, text=True)
    assert ignored.returncode == 0 and ignored.stdout.strip() == "alive True", ignored.stderr
