"""PileDataset over a real tokenized store, through real DataLoader workers (fork, spawn and forkserver)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import pilestore
from pilestore.errors import PilestoreError
from pilestore.samples import IGNORE
from pilestore.tokens import tokenize
from pilestore.torch import Batch, PileDataset, PileSampler, collate


@pytest.fixture(scope="module")
def dataset_store(small_store: Path, model: Path) -> pilestore.Store:
    from pilestore.indexes import build_indexes
    from pilestore.tokens import TokenView

    result = tokenize(pilestore.open(small_store), model)
    view = TokenView(Path(result["view"]))
    build_indexes(view, pilestore.open(small_store), 256, 64, "bestfit")
    build_indexes(view, pilestore.open(small_store), 256, 64, "bestfit", val_fraction=0.25)
    return pilestore.open(small_store)


def test_items_are_shifted_tensors_with_masks_positions_and_bytes(dataset_store: pilestore.Store, model: Path) -> None:
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    item = ds[3]
    assert item["input_ids"].dtype == item["labels"].dtype == torch.int64 and item["input_ids"].shape == (256,)
    mask = item["labels"] != IGNORE
    x = torch.cat([item["input_ids"], item["labels"][-1:]])
    assert torch.equal(item["labels"][mask], x[1:][mask])
    assert int(item["doc_lengths"].sum()) == 257 and int(item["n_bytes"]) > 0
    for i in range(0, len(ds), max(1, len(ds) // 50)):  # each span's subset is its document's
        spans = ds.index[i].spans
        names = [ds.subsets[int(s)] for s in ds[i]["subset"]]
        assert names == [dataset_store[span["doc"]].subset for span in spans]
    assert int(item["position_ids"][0]) == 0


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_return_the_same_batches(dataset_store: pilestore.Store, model: Path, method: str) -> None:
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    first = collate(ds.__getitems__([0, 1]))  # read here first: spawn and forkserver then pickle a dataset whose
    assert ds.index.view._parts  # view has maps open, which must not travel (nor fail to pickle)
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
    order = list(sampler)
    total_targets, count = 0, 0
    for k, batch in enumerate(loader):  # compared as they come: a worker's tensors each hold a file descriptor
        serial = collate([ds[i] for i in order[4 * k : 4 * k + 4]])
        for key in ("input_ids", "labels", "n_bytes", "doc_lengths_offsets", "span_bytes", "subset", "sample"):
            assert torch.equal(batch[key], serial[key])
            assert not batch[key].is_shared()  # came through the pipe as one array, not a shared-memory segment
        total_targets += int((batch["labels"] != IGNORE).sum())
        count += 1
    assert count == -(-len(order) // 4) and total_targets > 0
    assert torch.equal(collate(ds.__getitems__([0, 1]))["input_ids"], first["input_ids"])


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_a_trainer_holds_stay_intact_while_later_ones_arrive(
    dataset_store: pilestore.Store, model: Path, workers: int
) -> None:
    """Batch memory is reused only once nothing views it (a worker's ring slot, pilestore.ring; without workers
    pilestore.pool): a trainer that keeps batches, or views of them, finds them unchanged after many more have
    arrived, and the memory of dropped batches is reused."""
    from pilestore import ring as rings
    from pilestore import torch as pt

    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    sampler = PileSampler(ds, num_replicas=1, rank=0, seed=5)
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=workers, collate_fn=collate)
    order, reused = list(sampler), pt._received.reused
    kept, views, lent = [], [], []
    for epoch in range(3):
        for k, batch in enumerate(loader):
            if epoch == 0 and k % 2 == 0:
                kept.append((k, batch))  # every other batch of the first epoch, whole
            elif epoch == 0:
                views.append((k, batch["labels"][1:3, 5:]))  # or only a view of one field
            else:
                lent.append(any(r._lent and _in_map(batch._buffer, r) for r in rings._opened.values()))
    assert len(kept) > 2 and len(views) > 2
    for k, batch in kept:  # read again item by item: memory of its own, not the pool's
        expected = collate([ds[i] for i in order[8 * k : 8 * k + 8]])
        assert all(torch.equal(batch[key], expected[key]) for key in expected), k
    for k, view in views:
        assert torch.equal(view, collate([ds[i] for i in order[8 * k : 8 * k + 8]])["labels"][1:3, 5:]), k
    if workers:  # the later epochs' batches came in their worker's ring slots, each free again once dropped
        assert len(lent) > 2 * rings.SLOTS and all(lent)
    else:  # or reused the memory of dropped ones
        assert pt._received.reused > reused


def test_a_pinned_copy_of_a_batch_does_not_hold_its_worker_slot(dataset_store: pilestore.Store, model: Path) -> None:
    """torch's pin_memory copies a batch (copy.copy) and puts a pinned copy of every field in it: once the
    batch itself is dropped its ring slot must be free, while the copy stays intact."""
    import copy
    import gc

    from pilestore import ring as rings

    def lent() -> int:
        return sum(len(r._lent) for r in rings._opened.values())

    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate)
    it, before = iter(loader), lent()
    batch = next(it)
    assert lent() == before + 1  # read in its slot
    clone = copy.copy(batch)
    assert clone.keys() == batch.keys() and all(clone[key] is batch[key] for key in batch)
    clone.update({key: value.clone() for key, value in batch.items()})  # pin_memory's way, with CPU copies
    expected = {key: value.clone() for key, value in batch.items()}
    del batch
    gc.collect()
    assert lent() == before  # the slot is free: the copy holds only its own tensors
    assert all(torch.equal(clone[key], expected[key]) for key in expected)
    del it


def _in_map(tensor: torch.Tensor, ring: object) -> bool:
    """Whether the tensor's memory lies in the ring's mapping in this process (a slot lent to the trainer)."""
    start = ring._address  # type: ignore[attr-defined]
    return start <= tensor.data_ptr() < start + len(ring.map)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "kind, options",
    [
        ("train", {}),
        ("eval", {}),
        ("train", {"split": "train", "val_fraction": 0.25}),
        ("eval", {"split": "val", "val_fraction": 0.25}),
        ("eval", {"weights": {"Pile-CC": 2.0}}),
    ],
)
def test_batched_reads_equal_collated_single_reads(
    dataset_store: pilestore.Store, model: Path, kind: str, options: dict
) -> None:
    ds = PileDataset(dataset_store, kind, seq_len=256, context=64, tokenizer=model, **options)
    generator = torch.Generator().manual_seed(len(ds))
    batches = [torch.randint(-len(ds), len(ds), (size,), generator=generator).tolist() for size in (1, 2, 7, 16, 33)]
    batches.append(list(range(len(ds))))  # every sample, the padded ones of the eval view among them
    for positions in batches:
        got = ds.__getitems__(positions)
        expected = collate([ds[i] for i in positions])
        assert isinstance(got, Batch) and len(got) == len(positions)
        assert collate(got).keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(collate(got)[key], value), (key, positions[:5])
        for k in (0, len(positions) - 1):  # per-sample views of the batch are ds[i]
            single = ds[positions[k]]
            assert all(torch.equal(got[k][key], single[key]) for key in single)
    padded = collate(ds.__getitems__(list(range(len(ds)))))
    assert kind == "train" or int((padded["labels"] == IGNORE).sum()) > 0
    for outside in (len(ds), -len(ds) - 1):
        with pytest.raises(IndexError, match="out of range for"):
            ds.__getitems__([0, outside])
    ids = np.array([-1, 0, -len(ds.index)])  # negative ids count from the end; the caller's array stays as it was
    assert np.array_equal(ds.index.gather(ids)["sample"], [len(ds.index) - 1, 0, 0]) and ids[0] == -1


@pytest.mark.parametrize(
    "fields", [("input_ids", "labels"), ("labels",), ("position_ids", "doc_lengths"), ("n_bytes", "sample", "subset")]
)
@pytest.mark.parametrize("kind", ["train", "eval"])
def test_selected_fields_are_those_of_the_full_samples_in_a_smaller_buffer(
    dataset_store: pilestore.Store, model: Path, kind: str, fields: tuple[str, ...]
) -> None:
    full = PileDataset(dataset_store, kind, seq_len=256, context=64, tokenizer=model)
    lean = PileDataset(dataset_store, kind, seq_len=256, context=64, tokenizer=model, fields=fields[::-1])
    assert lean.fields == fields and lean.fingerprint == full.fingerprint  # in FIELDS order; the same samples
    positions = torch.randint(0, len(full), (24,), generator=torch.Generator().manual_seed(7)).tolist()
    expected = collate([full[i] for i in positions])
    got = collate(lean.__getitems__(positions))
    keys = {key for field in fields for key in (field, f"{field}_offsets") if key in expected}
    assert got.keys() == keys
    assert all(torch.equal(got[key], expected[key]) for key in keys)
    assert collate([lean[i] for i in positions]).keys() == keys and lean[positions[0]].keys() == set(fields)
    assert len(lean.__getitems__(positions)) == len(positions)
    missing = next(field for field in ("sample", "input_ids") if field not in fields)
    for where in (got, lean[positions[0]], lean.__getitems__(positions)[0]):
        with pytest.raises(KeyError, match=r"PileDataset\(fields=\.\.\.\)"):  # says how to get it
            where[missing]
    stored = next(iter(got.values())).untyped_storage().nbytes()  # every field a view of one buffer
    assert stored == 8 * sum(expected[key].numel() for key in keys)
    loader = DataLoader(lean, batch_size=8, sampler=positions, num_workers=1, collate_fn=collate)
    for k, batch in enumerate(loader):  # through a real worker
        assert all(
            torch.equal(batch[key], collate([full[i] for i in positions[8 * k : 8 * k + 8]])[key]) for key in keys
        )
        with pytest.raises(KeyError, match="fields="):
            batch[missing]


def test_a_batch_pickles_as_its_one_buffer_unless_its_fields_changed(
    dataset_store: pilestore.Store, model: Path
) -> None:
    """What a worker sends: a batch as read is one array by value (no file descriptor, no shared memory); a
    batch whose fields a collate_fn replaced, added or removed is sent as those fields, never the stale buffer."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reductions with ForkingPickler)

    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    batch = collate(ds.__getitems__(list(range(8))))
    data = bytes(ForkingPickler.dumps(batch))
    buffer_bytes = batch["input_ids"].untyped_storage().nbytes()
    assert buffer_bytes < len(data) < buffer_bytes + 4096  # the whole buffer, once
    back = pickle.loads(data)
    assert back.keys() == batch.keys() and all(torch.equal(back[k], batch[k]) for k in batch)
    assert back["labels"].untyped_storage().data_ptr() == back["input_ids"].untyped_storage().data_ptr()
    back["labels"][0, 0] = 7  # still writable views of one buffer, and still sent as one
    assert pickle.loads(ForkingPickler.dumps(back))["labels"][0, 0] == 7
    changed = {
        "replaced": lambda f: f.__setitem__("labels", f["labels"].clone().fill_(5)),
        "added": lambda f: f.__setitem__("extra", torch.arange(3)),
        "removed": lambda f: f.pop("position_ids"),
        "resliced": lambda f: f.__setitem__("input_ids", f["input_ids"][:, :10]),
    }
    for name, change in changed.items():
        fields = collate(ds.__getitems__(list(range(8))))
        change(fields)
        got = pickle.loads(ForkingPickler.dumps(fields))
        assert got.keys() == fields.keys() and all(torch.equal(got[k], fields[k]) for k in fields), name


