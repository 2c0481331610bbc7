"""PileSampler with real DataLoader workers and real gloo ranks."""

from __future__ import annotations

import itertools
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from pilestore.torch import PileSampler, SamplerStateError


class Numbers(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def test_one_epoch_over_ranks_is_disjoint_complete_and_shuffled() -> None:
    data = Numbers(1000)
    parts = [list(PileSampler(data, num_replicas=4, rank=r, seed=3)) for r in range(4)]
    assert sorted(itertools.chain(*parts)) == list(range(1000))
    assert parts[0] != sorted(parts[0])
    assert parts == [list(PileSampler(data, num_replicas=4, rank=r, seed=3)) for r in range(4)]


def test_epochs_differ_and_drop_last_or_pad() -> None:
    data = Numbers(10)
    sampler = PileSampler(data, num_replicas=3, rank=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and len(first) == 3
    padded = [list(PileSampler(data, num_replicas=3, rank=r, drop_last=False)) for r in range(3)]
    assert sum(map(len, padded)) == 12 and set(itertools.chain(*padded)) == set(range(10))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_4_ranks_on_2_ranks_sees_exactly_the_unseen_samples(workers: int) -> None:
    data, global_batch, steps = Numbers(200), 8, 5
    seen = []
    for r in range(4):
        sampler = PileSampler(data, num_replicas=4, rank=r, seed=1)
        loader = DataLoader(data, batch_size=global_batch // 4, sampler=sampler, num_workers=workers)
        seen += [int(x) for batch in itertools.islice(loader, steps) for x in batch]
    state = PileSampler(data, num_replicas=4, rank=0, seed=1).state_dict(consumed=steps * global_batch)
    rest = []
    for r in range(2):
        sampler = PileSampler(data, num_replicas=2, rank=r, seed=1)
        sampler.load_state_dict(state)
        loader = DataLoader(data, batch_size=global_batch // 2, sampler=sampler, num_workers=workers)
        rest += [int(x) for batch in loader for x in batch]
    assert sorted(seen + rest) == list(range(200)) and not set(seen) & set(rest)


def test_state_without_consumed_counts_what_the_iterator_handed_out() -> None:
    data = Numbers(50)
    sampler = PileSampler(data, num_replicas=1, rank=0)
    it = iter(sampler)
    first = [next(it) for _ in range(7)]
    resumed = PileSampler(data, num_replicas=1, rank=0)
    resumed.load_state_dict(sampler.state_dict())
    assert first + list(resumed) == list(PileSampler(data, num_replicas=1, rank=0))


def test_mismatched_states_are_refused() -> None:
    state = PileSampler(Numbers(100), num_replicas=2, rank=0).state_dict(consumed=10)
    with pytest.raises(SamplerStateError, match="fingerprint"):
        PileSampler(Numbers(101), num_replicas=2, rank=0).load_state_dict(state)
    with pytest.raises(SamplerStateError, match="seed"):
        PileSampler(Numbers(100), num_replicas=2, rank=0, seed=9).load_state_dict(state)
    with pytest.raises(SamplerStateError, match="do not split over 4 ranks"):
        PileSampler(Numbers(100), num_replicas=4, rank=0).load_state_dict(state)


def test_excluded_ranges_are_skipped_on_every_rank() -> None:
    data = Numbers(100)
    full = [list(PileSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    skipped = [list(PileSampler(data, num_replicas=2, rank=r, exclude=[(20, 40)])) for r in range(2)]
    assert sum(map(len, skipped)) == 80
    for r in range(2):
        assert skipped[r] == full[r][:10] + full[r][20:]


def test_exclusions_added_on_resume_skip_ahead_but_never_behind() -> None:
    data, global_batch = Numbers(200), 10
    full = list(PileSampler(data, num_replicas=1, rank=0, seed=4))
    state = PileSampler(data, num_replicas=1, rank=0, seed=4).state_dict(consumed=5 * global_batch)
    resumed = PileSampler(data, num_replicas=1, rank=0, seed=4, exclude=[(6 * global_batch, 8 * global_batch)])
    resumed.load_state_dict(state)  # e.g. a loss spike at steps 6-7: rewind to step 5, skip their samples
    assert list(resumed) == full[50:60] + full[80:]
    behind = PileSampler(data, num_replicas=1, rank=0, seed=4, exclude=[(20, 30)])
    with pytest.raises(SamplerStateError, match="already read"):
        behind.load_state_dict(state)
    state_with = resumed.state_dict(consumed=60)
    with pytest.raises(SamplerStateError, match="keep the earlier exclusions"):
        PileSampler(data, num_replicas=1, rank=0, seed=4).load_state_dict(state_with)


def _rank_main(rank: int, world: int, workers: int, init_file: str, queue: mp.Queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = Numbers(64)
        sampler = PileSampler(data, seed=5)  # rank and world from torch.distributed
        loader = DataLoader(data, batch_size=4, sampler=sampler, num_workers=workers)
        got = torch.cat([batch for batch in loader])
        gathered = [torch.zeros_like(got) for _ in range(world)]
        dist.all_gather(gathered, got)
        if rank == 0:
            queue.put([g.tolist() for g in gathered])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("world", "workers"), [(2, 0), (4, 2)])
def test_real_gloo_ranks_read_disjoint_shards(world: int, workers: int) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank_main, args=(r, world, workers, init_file, queue)) for r in range(world)]
        for p in procs:
            p.start()
        result = queue.get(timeout=120)
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(itertools.chain(*result)) == list(range(64))
    assert result == [list(PileSampler(Numbers(64), num_replicas=world, rank=r, seed=5)) for r in range(world)]
