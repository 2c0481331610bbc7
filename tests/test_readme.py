"""The README's quick start is what CI runs, and its demo command works."""

from __future__ import annotations

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


def test_the_demo_command_builds_a_readable_store(tmp_path: Path) -> None:
    (demo,) = _bash_blocks()[1]
    venv_bin = str(Path(sys.executable).parent) + "/"
    command = demo.replace(".venv/bin/", venv_bin).replace("examples/", f"{ROOT}/examples/")
    result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    store = pilestore.open(tmp_path / "demo.store")
    assert len(store) > 100 and set(store.subsets) == {"Github", "Pile-CC"}
    assert "# document 0 of" in result.stdout