def _rings_here() -> set[Path]:
    return set(Path("/dev/shm").glob("pilestore-ring-*")) if Path("/dev/shm").is_dir() else set()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_worker_batches_come_through_its_ring_exactly_and_leave_nothing_behind(
    dataset_store: pilestore.Store, model: Path, method: str
) -> None:
    """A worker copies each batch into a slot of its shared-memory ring; batches that do not fit a slot (the
    ring is sized by the first) or find every slot busy (the trainer has not read them yet) go by value."""
    import time

    from pilestore import ring as rings

    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    sizes = [1, 8, 8, 32, 8, 8, 8, 8, 8, 8, 1]  # 32 samples: 3x the first slot's 64 KiB, sent by value
    cuts = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    batches = [[i % len(ds) for i in range(cuts[k], cuts[k + 1])] for k in range(len(sizes))]
    before, opened = _rings_here(), set(rings._opened)
    loader = DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=1,
        collate_fn=_collate_noting_slot,
        multiprocessing_context=method,
        prefetch_factor=8,
    )
    it = iter(loader)
    time.sleep(3)  # the worker reads ahead up to 8 batches: more than its ring has slots, the rest by value
    in_slot = []
    for k, (batch, built_in_slot) in enumerate(it):
        expected = collate(ds.__getitems__(batches[k]))
        assert batch.keys() == expected.keys() and all(torch.equal(batch[key], expected[key]) for key in batch), k
        batch["input_ids"][0, 0] = -5  # writable (a slot lent to the trainer, or its own memory)
        in_slot.append(built_in_slot)
    assert k == len(batches) - 1
    assert in_slot[0] and not in_slot[3] and not all(in_slot)  # built in a slot: the first; not: too big, no slot
    assert set(rings._opened) - opened  # the worker's ring, mapped here
    assert not _rings_here() - before  # its file removed as soon as it was mapped


