"""Subset selection and weights over a sample index, as pure index math (O(subsets) memory).

Each sample belongs to one subset (samples.py: the subset of its largest span). A mixture gives subset s,
with n_s samples, a weight w_s >= 0 counted in epochs, as in the Pile paper's Table 1 (Wikipedia (en) x3,
PubMed Central x2, ...). An epoch of the mixture has m_s = round(w_s * n_s) positions of subset s:

    subsets laid end to end in name order        position v in [0, sum m_s)  ->  subset s, offset o
    o < floor(w_s) * n_s   (whole repetitions)   sample number o % n_s of subset s
    otherwise              (the partial one)     sample number P_s(o % n_s) of subset s, P_s a permutation of
                                                 [0, n_s) seeded by (seed, s): a uniform random part of s,
                                                 the same in every epoch
    "sample number k of subset s" is by_subset[first_s + k] (the index's samples grouped by subset)

The sampler then shuffles the mixture's positions like any dataset's. Nothing is drawn at random per step,
so the proportions are exact: realised() reports them from the index (samples and target bytes per subset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sampler import Permutation, epoch_seed


@dataclass(frozen=True)
class Mixture:
    """Positions of a weighted epoch over subsets; `names`, `counts`, `weights` and `take` are per subset."""

    names: tuple[str, ...]
    counts: np.ndarray  # n_s: samples of each subset in the index
    weights: np.ndarray  # w_s
    take: np.ndarray  # m_s: positions of each subset per epoch
    seed: int = 0

    @classmethod
    def of(
        cls,
        names: Sequence[str],
        counts: Sequence[int],
        weights: Mapping[str, float] | None = None,
        subsets: Sequence[str] | None = None,
        seed: int = 0,
    ) -> Mixture:
        """weights: epochs per subset (unnamed subsets: 1.0); subsets: keep only these (the others weigh 0)."""
        known = set(names)
        for given, what in ((weights or {}, "weights"), (subsets or (), "subsets")):
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(f"{what} name unknown subsets {unknown}; the index has {sorted(known)}")
        w = np.array([float((weights or {}).get(name, 1.0)) for name in names], dtype=np.float64)
        if subsets is not None:
            w[[name not in set(subsets) for name in names]] = 0.0
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite and >= 0, got {dict(zip(names, w.tolist(), strict=True))}")
        n = np.asarray(counts, dtype=np.int64)
        take = np.floor(w * n + 0.5).astype(np.int64)
        if take.sum() == 0:
            raise ValueError("the mixture selects no sample: give some subset with samples a weight > 0")
        return cls(tuple(names), n, w, take, seed)

    @property
    def first(self) -> np.ndarray:
        """Where each subset's samples begin in by_subset."""
        return np.concatenate(([0], np.cumsum(self.counts)[:-1])).astype(np.int64)

    @property
    def begin(self) -> np.ndarray:
        """Where each subset's positions begin in the mixture's epoch (len S + 1)."""
        return np.concatenate(([0], np.cumsum(self.take))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.take.sum())

    def rows(self, positions: np.ndarray | int) -> np.ndarray:
        """Rows of by_subset for mixture positions (vectorised)."""
        v = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        if len(v) and (v.min() < 0 or v.max() >= len(self)):
            raise IndexError(f"mixture positions must be in [0, {len(self)})")
        begin = self.begin
        s = np.searchsorted(begin, v, side="right") - 1
        offset = v - begin[s]
        n = self.counts[s]
        k = offset % n
        partial = offset >= np.floor(self.weights[s]).astype(np.int64) * n
        for subset in np.unique(s[partial]):
            at = partial & (s == subset)
            k[at] = self._partial(int(subset))(k[at])
        return self.first[s] + k

    def _partial(self, subset: int) -> Permutation:
        return Permutation(int(self.counts[subset]), epoch_seed(self.seed, subset))

    def chosen(self, subset: int) -> np.ndarray:
        """Sample numbers within `subset` (0..n_s - 1) of one epoch, with repeats (whole repetitions first)."""
        n, m = int(self.counts[subset]), int(self.take[subset])
        whole = min(m // n if n else 0, math.floor(self.weights[subset]))
        rest = m - whole * n
        parts = [np.tile(np.arange(n, dtype=np.int64), whole)]
        if rest:
            parts.append(self._partial(subset)(np.arange(rest, dtype=np.int64)))
        return np.concatenate(parts)

    def realised(self, by_subset: np.ndarray, sample_bytes: np.ndarray) -> list[dict[str, Any]]:
        """Per subset: weight, samples in the index, positions per epoch, target bytes, and shares of the epoch."""
        first = self.first
        rows = []
        for s, name in enumerate(self.names):
            base = sample_bytes[by_subset[first[s] : first[s] + self.counts[s]]]
            rows.append(
                {
                    "subset": name,
                    "weight": float(self.weights[s]),
                    "samples": int(self.counts[s]),
                    "positions": int(self.take[s]),
                    "bytes": int(base.sum()),
                    "epoch_bytes": int(base[self.chosen(s)].sum()),
                }
            )
        total_positions = sum(r["positions"] for r in rows) or 1
        total_bytes = sum(r["epoch_bytes"] for r in rows) or 1
        for r in rows:
            r["share_positions"] = r["positions"] / total_positions
            r["share_bytes"] = r["epoch_bytes"] / total_bytes
        return rows


def sample_ids(by_subset: np.ndarray, mixture: Mixture | None, positions: np.ndarray) -> np.ndarray:
    """Sample numbers of an index at dataset positions: through the mixture, or the identity without one."""
    positions = np.asarray(positions, dtype=np.int64)
    if mixture is None:
        return positions
    return np.asarray(by_subset[mixture.rows(positions)], dtype=np.int64)
