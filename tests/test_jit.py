"""pilestore's numba kernels where numba has no cache folder of its own: a package installed by root and run by
another user whose home cannot be written (containers started with --user). Plain numba.njit(cache=True)
fails at import there ("cannot cache function ...: no locator available").

Reproduced as any user: a copy of the package whose `__pycache__` is a file (nothing can be made beside the
modules), a home whose `.cache` is a file, NUMBA_CACHE_DIR unset, and a temp directory of the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pilestore

PROGRAM = """
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import pilestore
    from pilestore import assemble, blockhash, pieces, windows  # every module with kernels decorates at import
    import numpy as np
    ends, counts, sizes = np.array([3, 9, 2, 4], np.int64), np.array([2, 2], np.int64), np.array([7, 5], np.int64)
    pieces.fix_ends(ends, counts, sizes)  # compiled (or loaded from the cache) here
print(json.dumps({
    "package": pilestore.__file__,
    "ends": ends.tolist(),
    "hits": sum(pieces.fix_ends.stats.cache_hits.values()),
    "misses": sum(pieces.fix_ends.stats.cache_misses.values()),
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
}))
"""


def _homeless_install(tmp_path: Path) -> dict[str, str]:
    """The package copied where numba can cache nothing, and the environment to run it with."""
    site = tmp_path / "site"
    shutil.copytree(Path(pilestore.__file__).parent, site / "pilestore", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "pilestore" / "__pycache__").write_text("a file: no cache folder can be made beside the modules")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("a file: no cache folder in this home")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(site), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(tmp_path / "tmp"))
    return env


def _run(env: dict[str, str]) -> dict:
    done = subprocess.run(  # not run from the checkout: "-c" puts the working directory first on sys.path
        [sys.executable, "-c", PROGRAM], env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernels_cache_in_a_private_temp_folder_where_numba_has_none(tmp_path: Path) -> None:
    env = _homeless_install(tmp_path)
    first = _run(env)
    assert first["package"].startswith(str(tmp_path / "site"))
    assert first["ends"] == [3, 7, 2, 5] and first["warnings"] == []  # fix_ends: a text's last piece ends at its size
    assert first["misses"] >= 1 and first["hits"] == 0
    folder = tmp_path / "tmp" / f"pilestore-numba-{os.getuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert any(p.name.startswith("pieces.fix_ends") for p in folder.rglob("*.nbc"))
    second = _run(env)  # another process loads what the first compiled
    assert second["ends"] == [3, 7, 2, 5] and second["hits"] >= 1 and second["misses"] == 0


def test_kernels_compile_in_memory_with_a_warning_when_no_private_folder_can_be_had(tmp_path: Path) -> None:
    env = _homeless_install(tmp_path)
    shared = tmp_path / "tmp" / f"pilestore-numba-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)  # writable by anyone: what it holds could be anyone's code, so it is not used
    result = _run(env)
    assert result["ends"] == [3, 7, 2, 5] and result["hits"] == 0
    assert len(result["warnings"]) == 1 and "NUMBA_CACHE_DIR" in result["warnings"][0]
    assert list(shared.iterdir()) == []