def _collate_noting_slot(batch: Batch) -> tuple[dict[str, torch.Tensor], bool]:
    """collate, and whether the worker built the batch straight in a slot of its ring (sent without a copy)."""
    from pilestore import torch as pt

    collated = collate(batch)
    ring = pt._worker_ring[1] if pt._worker_ring is not None else None
    return collated, ring is not None and collated._buffer.data_ptr() in ring.claimed


def test_a_ring_the_trainer_never_read_is_removed_when_its_worker_ends(
    dataset_store: pilestore.Store, model: Path
) -> None:
    import time

    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    before = _rings_here()
    it = iter(DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate))
    deadline = time.monotonic() + 30
    while not _rings_here() - before and time.monotonic() < deadline:  # the worker has sent its first batches
        time.sleep(0.05)
    new = _rings_here() - before
    assert new
    del it  # shuts the worker down before a batch is read
    deadline = time.monotonic() + 30
    while _rings_here() & new and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _rings_here() & new


def _plain_dict_collate(batch: Batch) -> dict[str, torch.Tensor]:
    """A collate_fn whose batches are not pilestore's packed ones: they never travel through the ring."""
    return {key: value.clone() for key, value in collate(batch).items()}


def test_a_ring_never_mapped_is_removed_when_the_trainer_exits_first(
    dataset_store: pilestore.Store, model: Path
) -> None:
    """At interpreter exit multiprocessing terminates DataLoader workers (SIGTERM) and no Finalize runs; a ring
    that the trainer never mapped (every batch by value) must not stay behind in /dev/shm."""
    import subprocess
    import sys

    code = (
        "import sys, pilestore\n"
        "from pathlib import Path\n"
        "from torch.utils.data import DataLoader\n"
        "from pilestore.torch import PileDataset\n"
        "from tests.test_torch_dataset import _plain_dict_collate, _rings_here\n"
        f"ds = PileDataset(pilestore.open({str(dataset_store.path)!r}), 'train', seq_len=256, context=64, "
        f"tokenizer={str(model)!r})\n"
        "before = _rings_here()\n"
        "it = iter(DataLoader(ds, batch_size=4, num_workers=1, collate_fn=_plain_dict_collate))\n"
        "next(it)\n"  # built in a slot of the worker's new ring, sent by value: the trainer never maps the ring
        "print(*sorted(str(p) for p in _rings_here() - before))\n"
        "sys.exit(0)\n"  # the worker is still running: terminated at exit
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    left = done.stdout.split()
    assert left and all(name.startswith("/dev/shm/pilestore-ring-") for name in left)
    assert not [name for name in left if Path(name).exists()]


def test_opening_and_reading_import_nothing_heavy(dataset_store: pilestore.Store, model: Path) -> None:
    """Arrow's to_numpy() imports pandas where it is installed (as the `bench` extra and HF `datasets` do):
    0.4 s more at every open, in every DataLoader worker. Index columns are viewed without it. numba (0.3-0.5 s)
    comes with the first batch (its kernels assemble batches), not with opening a store or a dataset or ds[i]."""
    import subprocess
    import sys

    code = (
        "import sys, pilestore\n"
        "from pilestore.torch import PileDataset\n"
        "heavy = lambda: sorted(m for m in ('pandas', 'numba') if m in sys.modules)\n"
        f"store = pilestore.open({str(dataset_store.path)!r})\n"
        "store[0].text\n"
        f"ds = PileDataset(store, 'train', seq_len=256, context=64, tokenizer={str(model)!r})\n"
        "ds[0]\n"
        "print(heavy())\n"
        "ds.__getitems__([1, 2, 3])\n"
        "print(heavy())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-3:-1] == ["[]", "['numba']"]


def test_int32_samples_hold_the_int64_values_in_half_the_bytes(dataset_store: pilestore.Store, model: Path) -> None:
    wide = PileDataset(dataset_store, "eval", seq_len=256, context=64, tokenizer=model)
    narrow = PileDataset(dataset_store, "eval", seq_len=256, context=64, tokenizer=model, dtype=torch.int32)
    positions = list(range(len(wide)))  # every sample, padded ones among them
    expected, got = collate([wide[i] for i in positions]), collate(narrow.__getitems__(positions))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == torch.int32 and torch.equal(got[key].long(), value), key
    assert 2 * got["labels"].untyped_storage().nbytes() == expected["labels"].untyped_storage().nbytes()
    assert all(value.dtype == torch.int32 for value in narrow[positions[-1]].values())
    assert collate([narrow[i] for i in positions[:5]])["input_ids"].dtype == torch.int32
    loader = DataLoader(narrow, batch_size=16, num_workers=1, collate_fn=collate)
    for k, batch in enumerate(loader):  # through a real worker
        assert torch.equal(batch["labels"].long(), expected["labels"][16 * k : 16 * k + 16])
    with pytest.raises(ValueError, match="int32"):
        PileDataset(dataset_store, "eval", seq_len=256, context=64, tokenizer=model, dtype=torch.float32)


@pytest.mark.parametrize("fields", [(), ("input_ids", "input_ids"), ("input_ids", "attention_mask")])
def test_unknown_empty_or_repeated_fields_are_refused(
    dataset_store: pilestore.Store, model: Path, fields: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="position_ids"):  # the message lists the fields there are
        PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model, fields=fields)


def test_a_tokenizer_file_missing_or_not_used_by_the_store_is_named(
    dataset_store: pilestore.Store, model: Path, tmp_path: Path
) -> None:
    from pilestore.tokenizer import TokenizerError
    from pilestore.tokens import TokensError

    with pytest.raises(TokenizerError, match="none.model: no such tokenizer file"):
        PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=tmp_path / "none.model")
    other = tmp_path / "other.model"
    other.write_bytes(model.read_bytes() + b"\0")  # another file: another hash, no view of it in the store
    with pytest.raises(TokensError, match=r"not tokenized with .*other\.model .*pilestore tokenize --tokenizer"):
        PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=other)


