"""Stop a pilestore command at each of its file-system steps, re-run it, and compare with an uninterrupted run.

    python tests/killpoints.py kill|fail|interrupt TEMPLATE WORK CALLS tokenize --store {store} --tokenizer tok.model

For N = 1, 2, ...: TEMPLATE is copied to a fresh store (none if it does not exist), the command runs in a forked
child that is stopped just before its N-th call of one of CALLS (comma-separated, of os.replace, os.rename,
os.fsync, os.unlink and shutil.copyfile), then the command runs again to its end, and every file of the store is
compared with those of an uninterrupted run (JSON files without their timestamps and seals). N goes up to the
number of such calls that run made. How the child is stopped:

- kill: it SIGKILLs itself (nothing is cleaned up; a copy is first cut to half its bytes: a kill during it);
- fail: the call raises OSError(ENOSPC), as a full disk would (fsync's without a file name, as the kernel's);
  the command must then exit 1 with a one-line error that names a file, and leave no temporary file;
- interrupt: the call raises KeyboardInterrupt (Ctrl-C); the command must exit 130 and leave no temporary file.

One JSON line per point on stdout: {"point", "call", "path", "stopped", "error": its stderr, "rerun": exit
statuses, "differs": [files], "problems": [what the failed run did wrong]}, then {"calls": N, "sites": distinct
(name, pilestore file:line), "by_name": {name: count}}. In fail mode each call site is failed once (its first
call), not every call: the error is handled where it is raised (the same in interrupt mode).

Children are forked from this process, which has imported what the commands use, so a point costs the
command's own work, not an interpreter start (the random kills of test_crashes.py cover whole processes).
"""

from __future__ import annotations

import errno
import json
import os
import re
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
from pilestore.atomic import is_temp
from pilestore.manifest import STAGING_DIR

HOOKED = {"replace": os, "rename": os, "fsync": os, "unlink": os, "copyfile": shutil}
VOLATILE = {"created", "updated", "seconds", "seal"}  # JSON keys that differ between two uninterrupted runs


def _stop(mode: str, name: str, args: tuple[Any, ...]) -> None:
    if mode == "interrupt":
        raise KeyboardInterrupt
    if mode == "fail":
        where = None if name == "fsync" else str(args[0])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
    if name == "copyfile":
        data = Path(args[0]).read_bytes()
        Path(args[1]).write_bytes(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)


def _site() -> str:
    """file:line of the pilestore code that made the call (through pathlib, shutil, ...)."""
    frame = sys._getframe(2)
    while frame is not None and f"{os.sep}pilestore{os.sep}" not in frame.f_code.co_filename:
        frame = frame.f_back
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}" if frame is not None else "?"


def _hooks(names: list[str], mode: str, stop_at: int, seen: list[tuple[str, str, str]]) -> None:
    """Count the calls of these functions in this process; stop it at call number stop_at (0: never)."""
    for name in names:
        module = HOOKED[name]
        real = getattr(module, name)

        def hooked(*args: Any, _name: str = name, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            seen.append((_name, str(args[0]) if args else "", _site()))
            if len(seen) == stop_at:
                _stop(mode, _name, args)
            return _real(*args, **kwargs)

        setattr(module, name, hooked)


def run(
    argv: list[str], hooks: list[str], mode: str = "kill", stop_at: int = 0, calls_file: Path | None = None
) -> tuple[int, str]:
    """(exit status, stderr) of `pilestore argv` in a forked child; status -9 if it was killed."""
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.dup2(err.fileno(), 2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                seen: list[tuple[str, str, str]] = []
                _hooks(hooks, mode, stop_at, seen)
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
    found = sorted(p for p in store.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(store)): _comparable(p) for p in found}


def failure_problems(mode: str, store: Path, status: int, message: str) -> list[str]:
    """What a run stopped by an error did wrong: its exit status, its error line, temporary files it left."""
    problems = []
    if status != {"fail": 1, "interrupt": 130}[mode]:
        problems.append(f"exit status {status}")
    line = r"^Error: /\S+: No space left on device$" if mode == "fail" else r"^interrupted\. Re-run the same command"
    if "Traceback" in message or not re.search(line, message, re.MULTILINE):
        problems.append(f"not the one-line error expected: {message[-600:]!r}")
    left = [p for p in store.rglob("*") if is_temp(p.name) and STAGING_DIR not in p.relative_to(store).parts]
    problems += [f"left {p}" for p in left]
    return problems


def sweep(mode: str, template: Path, work: Path, hooks: list[str], argv: list[str]) -> None:
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
    sites: set[tuple[str, str]] = set()
    for point in range(1, len(calls) + 1):
        name, path, site = calls[point - 1]
        if mode != "kill" and (name, site) in sites:
            continue  # an error is handled where it is raised: each call site fails once
        sites.add((name, site))
        store, args = fresh("stopped.store")
        stopped, message = run(args, hooks, mode, stop_at=point)
        problems = failure_problems(mode, store, stopped, message) if mode != "kill" else []
        error = message
        rerun, message = run(args, [])
        got = files(store) if rerun == 0 else {}
        differs = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k)) if rerun == 0 else []
        line = {
            "point": point,
            "call": name,
            "site": site,
            "path": path,
            "stopped": stopped,
            "rerun": rerun,
            "differs": differs,
        }
        line["error"] = error[-1000:]
        line["problems"] = problems + ([f"re-run failed: {message[-1000:]}"] if rerun != 0 else [])
        print(json.dumps(line), flush=True)
    print(json.dumps({"calls": len(calls), "sites": len(sites), "by_name": Counter(c[0] for c in calls)}), flush=True)


if __name__ == "__main__":
    sweep(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(","), sys.argv[5:])
