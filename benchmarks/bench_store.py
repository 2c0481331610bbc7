"""Store benchmarks, each printed side by side with its baseline measured in the same run.

    python benchmarks/bench_store.py                       # sample corpus + a 1 GB synthetic shard pair
    python benchmarks/bench_store.py --synthetic-mb 0      # sample corpus only (~1 minute)

Sections (one JSON line each on stdout, then a markdown summary):
  ingest    pilestore ingest (1 worker) vs `zstd -dc SRC | zstd -3 > /dev/null`: MB/s of JSON per wall
            second and per CPU second, peak RSS; 1 vs 2 workers on 2 sources
  size      store on disk vs the source .jsonl.zst, per-document zstd without a dictionary, and one zstd
            stream of all the text, all at the store's level
  access    random single-document reads, p50/p99 over 20k uniform indices (warm), vs a memory-mapped
            Arrow IPC file and SQLite holding the uncompressed text
  sample    `pilestore sample --idx` wall time as a process vs `python -c pass`
  open      pilestore.open() + first read on a 10M-document store
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import apsw
import numpy as np
import pyarrow as pa
import zstandard

import pilestore
from pilestore.codec import CompressionSettings

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("PILESTORE_SHARED", HERE.parent.parent / "shared"))
PY = sys.executable


def emit(section: str, **fields: object) -> dict:
    record = {"section": section, **fields}
    print(json.dumps(record), flush=True)
    return record


def run_measured(cmd: list[str] | str, shell: bool = False) -> tuple[float, float, int]:
    """(wall s, CPU s of all descendants, peak RSS in MB of the largest descendant) of one command."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter(); shell = sys.argv[1] == '1'\n"
        "cmd = sys.argv[2] if shell else sys.argv[2:]\n"
        "rc = subprocess.run(cmd, shell=shell, stdout=subprocess.DEVNULL).returncode\n"
        "wall = time.perf_counter() - t; r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps([rc, wall, r.ru_utime + r.ru_stime, r.ru_maxrss]))"
    )
    args = [PY, "-c", wrapper, "1" if shell else "0", *([cmd] if shell else cmd)]
    rc, wall, cpu, maxrss_kb = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    if rc != 0:
        raise RuntimeError(f"{cmd} failed with status {rc}")
    return wall, cpu, maxrss_kb // 1024


def zstd_pipeline(source: Path) -> list[str]:
    """The ingest baseline as a command: `zstd -dc SRC | zstd -3 -c > /dev/null`, failing when either zstd fails
    (pipefail). The source is resolved: zstd skips a symbolic link, and the baseline of a linked source took 0 s."""
    return ["bash", "-o", "pipefail", "-c", f"zstd -dc {shlex.quote(str(source.resolve()))} | zstd -3 -c > /dev/null"]


def json_bytes(path: Path) -> int:
    """Uncompressed size of a .jsonl.zst."""
    total = 0
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        while chunk := reader.read(1 << 22):
            total += len(chunk)
    return total


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".staging" not in p.parts)


def bench_ingest(
    label: str, sources: list[Path], work: Path, workers: int = 1, threads: int | None = None, baseline: bool = False
) -> dict:
    """One ingest run as a separate process; with `baseline`, the zstd pipeline on the same source."""
    store = work / f"{label}-{workers}w-{threads or 'auto'}t.store"
    shutil.rmtree(store, ignore_errors=True)
    raw = sum(json_bytes(s) for s in sources)
    extra = ["--threads", str(threads)] if threads else []
    wall, cpu, rss = run_measured(
        [
            PY,
            "-m",
            "pilestore",
            "ingest",
            *map(str, sources),
            "--store",
            str(store),
            "-q",
            "--workers",
            str(workers),
            *extra,
        ]
    )
    zwall, zcpu, zrss = run_measured(zstd_pipeline(sources[0])) if baseline else (None, None, None)
    fields: dict = {
        "corpus": label,
        "workers": workers,
        "zstd_threads_per_worker": threads or "auto",
        "sources": len(sources),
        "json_mb": round(raw / 1e6, 1),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "mb_per_s": round(raw / 1e6 / wall, 1),
        "mb_per_cpu_s": round(raw / 1e6 / cpu, 1),
        "peak_rss_mb": rss,
    }
    if zwall:
        fields.update(
            zstd_pipe_wall_s=round(zwall, 2),
            zstd_pipe_cpu_s=round(zcpu, 2),
            zstd_pipe_mb_per_s=round(raw / 1e6 / zwall, 1),
            zstd_pipe_peak_rss_mb=zrss,
            ratio_wall=round(zwall / wall, 3),
            ratio_per_cpu=round(zcpu / cpu, 3),
        )
    fields["store"] = str(store)
    return emit("ingest", **fields)


