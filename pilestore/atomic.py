"""Files written whole or not at all: under a temporary name, renamed when complete, and what a killed run left.

write_atomic(path, data)   .NAME.tmp-PID, fsync, rename over NAME, fsync the folder
naming(path)               an OSError from a call on a file descriptor (write, fsync) names the file
remove_temps(folder)       a writer holding a store's lock deletes the temporary files of dead writers
remove_dead_temps(path)    beside an output outside a store: those of processes that are gone
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_TEMP = re.compile(r"\..+\.tmp-\d+|.+\.tmp")


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError from a call on a file descriptor (write, pwrite, ftruncate, fsync: they carry no file name)
    names `path`, so the CLI's one-line error says which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def fsync_path(path: Path) -> None:
    """fsync a file or folder by its path (a folder: so that a rename in it is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with naming(path):
            os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """Where a file is written before it is renamed to `path`: hidden, and named after the writing process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp(name: str) -> bool:
    """True for the names of files written before a rename (temp_name's, and the `NAME.tmp` of big files)."""
    return _TEMP.fullmatch(name) is not None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that readers see the old or the new file, never a part."""
    tmp = temp_name(path)
    try:
        with naming(path), open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; a failed write leaves nothing


def copy_atomic(src: Path, dst: Path) -> None:
    """Make `dst` a copy of the (small) file `src`, whole or not at all; nothing is written if it already is one."""
    data = src.read_bytes()
    if not dst.exists() or dst.read_bytes() != data:
        write_atomic(dst, data)


def remove_temps(folder: Path, keep: str) -> None:
    """Delete every temporary file under `folder` but in its subfolder `keep`: call it holding the lock that
    every writer of the folder holds, so that the files are those of writers that died (kill -9)."""
    for where, subfolders, names in os.walk(folder):
        if Path(where) == folder and keep in subfolders:
            subfolders.remove(keep)
        for name in names:
            if is_temp(name):
                log.info("removing %s, left by an interrupted command", Path(where) / name)
                (Path(where) / name).unlink(missing_ok=True)


def remove_dead_temps(path: Path) -> None:
    """Delete temp_name(path) files of processes on this machine that have died (killed before their rename)."""
    prefix = f".{path.name}.tmp-"
    for other in path.parent.iterdir():
        pid = other.name.removeprefix(prefix)
        if other.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted run", other)
            other.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True
