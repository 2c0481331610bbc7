"""Kill a pilestore command at each of its file-system steps, re-run it, and compare with an uninterrupted run.

    python tests/killpoints.py TEMPLATE WORK CALLS tokenize --store {store} --tokenizer tok.model ...

For N = 1, 2, ...: TEMPLATE is copied to a fresh store (none if it does not exist), the command runs in a forked
child that SIGKILLs itself just before its N-th call of one of CALLS (comma-separated, of os.replace, os.rename,
os.fsync, os.unlink and shutil.copyfile; a copy is first cut to half its bytes: a kill in the middle of it),
then the command runs again to its end, and every file of the store is compared with those of an uninterrupted
run (JSON files without their timestamps and seals). N goes up to the number of such calls that run made.
One JSON line per point on stdout: {"point", "call", "path", "killed", "rerun": exit statuses, "differs":
[files]}, then {"points": N, "calls": {name: count}}.

Children are forked from this process, which has imported what the commands use, so a point costs the
command's own work, not an interpreter start (the random kills of test_crashes.py cover whole processes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pilestore.cli
import pilestore.indexes
import pilestore.merge
import pilestore.tokens  # noqa: F401  (imported before forking: the children start warm)

HOOKED = {"replace": os, "rename": os, "fsync": os, "unlink": os, "copyfile": shutil}
VOLATILE = {"created", "updated", "seconds", "seal"}  # JSON keys that differ between two uninterrupted runs


def _hooks(names: list[str], kill_at: int, seen: list[tuple[str, str]]) -> None:
    """Count the calls of these functions in this process; SIGKILL it at call number kill_at (0: never)."""
    for name in names:
        module = HOOKED[name]
        real = getattr(module, name)

        def hooked(*args: Any, _name: str = name, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            seen.append((_name, str(args[0]) if args else ""))
            if len(seen) == kill_at:
                if _name == "copyfile":
                    data = Path(args[0]).read_bytes()
                    Path(args[1]).write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(module, name, hooked)


def run(argv: list[str], hooks: list[str], kill_at: int = 0, calls_file: Path | None = None) -> tuple[int, str]:
    """(exit status, stderr) of `pilestore argv` in a forked child; status -9 if it was killed."""
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.dup2(err.fileno(), 2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                seen: list[tuple[str, str]] = []
                _hooks(hooks, kill_at, seen)
                sys.argv = ["pilestore", *argv, "-q"]
                try:
                    pilestore.cli.main()
                    code = 0
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else 1
                if calls_file is not None:
                    calls_file.write_text(json.dumps(seen))
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        message = err.read().decode(errors="replace")
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), message


def _comparable(path: Path) -> Any:
    if path.suffix != ".json":
        return path.read_bytes()

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(path.read_bytes()))


def files(store: Path) -> dict[str, Any]:
    """Every file of the store (but its lock) by relative path, in a form that two runs can compare."""
    return {
        str(p.relative_to(store)): _comparable(p) for p in sorted(store.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def sweep(template: Path, work: Path, hooks: list[str], argv: list[str]) -> None:
    def fresh(name: str) -> tuple[Path, list[str]]:
        store = work / name
        shutil.rmtree(store, ignore_errors=True)
        if template.exists():
            shutil.copytree(template, store)
        return store, [a.replace("{store}", str(store)) for a in argv]

    store, args = fresh("reference.store")
    calls_file = work / "calls.json"
    status, message = run(args, hooks, calls_file=calls_file)
    if status != 0:
        raise SystemExit(f"the uninterrupted run failed ({status}): {message}")
    calls = json.loads(calls_file.read_text())
    expected = files(store)
    for point in range(1, len(calls) + 1):
        store, args = fresh("killed.store")
        killed, message = run(args, hooks, kill_at=point)
        rerun, message = run(args, []) if killed == -signal.SIGKILL else (killed, message)
        got = files(store) if rerun == 0 else {}
        differs = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k)) if rerun == 0 else []
        name, path = calls[point - 1]
        line = {"point": point, "call": name, "path": path, "killed": killed, "rerun": rerun, "differs": differs}
        if rerun != 0:
            line["error"] = message[-1000:]
        print(json.dumps(line), flush=True)
    print(json.dumps({"points": len(calls), "calls": Counter(name for name, _ in calls)}), flush=True)


if __name__ == "__main__":
    sweep(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4:])