def bench_size(label: str, source: Path, store_dir: Path) -> dict:
    level = CompressionSettings().level
    texts = [d.text.encode("utf-8", "surrogatepass") for d in pilestore.open(store_dir)]
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=False)
    per_doc = sum(min(len(cctx.compress(t)), len(t)) for t in texts)
    one_stream = len(zstandard.ZstdCompressor(level=level).compress(b"".join(texts)))
    src = source.stat().st_size
    store = du(store_dir)
    return emit(
        "size",
        corpus=label,
        text_bytes=sum(map(len, texts)),
        source_zst_bytes=src,
        store_bytes=store,
        store_to_source=round(store / src, 4),
        per_doc_zstd_no_dict_bytes=per_doc,
        per_doc_to_source=round(per_doc / src, 4),
        one_stream_bytes=one_stream,
        one_stream_to_source=round(one_stream / src, 4),
    )


def _latencies(read, indices: list[int]) -> tuple[float, float]:
    for i in indices:  # warm
        read(i)
    samples = []
    clock = time.perf_counter_ns
    for i in indices:
        t = clock()
        read(i)
        samples.append(clock() - t)
    samples.sort()
    return samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3


def bench_access(label: str, store_dir: Path, work: Path, n: int = 20_000) -> dict:
    store = pilestore.open(store_dir)
    texts = [d.text for d in store]
    rng = random.Random(0)
    indices = [rng.randrange(len(store)) for _ in range(n)]

    arrow_path = work / f"{label}-text.arrow"
    table = pa.table({"text": pa.array([t.encode("utf-8", "surrogatepass") for t in texts], pa.large_binary())})
    with pa.OSFile(str(arrow_path), "wb") as fh, pa.ipc.new_file(fh, table.schema) as writer:
        writer.write_table(table)
    col = pa.ipc.open_file(pa.memory_map(str(arrow_path))).read_all().column("text").chunk(0)
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int64)
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)

    def arrow_read(i: int) -> str:
        return data[offsets[i] : offsets[i + 1]].tobytes().decode("utf-8", "surrogatepass")

    sqlite_path = work / f"{label}-text.sqlite"
    sqlite_path.unlink(missing_ok=True)
    conn = apsw.Connection(str(sqlite_path))
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, text TEXT)")
    with conn:
        conn.executemany(
            "INSERT INTO docs VALUES (?, ?)",
            ((i, t.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) for i, t in enumerate(texts)),
        )
    conn.close()
    ro = apsw.Connection(
        f"file:{sqlite_path}?mode=ro&immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
    )
    ro.execute("PRAGMA mmap_size = 1099511627776")

    def sqlite_read(i: int) -> str:
        for (text,) in ro.execute("SELECT text FROM docs WHERE id = ?", (i,)):
            return text
        raise IndexError(i)

    p50, p99 = _latencies(store.__getitem__, indices)
    a50, a99 = _latencies(arrow_read, indices)
    s50, s99 = _latencies(sqlite_read, indices)
    return emit(
        "access",
        corpus=label,
        reads=n,
        pilestore_p50_us=round(p50, 2),
        pilestore_p99_us=round(p99, 2),
        arrow_mmap_p50_us=round(a50, 2),
        arrow_mmap_p99_us=round(a99, 2),
        sqlite_raw_p50_us=round(s50, 2),
        sqlite_raw_p99_us=round(s99, 2),
        p50_vs_sqlite_raw=round(p50 / s50, 2),
    )


