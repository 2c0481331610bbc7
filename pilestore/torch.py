"""PyTorch side: a Dataset over a store's sample index and a distributed, resumable sampler.

torch is the `torch` extra and is imported only here.

    sampler = PileSampler(dataset, shuffle=True, seed=0)          # rank and world from torch.distributed
    loader = DataLoader(dataset, batch_size=B // world, sampler=sampler, num_workers=4, prefetch_factor=4)
    ...
    state = sampler.state_dict(consumed=step * B)                 # B = global batch size
    sampler.load_state_dict(state)                                # same or another number of ranks

Progress is counted in global samples (see pilestore.sampler): a run stopped after `consumed` samples resumes
exactly at the next unseen one, on any number of ranks, when `consumed` is a multiple of the world sizes
involved (as it is at a constant global batch size). DataLoader workers prefetch, so the sampler cannot know
how much the trainer consumed: pass `consumed` (the trainer's step times the global batch). Without it,
state_dict() assumes everything this rank's iterator handed out was consumed (exact with num_workers=0).
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from . import ring as rings
from .errors import PilestoreError
from .pool import Pool
from .sampler import EpochOrder, merge_ranges
from .samples import FIELDS, FIXED, RAGGED, SCALARS, batch_layout, check_fields

CHUNK = 8192  # positions turned into sample indices at a time


class SamplerStateError(PilestoreError):
    """A sampler state that does not belong to this dataset or sampler."""


def fingerprint_of(dataset: Any) -> str:
    """The dataset's own `fingerprint` if it has one, else one made from its length."""
    found = getattr(dataset, "fingerprint", None)
    if isinstance(found, str):
        return found
    return hashlib.sha256(f"len:{len(dataset)}".encode()).hexdigest()[:16]


class PileSampler(Sampler[int]):
    """Drop-in for DistributedSampler: seeded O(1)-memory shuffle, disjoint ranks, exact resume, exclusions.

    exclude: ranges [start, stop) of epoch positions to skip in every epoch (e.g. the samples steps 1000-1100
    saw before a loss spike: [(1000 * B, 1100 * B)] at global batch B). Progress counts the samples read, so
    a run resumed with an exclusion goes on with the first sample after it.
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        exclude: Sequence[tuple[int, int]] = (),
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.order = EpochOrder(len(dataset), num_replicas, seed, shuffle, drop_last, tuple(exclude))
        self.num_samples = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.exclude = self.order.exclude
        self.fingerprint = fingerprint_of(dataset)
        self.epoch = 0
        self.start = 0  # global samples of this epoch already consumed
        self._handed_out = 0  # indices this rank's current iterator has yielded

    @property
    def positions_per_epoch(self) -> int:
        """Global samples of an epoch: trimmed (drop_last) or padded (wrapping around) to a multiple of W."""
        return self.order.per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.start = 0

    def __len__(self) -> int:
        return self.order.rank_len(self.start, self.rank)

    def __iter__(self) -> Iterator[int]:
        self._handed_out = 0
        for counts in self.order.rank_counts(self.start, self.rank, CHUNK):
            for index in self.order.indices(counts, self.epoch).tolist():
                self._handed_out += 1
                yield index

    def state_dict(
        self, consumed: int | None = None, *, step: int | None = None, global_batch: int | None = None
    ) -> dict[str, Any]:
        """A few integers and the dataset fingerprint.

        consumed: global samples consumed this epoch; or step and global_batch: the state after `step` steps of
        a run that starts every epoch at its first sample and drops an epoch's incomplete last batch (as
        `pilestore sample --step` assumes). Neither: what this rank's iterator handed out (exact without workers).
        """
        epoch = self.epoch
        if step is not None:
            if global_batch is None:
                raise ValueError("state_dict(step=...) needs global_batch")
            epoch, within = divmod(step, self.order.steps_per_epoch(global_batch))
            consumed = within * global_batch
        elif consumed is None:
            consumed = self.start + self._handed_out * self.num_replicas
        return {
            "epoch": epoch,
            "consumed": int(consumed),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": self.num_samples,
            "exclude": [list(r) for r in self.exclude],
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the next unseen sample; refuses a state of another dataset or seed.

        Exclusions may be added on resume (that is what they are for) if they keep the state's own and skip
        nothing before the resume point."""
        for key, mine in (
            ("fingerprint", self.fingerprint),
            ("num_samples", self.num_samples),
            ("seed", self.seed),
            ("shuffle", self.shuffle),
        ):
            if state.get(key) != mine:
                raise SamplerStateError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {mine!r}: the state belongs "
                    "to another dataset or configuration; resume with the same store, view and sampler settings"
                )
        before = merge_ranges([(a, b) for a, b in state.get("exclude", [])])
        if merge_ranges([*before, *self.exclude]) != self.exclude:
            raise SamplerStateError(
                f"sampler state excludes {[list(r) for r in before]} but this sampler excludes "
                f"{[list(r) for r in self.exclude]}: keep the earlier exclusions when resuming"
            )
        last = np.array([int(state["consumed"]) - 1])
        old = EpochOrder(self.num_samples, exclude=before)
        if last[0] >= 0 and old.positions(last)[0] != self.order.positions(last)[0]:
            raise SamplerStateError(
                f"new exclusions {[list(r) for r in self.exclude if r not in before]} start before position "
                f"{int(old.positions(last)[0]) + 1}, which this run already read: exclude only positions ahead"
            )
        consumed = int(state["consumed"])
        if consumed % self.num_replicas:
            raise SamplerStateError(
                f"{consumed} consumed samples do not split over {self.num_replicas} ranks; "
                "resume at a step boundary with a global batch divisible by the world size"
            )
        self.epoch, self.start = int(state["epoch"]), consumed
        self._handed_out = 0


