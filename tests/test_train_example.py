"""examples/train_gpt.py under torchrun with 2 gloo ranks: a stopped-and-resumed run reads exactly the samples
(and, on the same ranks, computes exactly the losses) of an uninterrupted one, also when resumed on 1 rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pilestore
from pilestore.indexes import build_indexes
from pilestore.tokens import TokenView, tokenize
from pilestore.torch import PileDataset

ROOT = Path(__file__).resolve().parents[1]
STEPS, STOP, BATCH = 10, 4, 8


@pytest.fixture(scope="module")
def setup(small_store: Path, model: Path) -> dict:
    result = tokenize(pilestore.open(small_store), model)
    build_indexes(TokenView(Path(result["view"])), pilestore.open(small_store), 128, 32, "bestfit", val_fraction=0.1)
    names = PileDataset(
        small_store, "train", split="train", val_fraction=0.1, seq_len=128, context=32, tokenizer=model
    ).subsets
    # a small mixture, so that 10 steps cross an epoch boundary: about 48 samples, 6 steps per epoch
    weights = [f"{name}=0.003" for name in names]
    mixed = PileDataset(
        small_store,
        "train",
        split="train",
        val_fraction=0.1,
        seq_len=128,
        context=32,
        tokenizer=model,
        weights=dict.fromkeys(names, 0.003),
    )
    assert BATCH * 2 < len(mixed) < BATCH * STEPS
    return {"store": small_store, "model": model, "weights": weights}


def train(setup: dict, tmp: Path, name: str, ranks: int, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    args += [
        str(ROOT / "examples" / "train_gpt.py"),
        "--store",
        str(setup["store"]),
        "--tokenizer",
        str(setup["model"]),
    ]
    args += ["--seq-len", "128", "--context", "32", "--val-fraction", "0.1", "--steps", str(STEPS)]
    args += ["--global-batch", str(BATCH), "--dim", "32", "--layers", "1", "--heads", "2", "--eval-batches", "2"]
    args += ["--ckpt", str(tmp / name), "--ckpt-every", "100", "--sample-log", str(tmp / name / "log"), *extra]
    for weight in setup["weights"]:
        args += ["--weight", weight]
    (tmp / name).mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:  # e.g. ranks that disagree on their number of batches wait forever
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"training hung:\n{out[-3000:]}{err[-3000:]}")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out.splitlines()


def steps_of(folder: Path) -> dict[int, dict]:
    """step -> {"samples": sorted samples of all ranks, "per_rank": {rank: samples}, "loss": {rank: loss}}."""
    out: dict[int, dict] = {}
    for path in sorted(folder.glob("log.rank*")):
        rank = int(path.name.removeprefix("log.rank"))
        for line in path.read_text().splitlines():
            row = json.loads(line)
            step = out.setdefault(row["step"], {"samples": [], "per_rank": {}, "loss": {}})
            step["samples"] = sorted(step["samples"] + row["samples"])
            step["per_rank"][rank] = row["samples"]
            step["loss"][rank] = row["loss"]
    return out


def test_stopped_and_resumed_runs_read_the_samples_of_an_uninterrupted_one(setup: dict, tmp_path: Path) -> None:
    whole = train(setup, tmp_path, "whole", 2, "--workers", "1")
    assert any(line.startswith("val-json ") for line in whole)
    reference = steps_of(tmp_path / "whole")
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert all(len(s["samples"]) == BATCH for s in reference.values())

    train(setup, tmp_path, "stopped", 2, "--workers", "2", "--stop-after", str(STOP))
    assert sorted(steps_of(tmp_path / "stopped")) == list(range(1, STOP + 1))
    resumed_output = train(setup, tmp_path, "stopped", 2, "--workers", "2")
    assert f"resumed from {tmp_path / 'stopped'}" in "\n".join(resumed_output)
    resumed = steps_of(tmp_path / "stopped")
    assert sorted(resumed) == sorted(reference)
    for step, seen in reference.items():
        assert resumed[step]["per_rank"] == seen["per_rank"], f"step {step}"
        assert resumed[step]["loss"] == pytest.approx(seen["loss"], rel=1e-5), f"step {step}"

    train(setup, tmp_path, "fewer", 2, "--workers", "0", "--stop-after", str(STOP))
    train(setup, tmp_path, "fewer", 1, "--workers", "1")  # 2 ranks -> 1 rank
    fewer = steps_of(tmp_path / "fewer")
    assert {step: s["samples"] for step, s in fewer.items()} == {step: s["samples"] for step, s in reference.items()}
    epochs_crossed = {frozenset(s["samples"]) for s in reference.values()}
    assert len(epochs_crossed) == STEPS  # every step saw its own batch
