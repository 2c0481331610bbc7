"""The README's quick start is what CI runs, and its demo command works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pilestore

from .conftest import ROOT


def _bash_blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    return [block.strip().splitlines() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_setup_and_test_commands() -> None:
    setup_and_test = _bash_blocks()[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert len(setup_and_test) == 2
    for command in setup_and_test:
        assert command in ci


def _run(block: str, cwd: Path) -> subprocess.CompletedProcess:
    venv_bin = str(Path(sys.executable).parent) + "/"
    command = block.replace(".venv/bin/", venv_bin).replace("examples/", f"{ROOT}/examples/")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_the_demo_commands_build_a_store_and_train_on_it(tmp_path: Path) -> None:
    (demo,) = _bash_blocks()[1]
    result = _run(demo, tmp_path)
    assert result.returncode == 0, result.stderr
    store = pilestore.open(tmp_path / "demo.store")
    assert len(store) > 100 and set(store.subsets) == {"Github", "Pile-CC"}
    assert "# document 0 of" in result.stdout
    (train,) = _bash_blocks()[2]
    result = _run(train, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("val-json ")]
    report = json.loads(line.removeprefix("val-json "))["report"]
    assert set(report) == {"Github", "Pile-CC", "all"} and 0 < report["all"]["bits_per_byte"] < 8