class PileDataset(torch.utils.data.Dataset):
    """Samples of a tokenized store, map-style: ds[i] is a dict of tensors.

    input_ids, labels  int64 [seq_len]; labels[j] is the token to predict after input_ids[:j + 1] (already
                       shifted, as nanoGPT, Megatron and torchtitan expect); -100 where nothing is predicted.
                       Hugging Face models shift inside the model: give them labels = input_ids with the same
                       -100 mask moved right by one (see docs/tokens.md).
    position_ids       int64 [seq_len], restarting at 0 with each document span
    doc_lengths        int64 [spans (+1 for padding)], tokens per span: cu_seqlens = cumsum
    n_bytes            int64 [], UTF-8 bytes of the original text the targets cover (for bits per byte)
    span_bytes         int64 [spans], the same per span
    subset             int64 [spans], subset id of each span's document (`subsets` names them)
    sample             int64 [], the sample's number in the index (for provenance)

    split/val_fraction pick the index built by `pilestore index --val-fraction` ("train": the train view
    without held-out documents, "val": the eval view of exactly them). subsets/weights make a mixture
    (pilestore.mixture): len(ds) is then the mixture's epoch, and ds[i] maps through it.

    Files open lazily in each process (fork, spawn or forkserver), so a DataLoader's workers each map their own
    copy; nothing of the index's size is read at open.

    fields: the fields to return (default all of the above); a trainer that uses only input_ids and labels
    asks for those and each batch is a third smaller to build and to move out of a DataLoader worker.
    dtype: torch.int64 (default) or torch.int32 for every field: half the bytes again. nn.Embedding takes
    int32 ids; cross_entropy wants int64 targets: cast labels on the GPU (`labels.to(device).long()`).

    A DataLoader with a batch size reads each batch at once through __getitems__ (SampleIndex.gather: the
    batch comes already collated in one buffer); ds[i] reads one sample.
    Both give the same tensors (tested) and check the same checksums.
    """

    def __init__(
        self,
        store: Any,
        view: str = "train",
        *,
        split: str = "all",
        val_fraction: float | None = None,
        subsets: Sequence[str] | None = None,
        weights: Mapping[str, float] | None = None,
        mixture_seed: int = 0,
        seq_len: int = 2048,
        context: int = 512,
        packing: str = "bestfit",
        tokenizer: Any = None,
        fields: Sequence[str] = FIELDS,
        dtype: torch.dtype = torch.int64,
    ) -> None:
        from .mixture import Mixture
        from .samples import SampleIndex, index_name
        from .tokens import find_view

        if isinstance(store, (str, Path)):
            from . import open as open_store

            store = open_store(store)
        self.store = store
        self.fields = check_fields(fields)
        if dtype not in (torch.int64, torch.int32):
            raise ValueError(f"dtype {dtype}: give torch.int64 or torch.int32")
        self.dtype = dtype
        self._view = find_view(store, tokenizer)
        self.name = index_name(view, seq_len, context, packing, split, val_fraction)
        self._index: SampleIndex | None = SampleIndex(self._view, self.name)
        self.generation = str(self._index.info["generation"])  # workers open this build or fail, never another
        self.subsets = list(self._index.subset_names)
        self.mixture = (
            Mixture.of(self.subsets, self._index.subset_samples, weights, subsets, mixture_seed)
            if subsets is not None or weights is not None
            else None
        )
        self._length = len(self.mixture) if self.mixture is not None else len(self._index)
        if dtype == torch.int32 and len(self._index) > torch.iinfo(torch.int32).max:
            raise ValueError(f"{len(self._index)} samples: their numbers do not fit torch.int32; use torch.int64")
        mix = "" if self.mixture is None else f"/{self.mixture.weights.tolist()}/{mixture_seed}"
        key = f"{self._view.meta['tokenizer']['sha256']}/{self.name}/{len(self._index)}{mix}"
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (the model's embedding rows)."""
        return int(self._view.meta["tokenizer"]["vocab_size"])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_index"] = None  # memory maps are reopened in the worker
        return state

    def __len__(self) -> int:
        return self._length

    @property
    def index(self) -> Any:
        """The SampleIndex (opened in this process on first use)."""
        if self._index is None:
            from .samples import SampleIndex

            self._index = SampleIndex(self._view, self.name, generation=self.generation)
        return self._index

    def sample_ids(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """The index's sample numbers at dataset positions (the identity without a mixture)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < -self._length or positions.max() >= self._length):
            raise IndexError(f"positions out of range for a dataset of {self._length} samples")
        from .mixture import sample_ids

        positions = positions % max(1, self._length)
        return sample_ids(self.index.samples["by_subset"], self.mixture, positions)

    def realised(self) -> list[dict[str, Any]]:
        """Per subset: weight, samples, positions and target bytes per epoch, and their shares."""
        from .mixture import Mixture

        mixture = self.mixture or Mixture.of(self.subsets, self.index.subset_samples)
        return mixture.realised(self.index.samples["by_subset"], self.index.samples["n_bytes"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -self._length <= i < self._length:
            raise IndexError(f"sample {i} out of range for a dataset of {self._length} samples")
        sample_id = int(self.sample_ids([i])[0]) if self.mixture is not None else i % self._length
        sample = self.index[sample_id]
        item = {
            "input_ids": torch.from_numpy(sample.input_ids),
            "labels": torch.from_numpy(sample.labels),
            "position_ids": torch.from_numpy(sample.position_ids),
            "doc_lengths": torch.from_numpy(sample.doc_lengths),
            "n_bytes": torch.tensor(sample.n_bytes, dtype=torch.int64),
            "span_bytes": torch.tensor([span["n_bytes"] for span in sample.spans], dtype=torch.int64),
            "subset": torch.tensor([span["subset"] for span in sample.spans], dtype=torch.int64),
            "sample": torch.tensor(sample_id, dtype=torch.int64),
        }
        return Fields({key: item[key].to(self.dtype) for key in self.fields})

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        """Samples at `positions` read as one batch (what a DataLoader with a batch size calls): the same
        fields as ds[i], built for the whole batch at once and already collated."""
        holder: list[torch.Tensor] = []

        def alloc(size: int) -> np.ndarray:
            holder.append(_batch_buffer(size, self.dtype))
            return holder[0].numpy()

        ids = positions if self.mixture is None else self.sample_ids(positions)  # gather checks their range
        _, layout = self.index.gather_packed(ids, alloc, self.fields)
        return Batch(_packed(holder[0], layout))


def _packed(buffer: torch.Tensor, layout: dict[str, tuple[int, tuple[int, ...]]]) -> Fields:
    """The fields of a batch_layout as views of `buffer`, remembering both: such a batch leaves a DataLoader
    worker as that one buffer, built in (_batch_buffer) or copied into a slot of the worker's shared-memory ring
    (_reduce_for_pipe), or pickled by value, never as a shared-memory segment created, mapped and handed over
    per batch (benchmarks.md, "How a batch leaves a worker")."""
    base = buffer.storage_offset()
    fields = Fields(  # as_strided: 0.6x the time of slicing and reshaping
        {
            key: buffer.as_strided(shape, (shape[1], 1) if len(shape) == 2 else (1,), base + at)
            for key, (at, shape) in layout.items()
        }
    )
    fields._buffer, fields._layout = buffer, layout
    return fields


def _unpacked(array: np.ndarray, layout: dict[str, tuple[int, tuple[int, ...]]]) -> Fields:
    return _packed(torch.from_numpy(array if array.flags.writeable else array.copy()), layout)


_received = Pool()  # the memory of batches read or received in this process, reused (pilestore.pool)
_NUMPY = {t: np.dtype(str(t).removeprefix("torch.")) for t in (torch.int32, torch.int64)}
_worker_ring: tuple[int, rings.Ring | None] | None = None  # (pid, its ring or None where none could be made)
_ring_lock = threading.Lock()


def _ring_for(nbytes: int) -> rings.Ring | None:
    """This worker process's ring, made on first use with slots a quarter larger than this batch; None outside
    a DataLoader worker or where no ring can be made. Known after the first call: no lock, nothing imported."""
    known = _worker_ring
    if known is not None and known[0] == os.getpid():  # another pid: a process forked since, with rings of its own
        return known[1]
    with _ring_lock:
        return _first_ring_for(nbytes)


def _first_ring_for(nbytes: int) -> rings.Ring | None:
    global _worker_ring
    from multiprocessing.util import Finalize

    from torch.utils.data import get_worker_info

    if _worker_ring is None or _worker_ring[0] != os.getpid():  # first batch of this process: tried once
        ring = None
        if get_worker_info() is not None:
            ring = rings.create(max(nbytes + nbytes // 4, 1 << 16))  # None: no /dev/shm or no room, all by value
        if ring is not None:
            Finalize(ring, rings.close, args=(ring,), exitpriority=10)  # run as the worker ends
            rings.remove_on_sigterm(ring)  # and if it is terminated instead
        _worker_ring = (os.getpid(), ring)
    return _worker_ring[1]


def _batch_buffer(size: int, dtype: torch.dtype) -> torch.Tensor:
    """A batch's buffer of `size` items: in a DataLoader worker, a free slot of its ring, so the batch is built
    where the trainer will read it (nothing to copy when it is sent); elsewhere, or with no free slot, memory of
    this process's pool (already faulted in when an earlier batch's memory is reused)."""
    nbytes = size * dtype.itemsize
    ring = _ring_for(nbytes)
    np_dtype = _NUMPY[dtype]
    array = ring.claim(nbytes, np_dtype) if ring is not None else None
    return torch.from_numpy(array if array is not None else _received.take(size, np_dtype))


def _reduce_for_pipe(fields: Fields) -> tuple[Any, ...]:
    """How a batch leaves a DataLoader worker (ForkingPickler, which multiprocessing queues use): a packed
    batch built in a slot of the worker's ring (_batch_buffer), or else copied into a free one, is named by its
    slot; plain pickle, and every batch that does not fit or finds no free slot, pickles by value
    (Fields.__reduce__). On this project's VM a worker served 1.1-1.6x the batches this way (1.4-2.3x with two
    workers) and the trainer's process spent 0.41-0.77x the CPU time per batch (benchmarks.md, "Through a
    shared-memory ring of slots")."""
    buffer = fields._buffer
    if buffer is not None and fields._layout is not None and fields._is_packed():
        ring = _ring_for(buffer.nbytes)
        k = None if ring is None else ring.sent(buffer.data_ptr())  # built in a slot (_batch_buffer): sent as it is
        if ring is not None and k is None:
            k = ring.put(buffer.numpy())
        if ring is not None and k is not None:
            dtype = str(buffer.dtype).removeprefix("torch.")
            return (_from_ring, (ring.name, ring.pid, k, dtype, buffer.numel(), fields._layout))
    return fields.__reduce__()


