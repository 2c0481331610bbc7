"""Run ingest's per-source and tokenize's per-partition jobs as Ray tasks (`--executor ray`, the `ray` extra).

Each task writes only its own files (a source's staging folder, a partition's token files) under the store,
which must be on storage every node sees (NFS, Lustre, a mounted bucket...). The command that submitted the
tasks waits for all of them, then makes its one atomic commit (the manifest, or view.json) as a local run does:
the files and the result are the same as a local run's. A task that fails stops the others and its error is
raised here as it was raised there; nothing is committed, and a re-run reuses what finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import PilestoreError

EXECUTORS = ("local", "ray")


def check_executor(executor: str) -> None:
    """A ValueError for an executor that is not one of EXECUTORS (instead of running locally)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PilestoreError(
            "--executor ray needs Ray: pip install 'pilestore[ray]' (on every node of the cluster)"
        ) from None
    return ray


def connect(address: str | None) -> Any:
    """ray, initialised: joins the cluster at `address` ("auto": the one this node belongs to), or starts a
    local Ray instance when there is none."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                     logging_level="ERROR")  # fmt: skip
        except ConnectionError as err:
            raise PilestoreError(f"cannot reach the Ray cluster at {address!r}: {err}") from None
    return ray


def run_tasks(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    *,
    address: str | None = None,
    num_cpus: float = 1,
    on_done: Callable[[int, Any], None] = lambda k, result: None,
    names: Sequence[str] = (),
) -> list[Any]:
    """fn(*job) for every job as a Ray task; results in job order. on_done(k, result) as each one finishes.
    names[k] says what job k is (a source, a partition) in the error raised when its task is lost."""
    if not jobs:
        return []
    ray = connect(address)
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    refs = [remote.remote(*job) for job in jobs]
    position = {ref: k for k, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            k = position[done[0]]
            try:
                results[k] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                raise (cause if isinstance(cause, BaseException) else PilestoreError(str(err))) from None
            except ray.exceptions.RayError as err:  # not raised by fn: its worker or node died
                name = names[k] if k < len(names) else f"task {k + 1} of {len(refs)}"
                raise PilestoreError(lost_task(name, err)) from None
            on_done(k, results[k])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        if pending:  # cancelling is asynchronous: wait until no task can still write, before the caller's
            ray.wait(pending, num_returns=len(pending), timeout=120)  # lock is released and a re-run starts
        raise
    return results


def lost_task(name: str, err: BaseException) -> str:
    """The error for a task that Ray lost (its worker killed, e.g. for memory, or its node gone): what it was,
    Ray's own first line, and what to do."""
    said = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return (
        f"{name}: its Ray task was lost ({type(err).__name__}: {said[:300]}). Re-run the same command to "
        "finish: what the other tasks completed is kept"
    )
