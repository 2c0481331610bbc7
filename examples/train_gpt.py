"""Train a small GPT on a pilestore store with DDP: resumable at the exact sample, bits per byte per subset.

    pilestore tokenize --store demo.store --tokenizer tok.model --seq-len 256 --context 64 --val-fraction 0.05
    torchrun --standalone --nproc-per-node 2 examples/train_gpt.py --store demo.store --seq-len 256 --context 64 \
        --val-fraction 0.05 --steps 200 --global-batch 16 --ckpt ckpt/
    # stopped? the same command resumes from the newest checkpoint in ckpt/, on any number of ranks

gloo on CPU, nccl on GPU. A checkpoint holds the model, the optimizer, the step and the sampler's state
(a few integers: see pilestore.torch.PileSampler), so a resumed run reads exactly the samples an uninterrupted
one would have. --sample-log writes, per step and rank, the samples read and the loss (one JSON line each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import pilestore
from pilestore.torch import PileDataset, PileSampler, collate, eval_loaders, evaluate, exit_rank


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A plain decoder; positions restart with each document of a packed sample (the batch's position_ids)."""

    def __init__(self, vocab: int, seq_len: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.positions(position_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--tokenizer", type=Path, default=None, help="when the store has several tokenized views")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--val-fraction", type=float, default=None, help="as given to `pilestore index`")
    p.add_argument("--weight", action="append", default=[], help="mixture weight SUBSET=EPOCHS (repeatable)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (resumes from its newest)")
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--stop-after", type=int, default=None, help="stop (as if killed) after this step's checkpoint")
    p.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    p.add_argument("--eval-batches", type=int, default=None, help="batches per subset (default: all)")
    p.add_argument("--sample-log", type=Path, default=None, help="per-step JSON lines: <log>.rank<R>")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (GPU)")
    return p.parse_args()


def setup() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ:  # plain `python train_gpt.py`: one process
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank, dist.get_world_size(), torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")


def newest_checkpoint(folder: Path | None) -> Path | None:
    found = sorted(folder.glob("step-*.pt")) if folder is not None and folder.exists() else []
    return found[-1] if found else None


def save(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, sampler_state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "sampler": sampler_state}
    tmp = folder / f".step-{step:08d}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / f"step-{step:08d}.pt")  # a checkpoint is complete or absent


def main() -> None:
    args = arguments()
    rank, world, device = setup()
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} must be a multiple of the world size {world}")
    torch.manual_seed(args.seed)
    store = pilestore.open(args.store)
    split = {"split": "train", "val_fraction": args.val_fraction} if args.val_fraction else {}
    weights = {w.rpartition("=")[0]: float(w.rpartition("=")[2]) for w in args.weight} or None
    shape = {"seq_len": args.seq_len, "context": args.context, "tokenizer": args.tokenizer}
    fields = ("input_ids", "labels", "position_ids", "sample")  # what the loop below reads
    dataset = PileDataset(store, "train", weights=weights, fields=fields, **split, **shape)
    sampler = PileSampler(dataset, seed=args.seed)  # rank and world size from torch.distributed
    if rank == 0 and weights:
        for row in dataset.realised():  # exact, from the index: what an epoch of this mixture holds
            print(f"mixture {row['subset']:<20} x{row['weight']:g}: {row['positions']:,} samples per epoch, "
                  f"{row['share_bytes']:.1%} of its bytes", flush=True)  # fmt: skip
    steps_per_epoch = sampler.positions_per_epoch // args.global_batch
    vocab = dataset.vocab_size
    model = GPT(vocab, args.seq_len, args.dim, args.layers, args.heads).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    step = 0
    checkpoint = newest_checkpoint(args.ckpt)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step = state["step"]
        if rank == 0:
            print(f"resumed from {checkpoint} at step {step} ({world} ranks)", flush=True)
    ddp = DistributedDataParallel(model) if world > 1 else model
    log = open(f"{args.sample_log}.rank{rank}", "a") if args.sample_log else None  # noqa: SIM115
    per_rank = args.global_batch // world
    started, tokens_seen = time.perf_counter(), 0
    while step < args.steps:
        epoch = step // steps_per_epoch
        if sampler.epoch != epoch:
            sampler.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_size=per_rank,
            sampler=sampler,
            num_workers=args.workers,
            collate_fn=collate,
            drop_last=True,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if args.workers else None,  # see docs/torch.md: keeps a worker busy between batches
            persistent_workers=False,
        )
        for batch in loader:
            input_ids = batch["input_ids"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            positions = batch["position_ids"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                logits = ddp(input_ids, positions)
            loss = F.cross_entropy(logits.float().view(-1, vocab), labels.view(-1), ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            tokens_seen += int((labels != -100).sum()) * world
            if log is not None:
                log.write(json.dumps({"step": step, "samples": batch["sample"].tolist(), "loss": loss.item()}) + "\n")
                log.flush()
            if rank == 0 and (step % 10 == 0 or step == args.steps):
                rate = tokens_seen / (time.perf_counter() - started)
                print(f"step {step} loss {loss.item():.4f} ({rate:,.0f} target tokens/s)", flush=True)
            if args.ckpt is not None and (step % args.ckpt_every == 0 or step == args.stop_after):
                if rank == 0:  # workers prefetch: the sampler state comes from the step, not the iterator
                    save(
                        args.ckpt, step, model, optimizer, sampler.state_dict(step=step, global_batch=args.global_batch)
                    )
                if world > 1:
                    dist.barrier()
            if args.eval_every and step % args.eval_every == 0:
                report_validation(args, store, model, device, rank, shape, step)
            if step == args.stop_after or step >= args.steps or step % steps_per_epoch == 0:
                break
        if step == args.stop_after:
            break
    if step >= args.steps and not (args.eval_every and step % args.eval_every == 0):
        report_validation(args, store, model, device, rank, shape, step)
    exit_rank()  # closes the process group and skips the interpreter's teardown, which gloo can abort


def report_validation(args: argparse.Namespace, store, model, device, rank: int, shape: dict, step: int) -> None:  # noqa: ANN001
    """Bits per byte per subset on the held-out documents (the whole store when there is no split)."""
    model.eval()
    split = {"val_fraction": args.val_fraction} if args.val_fraction else {}
    loaders = eval_loaders(store, batch_size=max(1, args.global_batch // 2), **split, **shape)
    names = next(iter(loaders.values())).dataset.subsets
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
        report = evaluate(
            lambda b: model(b["input_ids"], b["position_ids"]), loaders.values(), names, device, args.eval_batches
        )
    model.train()
    if rank == 0:
        for name, row in report.items():
            print(f"val step {step} {name:<20} bpb {row['bits_per_byte']:.4f} ppl {row['perplexity']:9.2f} "
                  f"({row['tokens']:,} tokens)", flush=True)  # fmt: skip
        print("val-json " + json.dumps({"step": step, "report": report}), flush=True)
        if math.isnan(report["all"]["bits_per_byte"]):
            raise SystemExit("validation saw no bytes")


if __name__ == "__main__":
    main()