def _from_ring(
    name: str, pid: int, k: int, dtype: str, numel: int, layout: dict[str, tuple[int, tuple[int, ...]]]
) -> Fields:
    """The batch in slot k of worker pid's ring, as it lies there (no copy): the slot is free for the worker
    again when the batch's tensors are all gone."""
    return _packed(torch.from_numpy(rings.opened(name, pid).lend(k, numel, np.dtype(dtype))), layout)


def collate(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack fixed-length fields; concatenate per-span fields with `*_offsets` saying where each sample's begin.

    Every field is a view of one buffer of the samples' dtype (pilestore.samples.batch_layout), which a
    DataLoader worker sends to the trainer as one array (_packed). A Batch (what PileDataset.__getitems__ gives
    a DataLoader) is already collated and is returned as it is."""
    if isinstance(batch, Batch):
        return batch.collated
    b = len(batch)
    fields = [key for key in FIELDS if key in batch[0]] if b else list(FIELDS)
    t = next((len(batch[0][key]) for key in FIXED if key in fields), 0) if b else 0
    lengths = {key: [len(item[key]) for item in batch] for key in RAGGED if key in fields}
    size, layout = batch_layout(b, t, {key: sum(values) for key, values in lengths.items()}, fields)
    out = _packed(torch.empty(size, dtype=batch[0][fields[0]].dtype if b else torch.int64), layout)
    for key in (key for key in (*FIXED, *SCALARS) if key in fields):
        torch.stack([item[key] for item in batch], out=out[key])
    for key in lengths:
        torch.cat([item[key] for item in batch], out=out[key])
        out[f"{key}_offsets"].copy_(torch.from_numpy(np.cumsum([0, *lengths[key]], dtype=np.int64)))
    return out


class Fields(dict):
    """A sample's or a batch's tensors by name (a dict); asking for a field the dataset was not built with says
    how to get it instead of a bare KeyError."""

    _buffer: torch.Tensor | None = None  # set by _packed: every field is a view of this buffer, as _layout says
    _layout: dict[str, tuple[int, tuple[int, ...]]] | None = None

    def __copy__(self) -> Fields:
        """A shallow copy: the same tensors, not tied to the batch's buffer. torch's pin_memory copies a batch
        this way and replaces every field with a pinned copy: the batch's ring slot (pilestore.ring) is then
        free as soon as the batch itself is dropped, not held by the pinned one."""
        return Fields(self)

    def __reduce__(self) -> tuple[Any, ...]:
        """A batch whose fields are still exactly the views of its buffer pickles as that one array (by value);
        any other (a field replaced, added or removed since) as a plain dict of tensors."""
        if self._buffer is not None and self._layout is not None and self._is_packed():
            return (_unpacked, (self._buffer.numpy(), self._layout))
        return (Fields, (dict(self),))

    def _is_packed(self) -> bool:
        """Whether every field is still the view of the buffer that _packed made (same keys, places, shapes)."""
        buffer = self._buffer
        return self.keys() == self._layout.keys() and all(
            isinstance(self[key], torch.Tensor)
            and self[key].dtype == buffer.dtype
            and self[key].data_ptr() == buffer.data_ptr() + at * buffer.element_size()
            and tuple(self[key].shape) == shape
            for key, (at, shape) in self._layout.items()
        )

    def __missing__(self, key: str) -> torch.Tensor:
        raise KeyError(
            f"{key!r} is not among these fields {list(self)}: PileDataset(fields=...) chooses them from "
            f"{list(FIELDS)} (in a batch, each of {list(RAGGED)} comes with its <key>_offsets)"
        )


class Batch(Sequence[dict[str, torch.Tensor]]):
    """Samples read together (PileDataset.__getitems__): `collated` holds them as collate lays a batch out;
    batch[k] is sample k as ds[i] gives it (views), so any collate_fn, default_collate too, still works."""

    def __init__(self, collated: dict[str, torch.Tensor]) -> None:
        self.collated = collated

    def __len__(self) -> int:
        key = next(key for key in FIELDS if key in self.collated)
        return len(self.collated[f"{key}_offsets"]) - 1 if key in RAGGED else len(self.collated[key])

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= k < len(self):
            raise IndexError(f"sample {k} out of range for a batch of {len(self)}")
        k %= len(self)
        item = Fields({key: self.collated[key][k] for key in (*FIXED, *SCALARS) if key in self.collated})
        for key in (key for key in RAGGED if key in self.collated):
            begin, end = self.collated[f"{key}_offsets"][k : k + 2].tolist()
            item[key] = self.collated[key][begin:end]
        return item


ForkingPickler.register(Fields, _reduce_for_pipe)


def exit_rank(code: int = 0) -> NoReturn:
    """End a training process: let go of what it holds, close the process group, flush, then os._exit(code).

    Call it last in a script run under torchrun (after saving checkpoints and closing loggers: atexit handlers
    do not run). Garbage is collected first, so DataLoader iterators shut their workers down.

    Why not a plain exit: gloo's worker threads release a finished collective, and the tensors it holds, a
    moment after the Python side has let go of it. When that moment falls after the interpreter has begun
    finalizing, the thread cannot take the GIL, is unwound inside C++ and the process aborts with
    'terminate called without an active exception' (SIGABRT) after all its work is done: seen in 2 of ~25 CI
    runs of the example and the Hugging Face guide, reproduced under CPU load (core backtrace:
    ProcessGroupGloo::runLoop -> AsyncWork::~AsyncWork -> TensorImpl::decref_pyobject -> take_gil ->
    pthread_exit, during Py_FinalizeEx). destroy_process_group() does not stop those threads; not finalizing
    does not race them.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


from .evaluation import eval_loaders, evaluate, reduce_metrics, span_losses  # noqa: E402  (they use PileDataset)

__all__ = [
    "Batch",
    "Fields",
    "PileDataset",
    "PileSampler",
    "SamplerStateError",
    "collate",
    "eval_loaders",
    "evaluate",
    "exit_rank",
    "fingerprint_of",
    "reduce_metrics",
    "span_losses",
]
