"""The index math of shuffling and sharding: bijective, seeded, structureless, exact on resume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilestore.sampler import Permutation, epoch_seed, rank_positions


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 2**63))
def test_permutation_is_a_bijection_of_the_range(n: int, seed: int) -> None:
    perm = Permutation(n, seed)(np.arange(n))
    assert sorted(perm.tolist()) == list(range(n))


def test_permutation_is_seeded_and_computed_per_index() -> None:
    n = 1_000_003
    a = Permutation(n, 7)
    picks = np.array([0, 5, 999_999, 1_000_002])
    assert np.array_equal(a(picks), a(np.arange(n))[picks])  # any index alone gives the same answer
    assert np.array_equal(a(picks), Permutation(n, 7)(picks))
    assert not np.array_equal(a(np.arange(1000)), Permutation(n, 8)(np.arange(1000)))


def test_permutation_shows_no_structure() -> None:
    n = 200_000
    perm = Permutation(n, 3)(np.arange(n)).astype(np.float64)
    positions = np.arange(n, dtype=np.float64)
    assert abs(np.corrcoef(positions, perm)[0, 1]) < 0.01  # no trend with position
    assert abs(np.corrcoef(perm[:-1], perm[1:])[0, 1]) < 0.01  # neighbours independent
    steps = np.diff(perm)
    assert np.mean(np.abs(steps)) == pytest.approx(n / 3, rel=0.02)  # like independent uniform draws
    first_half = perm[: n // 2]
    assert np.mean(first_half < n / 2) == pytest.approx(0.5, abs=0.01)  # both halves mixed evenly
    fixed = np.mean(perm == positions)
    assert fixed < 0.001


def test_every_position_is_reachable_from_index_zero_across_seeds() -> None:
    n = 97
    firsts = {int(Permutation(n, seed)(0)[0]) for seed in range(2000)}
    assert firsts == set(range(n))


def test_epochs_get_different_orders() -> None:
    n = 5000
    orders = [Permutation(n, epoch_seed(0, e))(np.arange(50)).tolist() for e in range(5)]
    assert len({tuple(o) for o in orders}) == 5
    assert epoch_seed(0, 1) == epoch_seed(0, 1) and epoch_seed(0, 1) != epoch_seed(1, 1)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_ranks_are_disjoint_and_cover_the_epoch(world: int) -> None:
    parts = [rank_positions(0, 1000, r, world) for r in range(world)]
    merged = np.sort(np.concatenate(parts))
    assert np.array_equal(merged, np.arange(1000))


def test_resuming_on_fewer_ranks_reads_exactly_the_unseen_positions() -> None:
    """4 ranks read 2 global batches of 8, then 2 ranks go on from 16 consumed samples."""
    n, global_batch = 100, 8
    seen = np.concatenate([rank_positions(0, 2 * global_batch, r, 4) for r in range(4)])
    rest = np.concatenate([rank_positions(2 * global_batch, n, r, 2) for r in range(2)])
    assert np.array_equal(np.sort(np.concatenate([seen, rest])), np.arange(n))
    assert set(seen.tolist()).isdisjoint(rest.tolist())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        Permutation(-1, 0)
    with pytest.raises(IndexError):
        Permutation(10, 0)(10)
    with pytest.raises(ValueError, match="rank"):
        rank_positions(0, 10, 2, 2)
