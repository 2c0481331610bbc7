"""Shuffling and sharding as pure index math: a few integers of state, nothing of size N on any rank.

    epoch order     position g in [0, N)  ->  sample permutation(g)        (seeded per epoch, bijective)
    ranks           rank r of W takes positions c + r, c + r + W, ...       (c = global samples consumed)

Progress is counted in global samples, so a run stopped after c samples resumes exactly at position c on
any number of ranks (at constant global batch size, c is a multiple of every world size used).

The permutation is a 4-round Feistel network over the smallest even-bit domain >= N, with cycle-walking
for values >= N: a bijection computed per index, O(1) memory (Grain's index shuffle works the same way).
"""

from __future__ import annotations

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


def rank_positions(start: int, stop: int, rank: int, world: int) -> np.ndarray:
    """Global positions in [start, stop) that rank `rank` of `world` reads: start + rank, start + rank + world, ..."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return np.arange(start + rank, stop, world, dtype=np.int64)