def test_eval_view_and_fingerprints(dataset_store: pilestore.Store, model: Path) -> None:
    train = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    evaluation = PileDataset(dataset_store, "eval", seq_len=256, context=64, tokenizer=model)
    assert train.fingerprint != evaluation.fingerprint
    assert all(len(evaluation[i]["subset"]) == 1 for i in range(5))  # one document per eval sample
    state = PileSampler(train, num_replicas=1, rank=0).state_dict(consumed=4)
    with pytest.raises(pilestore.PilestoreError, match="fingerprint"):
        PileSampler(evaluation, num_replicas=1, rank=0).load_state_dict(state)


def test_split_datasets_share_no_document(dataset_store: pilestore.Store, model: Path) -> None:
    kw = {"seq_len": 256, "context": 64, "tokenizer": model, "val_fraction": 0.25}
    train = PileDataset(dataset_store, "train", split="train", **kw)
    val = PileDataset(dataset_store, "eval", split="val", **kw)
    docs = [{int(d) for d in ds.index.spans["doc"]} for ds in (train, val)]
    assert docs[0] and docs[1] and docs[0].isdisjoint(docs[1])
    everything = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    assert len(train) + len(val) < len(everything) + len(val)
    with pytest.raises(pilestore.PilestoreError, match="pilestore index"):
        PileDataset(dataset_store, "train", split="train", val_fraction=0.5, seq_len=256, context=64, tokenizer=model)


