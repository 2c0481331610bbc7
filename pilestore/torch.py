"""PyTorch side: a Dataset over a store's sample index and a distributed, resumable sampler.

torch is the `torch` extra and is imported only here.

    sampler = PileSampler(dataset, shuffle=True, seed=0)          # rank and world from torch.distributed
    loader = DataLoader(dataset, batch_size=B // world, sampler=sampler, num_workers=4)
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

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import PilestoreError
from .sampler import Permutation, epoch_seed, rank_positions

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
    """Drop-in for DistributedSampler: seeded O(1)-memory shuffle, disjoint ranks, exact resume, exclusions."""

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
        for start, stop in exclude:
            if not 0 <= start <= stop:
                raise ValueError(f"excluded range ({start}, {stop}) must satisfy 0 <= start <= stop")
        self.num_samples = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.exclude = tuple((int(a), int(b)) for a, b in exclude)
        self.fingerprint = fingerprint_of(dataset)
        self.epoch = 0
        self.start = 0  # global positions of this epoch already consumed
        self._handed_out = 0  # indices this rank's current iterator has yielded

    @property
    def positions_per_epoch(self) -> int:
        """Global positions of an epoch: trimmed (drop_last) or padded (wrapping around) to a multiple of W."""
        n, w = self.num_samples, self.num_replicas
        return (n // w) * w if self.drop_last else -(-n // w) * w

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.start = 0

    def _positions(self) -> np.ndarray:
        positions = rank_positions(self.start, self.positions_per_epoch, self.rank, self.num_replicas)
        for a, b in self.exclude:
            positions = positions[(positions < a) | (positions >= b)]
        return positions

    def __len__(self) -> int:
        return len(self._positions())

    def __iter__(self) -> Iterator[int]:
        positions = self._positions()
        permutation = Permutation(self.num_samples, epoch_seed(self.seed, self.epoch)) if self.shuffle else None
        self._handed_out = 0
        for at in range(0, len(positions), CHUNK):
            chunk = positions[at : at + CHUNK] % max(1, self.num_samples)  # padding wraps to the epoch's start
            indices = permutation(chunk) if permutation is not None else chunk
            for index in indices.tolist():
                self._handed_out += 1
                yield index

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """A few integers and the dataset fingerprint. `consumed`: global samples consumed this epoch."""
        if consumed is None:
            consumed = self.start + self._handed_out * self.num_replicas
        return {
            "epoch": self.epoch,
            "consumed": int(consumed),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": self.num_samples,
            "exclude": [list(r) for r in self.exclude],
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the next unseen sample; refuses a state of another dataset, seed or exclusion list."""
        for key, mine in (
            ("fingerprint", self.fingerprint),
            ("num_samples", self.num_samples),
            ("seed", self.seed),
            ("shuffle", self.shuffle),
            ("exclude", [list(r) for r in self.exclude]),
        ):
            if state.get(key) != mine:
                raise SamplerStateError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {mine!r}: the state belongs "
                    "to another dataset or configuration; resume with the same store, view and sampler settings"
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
    subset             int64 [spans], subset id of each span's document (`subsets` names them)

    Files open lazily in each process (fork or spawn), so a DataLoader's workers each map their own copy.
    """

    def __init__(
        self,
        store: Any,
        view: str = "train",
        *,
        seq_len: int = 2048,
        context: int = 512,
        packing: str = "bestfit",
        tokenizer: Any = None,
    ) -> None:
        from .samples import SampleIndex, index_name
        from .tokens import find_view

        self.store = store
        self.kind = view
        self._view = find_view(store, tokenizer)
        self.name = index_name(view, seq_len, context, packing)
        self._index: SampleIndex | None = SampleIndex(self._view, self.name)
        self._length = len(self._index)
        self.subsets = list(store.manifest["subsets"])
        key = f"{self._view.meta['tokenizer']['sha256']}/{self.name}/{self._length}"
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        self._subset_of_part: list[np.ndarray] = [
            np.array([self.subsets.index(name) for name in part["subsets"]], dtype=np.int64)
            for part in store.manifest["partitions"]
        ]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_index"] = None  # memory maps are reopened in the worker
        return state

    def __len__(self) -> int:
        return self._length

    def _sample_index(self) -> Any:
        if self._index is None:
            from .samples import SampleIndex

            self._index = SampleIndex(self._view, self.name)
        return self._index

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self._sample_index()[i]
        subsets = []
        for span in sample.spans:
            p, local = self.store.locate(span["doc"])
            subsets.append(self._subset_of_part[p][self.store.index(p).subset[local]])
        return {
            "input_ids": torch.from_numpy(sample.input_ids),
            "labels": torch.from_numpy(sample.labels),
            "position_ids": torch.from_numpy(sample.position_ids),
            "doc_lengths": torch.from_numpy(sample.doc_lengths),
            "n_bytes": torch.tensor(sample.n_bytes, dtype=torch.int64),
            "subset": torch.tensor(subsets, dtype=torch.int64),
        }


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack fixed-length fields; concatenate per-span fields with `*_offsets` saying where each sample's begin."""
    out = {key: torch.stack([b[key] for b in batch]) for key in ("input_ids", "labels", "position_ids", "n_bytes")}
    for key in ("doc_lengths", "subset"):
        parts = [b[key] for b in batch]
        out[key] = torch.cat(parts)
        out[f"{key}_offsets"] = torch.tensor([0, *np.cumsum([len(x) for x in parts]).tolist()], dtype=torch.int64)
    return out


__all__ = ["PileDataset", "PileSampler", "SamplerStateError", "collate", "fingerprint_of"]
