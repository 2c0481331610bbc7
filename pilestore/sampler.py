"""Shuffling and sharding as pure index math: a few integers of state, nothing of size N on any rank.

    counts          c = 0, 1, 2, ...: the samples of an epoch in the order the run consumes them
    exclusions      position ranges skipped in every epoch: count c -> the c-th position not excluded
    epoch order     position g in [0, N)  ->  sample permutation(g)        (seeded per epoch, bijective)
    ranks           rank r of W reads counts c0 + r, c0 + r + W, ...      (c0 = global samples consumed)
    steps           step s of a run at global batch B consumes counts [s * B, (s + 1) * B) of its epoch

Progress is counted in global samples, so a run stopped after c samples resumes exactly at count c on any
number of ranks (at constant global batch size, c is a multiple of every world size used), and a step's
samples do not depend on the number of ranks (EpochOrder.step).

The permutation is a 4-round Feistel network over the smallest even-bit domain >= N, with cycle-walking
for values >= N: a bijection computed per index, O(1) memory (Grain's index shuffle works the same way).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64 of x ^ key (uint64 arrays wrap around, as the mixer expects)."""
    with np.errstate(over="ignore"):
        z = (x ^ key) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=64)
def _round_keys(seed: int, rounds: int) -> tuple[np.uint64, ...]:
    base = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64), np.uint64(0x5EED))[0]
    return tuple(_mix(np.array([i], dtype=np.uint64), base)[0] for i in range(rounds))


@dataclass(frozen=True, slots=True)
class Permutation:
    """A seeded bijection of [0, n), evaluated per index (vectorised over numpy arrays)."""

    n: int
    seed: int
    rounds: int = 4

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")

    @property
    def _half_bits(self) -> int:
        bits = max(2, int(self.n - 1).bit_length() if self.n > 1 else 2)
        return (bits + 1) // 2

    def _keys(self) -> tuple[np.uint64, ...]:
        return _round_keys(self.seed, self.rounds)

    def _feistel(self, x: np.ndarray, keys: tuple[np.uint64, ...]) -> np.ndarray:
        half = np.uint64(self._half_bits)
        low_mask = np.uint64((1 << self._half_bits) - 1)
        left, right = x >> half, x & low_mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & low_mask)
        return (left << half) | right

    def __call__(self, positions: np.ndarray | int) -> np.ndarray:
        """permutation(position) for each position in [0, n)."""
        x = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        if len(x) and (x.min() < 0 or x.max() >= self.n):
            raise IndexError(f"positions must be in [0, {self.n})")
        keys = self._keys()
        out = self._feistel(x.astype(np.uint64), keys)
        outside = out >= np.uint64(self.n)
        while outside.any():  # cycle-walk back into [0, n); the domain is < 4n, so this ends quickly
            out[outside] = self._feistel(out[outside], keys)
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)


def epoch_seed(seed: int, epoch: int) -> int:
    """The permutation seed of an epoch: a different order every epoch, the same for the same (seed, epoch)."""
    return int(_mix(np.array([epoch], dtype=np.uint64), np.uint64(seed & 0xFFFFFFFFFFFFFFFF))[0])


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-empty [start, stop) ranges covering the same positions."""
    merged: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges):
        if not 0 <= a <= b:
            raise ValueError(f"excluded range ({a}, {b}) must satisfy 0 <= start <= stop")
        if a == b:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


@dataclass(frozen=True)
class EpochOrder:
    """Which sample each rank reads at each count of an epoch: the pure core of PileSampler."""

    num_samples: int
    world: int = 1
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    exclude: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.world < 1:
            raise ValueError(f"world size must be >= 1, got {self.world}")
        object.__setattr__(self, "exclude", merge_ranges(self.exclude))

    @property
    def kept(self) -> int:
        """Samples per epoch left after the exclusions."""
        n = self.num_samples
        return n - sum(max(0, min(b, n) - a) for a, b in self.exclude if a < n)

    @property
    def per_epoch(self) -> int:
        """Global samples per epoch: kept samples trimmed (drop_last) or padded (wrapping) to a multiple of W."""
        k, w = self.kept, self.world
        return (k // w) * w if self.drop_last else -(-k // w) * w

    def positions(self, counts: np.ndarray) -> np.ndarray:
        """Epoch positions of counts (counts past the kept samples wrap around: the padding of drop_last=False)."""
        c = np.asarray(counts, dtype=np.int64) % max(1, self.kept)
        if not self.exclude:
            return c
        starts = np.array([a for a, _ in self.exclude], dtype=np.int64)
        lengths = np.array([b - a for a, b in self.exclude], dtype=np.int64)
        skipped_before = np.concatenate(([0], np.cumsum(lengths)))
        first_count = starts - skipped_before[:-1]  # the count that would land on each range's start
        return c + skipped_before[np.searchsorted(first_count, c, side="right")]

    def indices(self, counts: np.ndarray, epoch: int) -> np.ndarray:
        """Sample indices in [0, N) read at these counts of `epoch`."""
        positions = self.positions(counts)
        if not self.shuffle or not len(positions):
            return positions
        return Permutation(self.num_samples, epoch_seed(self.seed, epoch))(positions)

    def rank_counts(self, start: int, rank: int, chunk: int = 8192) -> Iterator[np.ndarray]:
        """The counts rank `rank` reads from `start` to the epoch's end, `chunk` at a time (O(chunk) memory)."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank must be in [0, {self.world}), got {rank}")
        first, stop = start + rank, self.per_epoch
        for at in range(first, stop, chunk * self.world):
            yield np.arange(at, min(stop, at + chunk * self.world), self.world, dtype=np.int64)

    def rank_len(self, start: int, rank: int) -> int:
        """How many counts rank `rank` reads from `start` to the epoch's end."""
        first = start + rank
        return max(0, -(-(self.per_epoch - first) // self.world))

    def steps_per_epoch(self, global_batch: int) -> int:
        return self.per_epoch // global_batch

    def step(self, step: int, global_batch: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(epoch, counts, sample indices) of a global step, for a run that starts each epoch at count 0 and
        drops an epoch's incomplete last batch; rank r of W holds counts[r::W]."""
        if global_batch < 1 or global_batch % self.world:
            raise ValueError(f"global batch {global_batch} must be a positive multiple of the world size {self.world}")
        per_epoch = self.steps_per_epoch(global_batch)
        if per_epoch == 0:
            raise ValueError(f"a global batch of {global_batch} is more than an epoch ({self.per_epoch} samples)")
        epoch, within = divmod(step, per_epoch)
        counts = np.arange(within * global_batch, (within + 1) * global_batch, dtype=np.int64)
        return epoch, counts, self.indices(counts, epoch)