def bench_sample_cli(store_dir: Path, runs: int = 15) -> dict:
    def wall(cmd: list[str]) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    pilestore_cli = str(Path(PY).parent / "pilestore")
    sample_s = wall([pilestore_cli, "sample", "--idx", "1234", "--store", str(store_dir)])
    bare_s = wall([PY, "-c", "pass"])
    return emit(
        "sample",
        runs=runs,
        pilestore_sample_median_s=round(sample_s, 3),
        python_pass_median_s=round(bare_s, 3),
        difference_s=round(sample_s - bare_s, 3),
    )


def bench_open(work: Path, docs: int) -> dict:
    source = work / f"tiny-{docs}.jsonl"
    store_dir = work / f"tiny-{docs}.store"
    if not (store_dir / "manifest.json").exists():
        with open(source, "wb") as fh:
            line = b'{"text": "d", "meta": {"pile_set_name": "Pile-CC"}}\n'
            for _ in range(docs // 100_000):
                fh.write(line * 100_000)
            fh.write(line * (docs % 100_000))
        shutil.rmtree(store_dir, ignore_errors=True)
        t = time.perf_counter()
        subprocess.run(
            [PY, "-m", "pilestore", "ingest", str(source), "--store", str(store_dir), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        build_s = time.perf_counter() - t
        source.unlink()
    else:
        build_s = None
    code = (
        "import time; t = time.perf_counter(); import pilestore; t1 = time.perf_counter(); "
        f"s = pilestore.open({str(store_dir)!r}); t2 = time.perf_counter(); s[{docs // 2}]; t3 = time.perf_counter(); "
        "s.index(0).checksum[-1]; t4 = time.perf_counter(); "
        "print(t1 - t, t2 - t1, t3 - t2, t4 - t3)"
    )
    runs = [
        list(map(float, subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout.split()))
        for _ in range(5)
    ]
    import_s, open_s, first_read_s, index_s = (statistics.median(r[k] for r in runs) for k in range(4))
    return emit(
        "open",
        documents=docs,
        build_s=round(build_s, 1) if build_s else None,
        open_ms=round(open_s * 1e3, 2),
        first_read_ms=round(first_read_s * 1e3, 2),
        index_map_ms=round(index_s * 1e3, 2),
        import_pilestore_ms=round(import_s * 1e3, 1),
    )


def synthetic(work: Path, mb: int, seed: int) -> Path:
    out = work / f"synthetic-{mb}mb-seed{seed}.jsonl.zst"
    if not out.exists():
        subprocess.run(
            [
                PY,
                str(SHARED / "corpus" / "make_synthetic.py"),
                "--out",
                str(out),
                "--mb",
                str(mb),
                "--seed",
                str(seed),
                "--threads",
                "2",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "sample.jsonl.zst")
    parser.add_argument(
        "--synthetic-mb",
        type=int,
        default=1000,
        help="size of the synthetic shard (two of half this size for the 2-worker run); 0 skips",
    )
    parser.add_argument("--open-docs", type=int, default=10_000_000, help="documents of the open() store; 0 skips")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pilestore-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    emit(
        "machine",
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        python=platform.python_version(),
        cpus=os.cpu_count(),
        platform=platform.platform(),
        pilestore=pilestore.__version__,
        zstd=".".join(map(str, zstandard.ZSTD_VERSION)),
        sqlite=apsw.sqlite_lib_version(),
        pyarrow=pa.__version__,
    )
    try:
        results = [bench_ingest("sample", [args.corpus], work, baseline=True)]
        sample_store = Path(results[0]["store"])
        results.append(bench_size("sample", args.corpus, sample_store))
        results.append(bench_access("sample", sample_store, work))
        results.append(bench_sample_cli(sample_store))
        if args.synthetic_mb:
            big = synthetic(work, args.synthetic_mb, 0)
            results.append(bench_ingest(f"synthetic-{args.synthetic_mb}mb", [big], work, baseline=True))
            results.append(bench_ingest(f"synthetic-{args.synthetic_mb}mb", [big], work, threads=1))
            halves = [synthetic(work, args.synthetic_mb // 2, seed) for seed in (1, 2)]
            for workers in (1, 2):  # one core per worker: the scaling of processes alone
                results.append(
                    bench_ingest(f"synthetic-2x{args.synthetic_mb // 2}mb", halves, work, workers, threads=1)
                )
        if args.open_docs:
            results.append(bench_open(work, args.open_docs))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
