"""Reused batch memory (pilestore.pool): memory goes back only when nothing views it; a real DataLoader whose
trainer holds on to its batches is tested in test_torch_dataset.py."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from pilestore.pool import PAGE, Pool, size_class


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


@pytest.mark.parametrize("nbytes", [0, 1, 4095, 4096, 4097, 65_536, 300_000, 2_098_176, 6_300_001, 1 << 30])
def test_a_size_class_holds_the_request_with_at_most_a_sixteenth_to_spare(nbytes: int) -> None:
    size = size_class(nbytes)
    assert size >= nbytes and size % PAGE == 0 and size_class(size) == size
    assert size <= max(PAGE, nbytes + nbytes // 16 + PAGE)


def test_memory_is_reused_only_when_every_view_of_it_is_gone() -> None:
    torch = pytest.importorskip("torch")
    pool = Pool()
    first = pool.take(1000, np.dtype(np.int32))
    assert first.dtype == np.int32 and first.shape == (1000,) and first.flags.writeable
    first[:] = np.arange(1000)
    at = address(first)
    views = [first[10:20], first.view(np.uint8), torch.from_numpy(first)[5:9], torch.from_numpy(first).view(-1, 8)]
    del first
    for _ in range(len(views)):
        gc.collect()
        other = pool.take(1000, np.dtype(np.int32))  # the first block is still viewed: other memory
        assert address(other) != at
        other[:] = -1
        del other
        assert np.array_equal(views[0], np.arange(10, 20))  # never written over
        views.pop()
    gc.collect()
    reused = pool.reused
    again = pool.take(900, np.dtype(np.int32))  # same size class: the block returned last
    assert address(again) == at and pool.reused == reused + 1 and pool.free_blocks() == 1


def test_a_pool_keeps_at_most_keep_free_blocks_the_latest_returned() -> None:
    pool = Pool(keep=3)
    arrays = [pool.take(PAGE * (k + 1), np.dtype(np.uint8)) for k in range(6)]  # six size classes
    addresses = [address(a) for a in arrays]
    while arrays:
        arrays.pop(0)
    assert pool.free_blocks() == 3
    kept = {address(pool.take(PAGE * (k + 1), np.dtype(np.uint8))) for k in range(3, 6)}
    assert kept == set(addresses[3:])  # the last three returned; the older ones were freed
    with pytest.raises(ValueError, match="cannot take -1"):
        pool.take(-1, np.dtype(np.uint8))


def test_threads_taking_and_dropping_never_share_live_memory() -> None:
    pool = Pool(keep=4)
    failures: list[str] = []

    def work(tag: int) -> None:
        for k in range(300):
            held = [pool.take(2048 + 512 * (k % 3), np.dtype(np.int64)) for _ in range(3)]
            for j, array in enumerate(held):
                array[:] = tag * 1_000_000 + k * 10 + j
            for j, array in enumerate(held):
                if not (array == tag * 1_000_000 + k * 10 + j).all():
                    failures.append(f"thread {tag} step {k}: memory written by another holder")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and pool.reused > 0 and pool.free_blocks() <= 4
