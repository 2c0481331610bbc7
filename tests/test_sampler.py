"""The index math of shuffling and sharding: bijective, seeded, structureless, exact on resume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilestore.mixture import Mixture
from pilestore.sampler import EpochOrder, Permutation, epoch_seed


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


def rank_reads(order: EpochOrder, start: int, rank: int) -> list[int]:
    return [c for chunk in order.rank_counts(start, rank, chunk=7) for c in chunk.tolist()]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_ranks_are_disjoint_and_cover_the_epoch(world: int) -> None:
    order = EpochOrder(1000, world, drop_last=False)
    parts = [rank_reads(order, 0, r) for r in range(world)]
    assert [len(p) for p in parts] == [order.rank_len(0, r) for r in range(world)]
    merged = np.concatenate([order.indices(np.array(p, dtype=np.int64), 0) for p in parts])
    assert set(merged.tolist()) == set(range(1000)) and len(merged) == order.per_epoch


def test_resuming_on_fewer_ranks_reads_exactly_the_unseen_samples() -> None:
    """4 ranks read 2 global batches of 8, then 2 ranks go on from 16 consumed samples."""
    four, two = EpochOrder(100, 4, seed=3), EpochOrder(100, 2, seed=3)
    seen = [c for r in range(4) for c in rank_reads(four, 0, r)[:4]]
    rest = [c for r in range(2) for c in rank_reads(two, 16, r)]
    assert sorted(seen + rest) == list(range(100))
    both = four.indices(np.array(seen + rest), 0)
    assert sorted(both.tolist()) == list(range(100))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300),
    st.lists(st.tuples(st.integers(0, 320), st.integers(0, 40)), max_size=4),
    st.integers(1, 4),
    st.booleans(),
)
def test_exclusions_skip_exactly_their_positions(n: int, raw: list, world: int, drop_last: bool) -> None:
    exclude = [(a, a + length) for a, length in raw]
    order = EpochOrder(n, world, seed=1, shuffle=False, drop_last=drop_last, exclude=exclude)
    allowed = [g for g in range(n) if not any(a <= g < b for a, b in exclude)]
    assert order.kept == len(allowed)
    if not allowed:
        return
    counts = np.arange(order.per_epoch)
    expected = [allowed[c % len(allowed)] for c in counts]
    assert order.positions(counts).tolist() == expected


def test_a_step_sees_the_same_samples_on_any_number_of_ranks() -> None:
    for world in (1, 2, 4):
        order = EpochOrder(1000, world, seed=4, exclude=[(40, 48)])
        epoch, counts, indices = order.step(13, 32)
        assert epoch == 0 and counts.tolist() == list(range(416, 448))
        reads = [rank_reads(order, 0, r)[13 * 32 // world : 14 * 32 // world] for r in range(world)]
        assert [order.indices(np.array(reads[r]), 0).tolist() for r in range(world)] == [
            indices[r::world].tolist() for r in range(world)
        ]
    assert EpochOrder(1000, 4, seed=4).step(31 + 2, 32)[0] == 1  # 31 full steps per epoch of 1000


def test_mixture_epochs_have_exact_proportions() -> None:
    names, counts = ["A", "B", "C"], [100, 50, 30]
    mix = Mixture.of(names, counts, {"A": 0.5, "B": 2.5}, seed=3)  # C keeps weight 1
    assert mix.take.tolist() == [50, 125, 30] and len(mix) == 205
    rows = mix.rows(np.arange(len(mix)))
    first = [0, 100, 150]
    per_subset = [rows[(rows >= f) & (rows < f + n)] - f for f, n in zip(first, counts, strict=True)]
    assert [len(p) for p in per_subset] == [50, 125, 30]
    a = np.bincount(per_subset[0], minlength=100)
    assert set(a.tolist()) == {0, 1} and np.flatnonzero(a).max() > 60  # a random half, not the first 50
    b = np.bincount(per_subset[1], minlength=50)
    assert sorted(set(b.tolist())) == [2, 3] and (b == 3).sum() == 25  # two whole epochs and a random half
    assert np.array_equal(np.bincount(per_subset[2], minlength=30), np.ones(30, np.int64))
    assert np.array_equal(rows, mix.rows(np.arange(len(mix))))
    for s in range(3):
        chosen = np.sort(mix.chosen(s))
        assert np.array_equal(chosen, np.sort(per_subset[s]))
    report = mix.realised(np.arange(180), np.ones(180, np.int64))
    assert [r["epoch_bytes"] for r in report] == [50, 125, 30]
    assert sum(r["share_bytes"] for r in report) == pytest.approx(1.0)


def test_mixture_subsets_and_bad_weights() -> None:
    assert Mixture.of(["A", "B"], [10, 20], subsets=["B"]).take.tolist() == [0, 20]
    with pytest.raises(ValueError, match="unknown subsets"):
        Mixture.of(["A"], [10], {"Wikipedia": 2.0})
    with pytest.raises(ValueError, match=">= 0"):
        Mixture.of(["A"], [10], {"A": -1.0})
    with pytest.raises(ValueError, match="no sample"):
        Mixture.of(["A", "B"], [10, 0], {"A": 0.0})


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        Permutation(-1, 0)
    with pytest.raises(IndexError):
        Permutation(10, 0)(10)
    with pytest.raises(ValueError, match="rank"):
        next(EpochOrder(10, 2).rank_counts(0, 2))
    with pytest.raises(ValueError, match="multiple of the world size"):
        EpochOrder(10, 4).step(0, 6)