def test_a_weighted_mixture_realises_its_proportions(dataset_store: pilestore.Store, model: Path) -> None:
    base = PileDataset(dataset_store, "eval", seq_len=256, context=64, tokenizer=model)
    names = base.subsets
    heavy, light = names[0], names[1]
    weights = {heavy: 3.0, light: 0.5}
    mixed = PileDataset(dataset_store, "eval", seq_len=256, context=64, tokenizer=model, weights=weights)
    expected = {name: weights.get(name, 1.0) * int(base.index.subset_samples[k]) for k, name in enumerate(names)}
    assert len(mixed) == sum(round(v) for v in expected.values())
    sampler = PileSampler(mixed, num_replicas=1, rank=0, seed=1, drop_last=False)
    seen_samples = {name: 0 for name in names}
    seen_bytes = {name: 0 for name in names}
    for i in sampler:  # one epoch of the mixture, through the real items
        item = mixed[i]
        name = names[int(item["subset"][0])]  # the eval view has one document per sample
        seen_samples[name] += 1
        seen_bytes[name] += int(item["n_bytes"])
    for name in names:
        assert seen_samples[name] == round(expected[name])
    report = {row["subset"]: row for row in mixed.realised()}
    assert {n: report[n]["epoch_bytes"] for n in names} == seen_bytes
    base_bytes = {row["subset"]: row["bytes"] for row in base.realised()}
    assert seen_bytes[heavy] == 3 * base_bytes[heavy]
    assert seen_bytes[light] == pytest.approx(0.5 * base_bytes[light], rel=0.35)
    assert mixed.fingerprint != base.fingerprint


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sample_step_shows_what_each_rank_read_at_that_step(
    dataset_store: pilestore.Store, model: Path, world: int
) -> None:
    import itertools
    import json

    from click.testing import CliRunner

    from pilestore.cli import cli

    weights = {"Wikipedia (en)": 3.0, "Github": 0.5}
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, weights=weights, tokenizer=model)
    global_batch, step, exclude = 8, 5, [(16, 24)]
    args = ["sample", "--store", str(dataset_store.path), "--step", str(step), "--global-batch", str(global_batch)]
    args += ["--world-size", str(world), "--seed", "7", "--exclude", "16:24", "--seq-len", "256", "--json"]
    args += ["--tokenizer", str(model)]
    for name, w in weights.items():
        args += ["--weight", f"{name}={w}"]
    for rank in range(world):
        result = CliRunner().invoke(cli, [*args, "--rank", str(rank)])
        assert result.exit_code == 0, result.output
        shown = json.loads(result.output)
        sampler = PileSampler(ds, num_replicas=world, rank=rank, seed=7, exclude=exclude)
        per_rank = global_batch // world
        read = list(itertools.islice(sampler, step * per_rank, (step + 1) * per_rank))  # the step's batch
        expected = [int(ds[i]["sample"]) for i in read]
        assert [row["sample"] for row in shown["samples"]] == expected
        assert all(row["rank"] == rank for row in shown["samples"])
        assert [[s["doc"] for s in row["spans"]] for row in shown["samples"]] == [
            [s["doc"] for s in ds.index[e].spans] for e in expected
        ]


