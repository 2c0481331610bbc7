"""Token blocks hashed in one kernel (pilestore.blockhash), against python-xxhash and tokens.block_sums on real
files; its use for whole batches, and the Python way beside it, is tested in test_torch_dataset.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xxhash

from pilestore import blockhash
from pilestore.assemble import PART_SHIFT
from pilestore.tokens import BLOCK, block_sums


def test_the_exported_function_is_used_here_and_hashes_as_xxhash_does() -> None:
    fn = blockhash.function()
    assert fn is not None  # python-xxhash's wheel on this platform exports it: batches take the kernel
    data = np.random.default_rng(1).integers(0, 256, 3 * BLOCK, dtype=np.uint8)
    for n in [*range(0, 300), *np.random.default_rng(2).integers(300, 3 * BLOCK, 200).tolist()]:
        assert fn(data.ctypes.data, n) == xxhash.xxh3_64_intdigest(data[:n].tobytes()), n


def test_a_function_that_hashes_otherwise_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = xxhash.xxh3_64_intdigest
    monkeypatch.setattr(xxhash, "xxh3_64_intdigest", lambda data: real(data) if len(data) < 1000 else 0)
    assert blockhash.function.__wrapped__() is None  # differs on long inputs only: still refused
    monkeypatch.setattr(xxhash, "xxh3_64_intdigest", real)
    assert blockhash.function.__wrapped__() is not None


def _files(tmp_path: Path, sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token files of these sizes in bytes (the last block of each shorter than BLOCK) and their block sums."""
    datas, sums = [], []
    for p, size in enumerate(sizes):
        path = tmp_path / f"p{p}.tokens"
        path.write_bytes(np.random.default_rng(p).integers(0, 256, size, dtype=np.uint8).tobytes())
        datas.append(np.fromfile(path, dtype=np.uint8))
        sums.append(block_sums(path))
    return datas, sums


def _first_mismatch(keys: list[int], datas: list[np.ndarray], sums: list[np.ndarray]) -> int:
    return blockhash.first_mismatch(
        blockhash.function(),
        np.array(keys, dtype=np.int64),
        np.array([d.ctypes.data for d in datas], dtype=np.int64),
        np.array([d.nbytes for d in datas], dtype=np.int64),  # uint8 "tokens": one byte an item
        1,
        np.array([s.ctypes.data for s in sums], dtype=np.int64),
        np.array([len(s) for s in sums], dtype=np.int64),
    )


def test_the_first_block_that_differs_from_its_checksum_is_found(tmp_path: Path) -> None:
    datas, sums = _files(tmp_path, [5 * BLOCK + 100, 2 * BLOCK + 7])
    keys = [0, 3, 5, 1 << PART_SHIFT, (1 << PART_SHIFT) | 2]  # 5 and 2: the files' short last blocks
    assert _first_mismatch(keys, datas, sums) == -1
    datas[1][2 * BLOCK + 3] ^= 0x10  # a byte of partition 1's last block
    assert _first_mismatch(keys, datas, sums) == 4
    datas[0][3 * BLOCK] ^= 0x01
    assert _first_mismatch(keys, datas, sums) == 1
    datas[0][3 * BLOCK] ^= 0x01
    assert _first_mismatch(keys[:4], datas, sums) == -1


@pytest.mark.parametrize("key", [6, (1 << PART_SHIFT) | 3, 2 << PART_SHIFT, 1 << 39])  # 1 << 39: far past the sums
def test_a_block_without_a_checksum_is_a_mismatch(tmp_path: Path, key: int) -> None:
    datas, sums = _files(tmp_path, [5 * BLOCK + 100, 2 * BLOCK + 7])  # 6 and 3 blocks; no partition 2
    assert _first_mismatch([0, key], datas, sums) == 1


def test_checksums_for_bytes_a_file_no_longer_has_do_not_match(tmp_path: Path) -> None:
    datas, sums = _files(tmp_path, [3 * BLOCK])
    assert _first_mismatch([0, 1, 2], datas, sums) == -1
    assert _first_mismatch([0, 1, 2], [datas[0][: 2 * BLOCK]], sums) == 2  # a shortened file: hashed empty
