"""numba.njit(cache=True) for pilestore's kernels, with a cache folder that works for any user.

numba keeps compiled functions beside their module (`__pycache__`), else in `$NUMBA_CACHE_DIR` or the user's
cache folder (`~/.cache/numba`), and where it can write none of these, `cache=True` fails at import: "cannot
cache function ...: no locator available". That is the usual container: a package installed by root, run as
another user (`docker run --user 1000`, Kubernetes' random UIDs) whose home is `/` or read-only. Then

    1. a private folder of this user's in the temp directory (`<tmp>/pilestore-numba-<uid>`, mode 0700: a
       folder that someone else owns or can write is never used, since numba loads what it finds there), else
    2. no cache: each process compiles the kernels it calls (a few seconds, at its first index build or batch),
       with a warning that says to set NUMBA_CACHE_DIR.

    @kernel(nogil=True)
    def fill(...): ...
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])


def kernel(**options: Any) -> Callable[[F], F]:
    """numba.njit(cache=True, **options), falling back to a private folder, then to no cache (module doc)."""

    def decorate(func: F) -> F:
        try:
            return numba.njit(cache=True, **options)(func)
        except RuntimeError as err:
            if "cannot cache" not in str(err):
                raise
        folder = private_folder()
        if folder is not None:
            with _cache_dir(folder):
                with contextlib.suppress(RuntimeError):
                    return numba.njit(cache=True, **options)(func)
        _warn_once(os.path.dirname(func.__code__.co_filename))
        return numba.njit(**options)(func)

    return decorate


def private_folder() -> Path | None:
    """`<tmp>/pilestore-numba-<uid>`, made if missing; None where it cannot be made, or is not a folder that
    only this user owns and can write (another user's files there would run as this user's code)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"pilestore-numba-{uid if uid is not None else 'user'}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    mine = uid is None or st.st_uid == uid
    if not stat.S_ISDIR(st.st_mode) or not mine or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return folder


@contextlib.contextmanager
def _cache_dir(folder: Path) -> Iterator[None]:
    """numba's CACHE_DIR for the functions decorated meanwhile (numba reads it when a function is decorated)."""
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(folder)
    try:
        yield
    finally:
        numba.config.CACHE_DIR = saved


@functools.cache
def _warn_once(where: str) -> None:
    warnings.warn(
        f"pilestore: numba cannot save its compiled kernels (not beside {where}, not in this user's cache folder, "
        f"not in a private folder of {tempfile.gettempdir()}), so every process compiles them again: a few seconds "
        "at its first index build or batch. Set NUMBA_CACHE_DIR to a folder this user can write to keep them.",
        RuntimeWarning,
        stacklevel=4,
    )
