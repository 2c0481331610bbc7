"""PileDataset over a real tokenized store, through real DataLoader workers (fork and spawn)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import pilestore
from pilestore.samples import IGNORE
from pilestore.tokens import tokenize
from pilestore.torch import PileDataset, PileSampler, collate


@pytest.fixture(scope="module")
def dataset_store(small_store: Path, model: Path) -> pilestore.Store:
    from pilestore.indexes import build_indexes
    from pilestore.tokens import TokenView

    result = tokenize(pilestore.open(small_store), model)
    build_indexes(TokenView(Path(result["view"])), pilestore.open(small_store), 256, 64, "bestfit")
    return pilestore.open(small_store)


def test_items_are_shifted_tensors_with_masks_positions_and_bytes(dataset_store: pilestore.Store, model: Path) -> None:
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    item = ds[3]
    assert item["input_ids"].dtype == item["labels"].dtype == torch.int64 and item["input_ids"].shape == (256,)
    mask = item["labels"] != IGNORE
    x = torch.cat([item["input_ids"], item["labels"][-1:]])
    assert torch.equal(item["labels"][mask], x[1:][mask])
    assert int(item["doc_lengths"].sum()) == 257 and int(item["n_bytes"]) > 0
    names = [ds.subsets[int(s)] for s in item["subset"]]
    assert set(names) <= set(dataset_store.subsets)
    assert int(item["position_ids"][0]) == 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_return_the_same_batches(dataset_store: pilestore.Store, model: Path, method: str) -> None:
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    sampler = PileSampler(ds, num_replicas=1, rank=0, seed=2)
    loader = DataLoader(
        ds,
        batch_size=4,
        sampler=sampler,
        num_workers=2,
        collate_fn=collate,
        multiprocessing_context=method,
        persistent_workers=True,
        pin_memory=False,
    )
    batches = list(loader)
    order = list(sampler)
    serial = [collate([ds[i] for i in order[k : k + 4]]) for k in range(0, len(order), 4)]
    assert len(batches) == len(serial)
    for a, b in zip(batches, serial, strict=True):
        for key in ("input_ids", "labels", "n_bytes", "doc_lengths_offsets"):
            assert torch.equal(a[key], b[key])
    total_targets = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
    assert total_targets > 0


def test_eval_view_and_fingerprints(dataset_store: pilestore.Store, model: Path) -> None:
    train = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    evaluation = PileDataset(dataset_store, "eval", seq_len=256, context=64, tokenizer=model)
    assert train.fingerprint != evaluation.fingerprint
    assert all(len(evaluation[i]["subset"]) == 1 for i in range(5))  # one document per eval sample
    state = PileSampler(train, num_replicas=1, rank=0).state_dict(consumed=4)
    with pytest.raises(pilestore.PilestoreError, match="fingerprint"):
        PileSampler(evaluation, num_replicas=1, rank=0).load_state_dict(state)