def test_mixture_command_reports_what_the_dataset_realises(dataset_store: pilestore.Store, model: Path) -> None:
    import json

    from click.testing import CliRunner

    from pilestore.cli import cli

    weights = {"Wikipedia (en)": 3.0, "Github": 0.5}
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, weights=weights, tokenizer=model)
    args = ["mixture", "--store", str(dataset_store.path), "--tokenizer", str(model), "--seq-len", "256", "--json"]
    result = CliRunner().invoke(cli, [*args, "--weight", "Wikipedia (en)=3", "--weight", "Github=0.5"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["samples_per_epoch"] == len(ds) and shown["subsets"] == ds.realised()
    bad = CliRunner().invoke(cli, [*args, "--weight", "Nope=2"])
    assert bad.exit_code == 2 and "unknown subsets" in bad.output


def test_sample_step_follows_a_subset_selection(dataset_store: pilestore.Store, model: Path) -> None:
    import json

    from click.testing import CliRunner

    from pilestore.cli import cli

    chosen = ["Github", "Pile-CC"]
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, subsets=chosen, tokenizer=model)
    args = ["sample", "--store", str(dataset_store.path), "--tokenizer", str(model), "--seq-len", "256", "--json"]
    args += ["--step", "3", "--global-batch", "4", "--subset", "Github", "--subset", "Pile-CC"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    shown = [row["sample"] for row in json.loads(result.output)["samples"]]
    sampler = list(PileSampler(ds, num_replicas=1, rank=0))
    assert shown == [int(ds[i]["sample"]) for i in sampler[12:16]]
    assert {ds.subsets[int(ds.index.samples["subset"][s])] for s in shown} <= set(chosen)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--step", "1"], "--step needs --global-batch"),
        (["--idx", "0", "--step", "1", "--global-batch", "4"], "give --idx N"),
        (["--step", "1", "--global-batch", "4", "--weight", "Wikipedia"], "expected SUBSET=EPOCHS"),
        (["--step", "1", "--global-batch", "4", "--exclude", "9:3"], "expected START:STOP"),
        (["--step", "1", "--global-batch", "4", "--split", "train"], "needs --val-fraction"),
        (["--step", "1", "--global-batch", "4", "--rank", "2", "--world-size", "2"], "must be below --world-size"),
        (["--step", "1", "--global-batch", "3", "--world-size", "2"], "multiple of the world size"),
    ],
)
def test_sample_step_usage_errors_say_what_to_pass(
    dataset_store: pilestore.Store, model: Path, extra: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from pilestore.cli import cli

    args = ["sample", "--store", str(dataset_store.path), "--tokenizer", str(model), "--seq-len", "256", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_workers_refuse_an_index_rebuilt_after_the_dataset_was_made(
    small_store: Path, model: Path, tmp_path: Path
) -> None:
    """A worker opens the very build its dataset was made from, or fails: never another epoch's samples."""
    import pickle
    import shutil

    from pilestore.indexes import build_indexes, document_table, write_index
    from pilestore.samples import IndexShape
    from pilestore.tokens import TokenView
    from pilestore.windows import train_view

    store_dir = tmp_path / "s.store"
    shutil.copytree(small_store, store_dir, ignore=shutil.ignore_patterns("tokens"))
    store = pilestore.open(store_dir)
    view = TokenView(Path(tokenize(store, model)["view"]))
    build_indexes(view, store, 128, 32, "bestfit")
    ds = PileDataset(store, "train", seq_len=128, context=32)
    in_worker = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets: the index opens there, lazily
    subset, _, names = document_table(store)
    write_index(view, IndexShape("train", 128, 32, "bestfit"), train_view(view.doc_lengths(), 128, 32),
                (subset + 1) % len(names), names)  # fmt: skip
    with pytest.raises(pilestore.PilestoreError, match="rebuilt since this dataset was created"):
        in_worker[0]
    assert int(PileDataset(store, "train", seq_len=128, context=32)[0]["input_ids"][0]) >= 0  # a new dataset opens


@pytest.mark.parametrize("damaged", [0, 1])
@pytest.mark.parametrize("others", [8, 100])  # a small and a large batch
@pytest.mark.parametrize("kernel", [True, False])  # blocks hashed in blockhash's kernel, or a Python call each
def test_a_batch_over_two_partitions_names_the_damaged_token_file(
    dataset_store: pilestore.Store,
    model: Path,
    tmp_path: Path,
    damaged: int,
    others: int,
    kernel: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from pilestore import blockhash
    from pilestore.tokens import TokenDamageError

    if not kernel:
        monkeypatch.setattr(blockhash, "function", lambda: None)

    shutil.copytree(dataset_store.path, tmp_path / "copy.store")
    ds = PileDataset(pilestore.open(tmp_path / "copy.store"), "train", seq_len=256, context=64, tokenizer=model)
    touched = [i for i in range(len(ds)) if _reads_block_0_of(ds, i, damaged)]
    other = [i for i in range(len(ds)) if _reads_block_0_of(ds, i, 1 - damaged)]
    clean = sorted(set(range(len(ds))) - set(touched))[: 48 if others < 64 else 200]
    assert touched and other and clean
    expected = collate(ds.__getitems__(clean))
    files = sorted(ds._view.folder.glob("p*.tokens"))
    assert len(files) == 2
    with open(files[damaged], "r+b") as fh:  # a byte of the first block, which the first documents use
        fh.seek(10)
        byte = fh.read(1)
        fh.seek(10)
        fh.write(bytes([byte[0] ^ 0x40]))
    fresh = PileDataset(pilestore.open(tmp_path / "copy.store"), "train", seq_len=256, context=64, tokenizer=model)
    assert (fresh.index._block_sums is not None) == kernel  # the kernel is used wherever it can be
    with pytest.raises(TokenDamageError, match=files[damaged].name):
        fresh.__getitems__((other * others)[:others] + touched[:1])  # spans of both partitions in one batch
    got = collate(fresh.__getitems__(clean))  # samples that do not touch the damaged block still read exactly
    assert got.keys() == expected.keys() and all(torch.equal(got[key], expected[key]) for key in got)


def _reads_block_0_of(ds: PileDataset, i: int, p: int) -> bool:
    """Sample i has a span whose tokens start in the first 4 KiB block of partition p's token file."""
    from pilestore.tokens import BLOCK

    index = ds.index
    starts = index._doc_starts()
    record = index._sample_records[int(ds.sample_ids([i])[0])]
    spans = index._span_records[int(record["span_begin"]) : int(record["span_begin"]) + int(record["n_spans"])]
    in_p = (spans["doc"] >= starts[p]) & (spans["doc"] < starts[p + 1])
    return bool((in_p & (spans["offset"] * ds._view.dtype.itemsize < BLOCK)).any())


def test_an_empty_batch_has_every_field_and_no_rows(dataset_store: pilestore.Store, model: Path) -> None:
    ds = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    batch = collate(ds.__getitems__([]))
    assert batch["input_ids"].shape == (0, 256) and batch["labels"].shape == (0, 256)
    assert batch["doc_lengths_offsets"].tolist() == [0] and len(batch["n_bytes"]) == 0


def test_tokens_outside_a_shortened_token_file_are_named_not_read(
    dataset_store: pilestore.Store, model: Path, tmp_path: Path
) -> None:
    """The batch kernels read token files without bounds checks of their own: every span is checked to lie in
    its file before anything is copied (a token file cut short, e.g. by a full disk, names the file)."""
    import shutil

    from pilestore.tokens import TokenDamageError

    shutil.copytree(dataset_store.path, tmp_path / "copy.store")
    ds = PileDataset(pilestore.open(tmp_path / "copy.store"), "train", seq_len=256, context=64, tokenizer=model)
    expected = collate(ds.__getitems__(list(range(len(ds)))))
    last = sorted(ds._view.folder.glob("p*.tokens"))[-1]
    half = os.path.getsize(last) // 2 // 4096 * 4096  # at a block boundary: the blocks left keep their checksums
    with open(last, "r+b") as fh:
        fh.truncate(half + 1)  # not a whole number of tokens
    with pytest.raises(TokenDamageError, match=f"{last.name}: {half + 1} bytes, not a whole number"):
        PileDataset(pilestore.open(tmp_path / "copy.store"), "train", seq_len=256, context=64, tokenizer=model)[0]
    with open(last, "r+b") as fh:
        fh.truncate(half)
    fresh = PileDataset(pilestore.open(tmp_path / "copy.store"), "train", seq_len=256, context=64, tokenizer=model)
    with pytest.raises(TokenDamageError, match=f"{last.name}: tokens .* lie outside the file"):
        fresh.__getitems__(list(range(len(fresh))))
    inside = [i for i in range(len(fresh)) if _ends_before(fresh, i, os.path.getsize(last))]
    assert 0 < len(inside) < len(fresh)
    got = collate(fresh.__getitems__(inside))  # samples within what is left still read exactly
    assert all(torch.equal(got[key], expected[key][inside]) for key in ("input_ids", "labels"))
    index = fresh.index  # a span naming a document past the view's last: the index is not this view's
    index._doc_first = [0, *[1] * (len(index._doc_starts()) - 1)]
    index._files = None
    with pytest.raises(PilestoreError, match="does not belong to this view"):
        index.gather([0, 1, 2, 3])


def _ends_before(ds: PileDataset, i: int, size: int) -> bool:
    """Every token sample i reads from the last partition lies in its first `size` bytes."""
    index = ds.index
    starts = index._doc_starts()
    record = index._sample_records[i]
    spans = index._span_records[int(record["span_begin"]) : int(record["span_begin"]) + int(record["n_spans"])]
    end = (spans["offset"] + spans["context"] + spans["target"]) * ds._view.dtype.itemsize
    return bool(((spans["doc"] < starts[-2]) | (end <= size)).all())


def test_a_uint32_token_view_reads_the_same_samples(
    dataset_store: pilestore.Store, model: Path, tmp_path: Path
) -> None:
    """Vocabularies beyond 65,536 ids store uint32 tokens: 1,024 a block instead of 2,048. The same view
    rewritten as uint32 (block checksums made again) gives the same batches and samples, and a damaged block
    is found at its uint32 place."""
    import shutil

    from pilestore.manifest import read_sealed, write_sealed
    from pilestore.tokens import VIEW_FILE, TokenDamageError, block_sums

    shutil.copytree(dataset_store.path, tmp_path / "wide.store")
    narrow = PileDataset(dataset_store, "train", seq_len=256, context=64, tokenizer=model)
    folder = tmp_path / "wide.store" / "tokens" / narrow._view.folder.name
    meta = read_sealed(folder / VIEW_FILE, "")
    meta.pop("seal", None)
    for path in sorted(folder.glob("p*.tokens")):
        np.fromfile(path, np.uint16).astype(np.uint32).tofile(path)
        block_sums(path).astype("<u8").tofile(path.with_suffix(".sums"))
    write_sealed(folder / VIEW_FILE, {**meta, "dtype": "uint32"})
    wide = PileDataset(pilestore.open(tmp_path / "wide.store"), "train", seq_len=256, context=64, tokenizer=model)
    assert wide._view.dtype == np.uint32 and len(wide) == len(narrow)
    everything = list(range(len(wide)))
    expected, got = collate(narrow.__getitems__(everything)), collate(wide.__getitems__(everything))
    assert got.keys() == expected.keys() and all(torch.equal(got[key], expected[key]) for key in got)
    assert all(torch.equal(wide[i][key], narrow[i][key]) for i in (0, len(wide) - 1) for key in narrow[0])
    with open(folder / "p00000.tokens", "r+b") as fh:  # a byte of the second uint32 block (tokens 1024..2047)
        fh.seek(4096 + 10)
        byte = fh.read(1)
        fh.seek(4096 + 10)
        fh.write(bytes([byte[0] ^ 0x40]))
    fresh = PileDataset(pilestore.open(tmp_path / "wide.store"), "train", seq_len=256, context=64, tokenizer=model)
    starts = fresh.index._doc_starts()

    def last_token_read_in_partition_0(i: int) -> int:
        record = fresh.index._sample_records[i]
        spans = fresh.index._span_records[int(record["span_begin"]) :][: int(record["n_spans"])]
        spans = spans[spans["doc"] < starts[1]]
        return int((spans["offset"] + spans["context"] + spans["target"]).max()) if len(spans) else 0

    # samples whose tokens of partition 0 reach into tokens 1024..2047 and no further: counted in uint16 blocks,
    # they would all lie in the first block
    inside = [i for i in everything if 1024 < last_token_read_in_partition_0(i) <= 2048]
    assert inside
    for i in inside[:3]:
        with pytest.raises(TokenDamageError, match="bytes 4096..8192 do not match"):
            fresh.__getitems__([i])
        with pytest.raises(TokenDamageError, match="bytes 4096..8192 do not match"):
            fresh[i]
