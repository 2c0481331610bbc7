"""The task guides in docs/guides work as written: every code block runs, in order, in one fresh folder.

```bash blocks run in bash (-e, pipefail) with the venv's tools first on PATH; ```python blocks run as scripts;
```python file=NAME blocks are written to NAME for later blocks to run. `examples/` is reachable as from the
repository root. After the run, the test checks what the guides promise left behind. That run takes ~3 minutes,
so it carries the `guides` marker: `pytest -m guides` (CI runs it after the default run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pilestore

from .conftest import ROOT

GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))  # README.md last: its links only
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path) -> list[tuple[str, str, str]]:
    """(language, info string, code) of every fenced block, in order."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(path.read_text())]


def run_guide(path: Path, cwd: Path) -> list[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONWARNINGS": "ignore",
    }
    outputs = []
    for number, (language, info, code) in enumerate(code_blocks(path), start=1):
        where = f"{path.name}, code block {number} ({language} {info})"
        if info.startswith("file="):
            (cwd / info.removeprefix("file=")).write_text(code)
            continue
        if language == "bash":
            command = ["bash", "-euo", "pipefail", "-c", code]
        elif language == "python":
            command = [sys.executable, "-c", code]
        else:
            continue  # ```text and the like: output shown to the reader
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"{where} failed:\n{code}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
        )
        outputs.append(result.stdout)
    return outputs


@pytest.fixture(scope="module")
def guide_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    cwd = tmp_path_factory.mktemp("guides")
    (cwd / "examples").symlink_to(ROOT / "examples")
    try:
        return cwd, {path.name: "\n".join(run_guide(path, cwd)) for path in GUIDES}
    finally:
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, check=False)


def test_every_guide_has_code_and_is_listed_in_the_guides_index() -> None:
    assert len(GUIDES) == 10  # README.md and the nine guides
    index = (ROOT / "docs" / "guides" / "README.md").read_text()
    assert "docs/guides/README.md" in (ROOT / "README.md").read_text()
    for path in GUIDES:
        if path.name != "README.md":
            assert any(lang in ("bash", "python") for lang, _, _ in code_blocks(path)), path.name
            assert f"({path.name})" in index, f"{path.name} is not listed in docs/guides/README.md"


@pytest.mark.guides
def test_the_guides_run_as_written_and_leave_what_they_promise(guide_outputs: tuple[Path, dict[str, str]]) -> None:
    import torch

    cwd, out = guide_outputs
    store = pilestore.open(cwd / "pile.store")  # 01: two shards, two partitions; a round trip; a val store
    assert store.num_partitions == 2 and set(store.subsets) == {"Github", "Pile-CC"}
    assert f"{len(store)} documents;" in out["01-ingest.md"]
    assert (cwd / "roundtrip.jsonl.zst").stat().st_size > 0 and len(pilestore.open(cwd / "val.store")) > 0
    assert "4000 [PAD] [UNK]" in out["02-tokenizer.md"] and (cwd / "tok-bytes.model").exists()
    assert re.search(r"bytes; \{'doc': \d+", out["03-tokenize.md"])
    assert re.search(r"step 12 loss \d", out["04-train-ddp.md"]) and "val-json " in out["04-train-ddp.md"]
    lightning = out["05-train-lightning.md"]
    assert "trained to step 6" in lightning and "trained to step 10" in lightning
    saved = torch.load(cwd / "lightning/checkpoints/epoch=0-step=6.ckpt", weights_only=False)
    assert saved["PileData"]["consumed"] == 6 * 16  # the sampler's state went into Lightning's checkpoint
    assert "trained 8 steps, train loss" in out["06-train-hf.md"]
    assert "reads the same samples as without stopping: True" in out["07-resume.md"]
    assert "refused: sampler state has seed=0" in out["07-resume.md"]
    assert sorted(p.name for p in (cwd / "ckpt").glob("*.pt")) == ["step-00000004.pt", "step-00000008.pt"]
    resumed = [json.loads(line) for line in (cwd / "resumed.jsonl.rank0").read_text().splitlines()]
    assert [row["step"] for row in resumed] == [5, 6, 7, 8]  # the second run went on after step 4's checkpoint
    assert re.search(r"all +bits per byte \d\.\d+ ", out["08-bits-per-byte.md"])
    ray_store, merged = pilestore.open(cwd / "ray.store"), pilestore.open(cwd / "merged.store")
    texts = [d.text for d in store]
    assert [d.text for d in ray_store] == texts and [d.text for d in merged] == texts  # same order as local
    assert f"{len(store)} documents in merged.store" in out["09-scale-out.md"]


def test_every_relative_link_in_the_docs_points_at_a_file_in_the_repository() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                                     capture_output=True, check=False)  # fmt: skip
            assert path.is_dir() or tracked.returncode == 0, f"{target} (linked from {page.name}) is not in git"
            checked += 1
    assert checked > 30
