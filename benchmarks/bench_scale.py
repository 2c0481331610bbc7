"""Scale on one machine: a synthetic Pile-format corpus of many GB in several sources (generated here by
../shared/corpus/make_synthetic.py, kept in --work, never committed), ingested and tokenized at 1 and 2 workers,
each next to its baseline in the same run, with the peak resident memory of every process.

    python benchmarks/bench_scale.py --work /tmp/scale                   # 10 GB in 5 sources; tokenize 0.5 GB
    python benchmarks/bench_scale.py --work /tmp/scale --gb 1 --tokenize-gb 0.1   # a quick look

Sections (one JSON line each on stdout):
  generate  the sources: JSON MB, .zst MB, documents
  zstd      the baseline: `zstd -dc SRC | zstd -3 > /dev/null` over every source, one at a time and two at a time
  ingest    `pilestore ingest SOURCES --workers W --threads 1` for W = 1, 2: MB/s of JSON per wall and per CPU
            second, peak RSS of any process (ru_maxrss of the process tree), next to the zstd pipeline's
  tokenize  `pilestore tokenize --workers W` for W = 1, 2 on a store of --tokenize-gb (tokenizing is ~40x
            slower than ingest: 10 GB would take an hour per run on 2 cores), with peak RSS
  cores     (--parts cores) 1 ingest worker pinned to 1 CPU vs 2 workers on 2 CPUs, and the zstd pipeline on 1 CPU
  open      a store of --open-docs documents (default 200M, in 30 partitions: synthetic index files and manifest
            only, no SQLite) next to one of 100k: pilestore.open() and first look-up in a fresh process, then
            20k random index look-ups (locate + the document's index entry), p50/p99, page cache warm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import SHARED, emit, run_measured  # noqa: E402

PY = sys.executable
MAKE = SHARED / "corpus" / "make_synthetic.py"


def generate(out: Path, mb: float, seed: int) -> dict:
    """One synthetic source (cached: generation is deterministic); its summary."""
    summary = out.with_suffix(".summary.json")
    if not summary.exists():
        done = subprocess.run(
            [PY, str(MAKE), "--out", str(out), "--mb", str(mb), "--seed", str(seed)],
            capture_output=True,
            text=True,
            check=True,
        )
        summary.write_text(json.dumps(json.loads(done.stderr)))  # make_synthetic's summary (JSON on stderr)
    return {"path": out, "zst_bytes": out.stat().st_size, **json.loads(summary.read_text())}


def json_mb(sources: list[dict]) -> float:
    return sum(s["uncompressed_bytes"] for s in sources) / 1e6


def zstd_pipe(sources: list[Path], parallel: int) -> tuple[float, float, int]:
    """The baseline over every source, `parallel` pipelines at a time."""
    listing = " ".join(shlex.quote(str(s.resolve())) for s in sources)  # zstd skips symbolic links
    pipe = "bash -o pipefail -c 'zstd -dc {} | zstd -3 -c > /dev/null'"  # fails when either zstd fails
    return run_measured(f"printf '%s\\n' {listing} | xargs -P {parallel} -I{{}} {pipe}", shell=True)


def pilestore(*args: str, cores: str | None = None) -> tuple[float, float, int]:
    """A pilestore command; with `cores` ("0" or "0,1"), pinned to those CPUs by taskset."""
    pin = ["taskset", "-c", cores] if cores else []
    return run_measured([*pin, PY, "-m", "pilestore", *args, "-q"])


def bench_cores(work: Path, paths: list[Path], total_mb: float) -> None:
    """Scaling with cores: 1 worker pinned to 1 CPU vs 2 workers on 2 CPUs (a single ingest worker also uses
    part of a second core for reading and decompressing its source, so unpinned 1 -> 2 workers on a 2-CPU
    machine understates what a second core adds); the zstd pipeline pinned to 1 CPU beside it."""
    listing = " ".join(shlex.quote(str(s.resolve())) for s in paths)
    pipe = 'taskset -c 0 bash -o pipefail -c "zstd -dc $f | zstd -3 -c > /dev/null" || exit 1'
    zwall, zcpu, _ = run_measured(f"for f in {listing}; do {pipe}; done", shell=True)
    emit("zstd_cores", cores=1, wall_s=round(zwall, 1), mb_per_s=round(total_mb / zwall, 1))
    rates = {}
    for workers, cores in ((1, "0"), (2, "0,1")):
        store = work / f"ingest-cores-{workers}.store"
        shutil.rmtree(store, ignore_errors=True)
        wall, cpu, rss = pilestore("ingest", *map(str, paths), "--store", str(store), "--workers", str(workers),
                                   "--threads", "1", cores=cores)  # fmt: skip
        shutil.rmtree(store, ignore_errors=True)
        rates[workers] = total_mb / wall
        emit("ingest_cores", workers=workers, cores=len(cores.split(",")), wall_s=round(wall, 1),
             cpu_s=round(cpu, 1), mb_per_s=round(rates[workers], 1), peak_rss_mb=rss,
             vs_zstd_pipe_on_1_core=round(rates[workers] / (total_mb / zwall), 3),
             speedup_vs_1_core=round(rates[workers] / rates[1], 3))  # fmt: skip


OPEN_CODE = """
import random, sys, time
t0 = time.perf_counter()
import pilestore
t1 = time.perf_counter()
store = pilestore.open(sys.argv[1])
t2 = time.perf_counter()
rng = random.Random(0)
n = len(store)
def look(i):
    p, row = store.locate(i)
    index = store.index(p)
    return int(index.text_bytes[row]), int(index.checksum[row]), int(index.subset[row])
look(rng.randrange(n))
t3 = time.perf_counter()
for p in range(store.num_partitions):
    store.index(p)
lat = []
for _ in range(20_000):
    i = rng.randrange(n)
    a = time.perf_counter_ns(); look(i); lat.append(time.perf_counter_ns() - a)
lat.sort()
print(t1 - t0, t2 - t1, t3 - t2, lat[len(lat) // 2] / 1e3, lat[int(len(lat) * 0.99)] / 1e3)
"""


def synthetic_index_store(folder: Path, docs: int, partitions: int) -> Path:
    """A store of `docs` documents as manifest + Arrow index files in the real format (no SQLite files)."""
    import numpy as np

    from pilestore import __version__
    from pilestore.index import write_index
    from pilestore.manifest import empty_manifest, write_manifest

    store = folder / f"index-only-{docs}.store"
    if (store / "manifest.json").exists():
        return store
    (store / "index").mkdir(parents=True, exist_ok=True)
    manifest = empty_manifest(__version__)
    manifest["subsets"] = ["Pile-CC", "Github"]
    rng = np.random.default_rng(0)
    for p in range(partitions):
        n = docs // partitions + (p < docs % partitions)
        columns = {
            "text_bytes": rng.integers(1, 1 << 20, n),
            "subset": rng.integers(0, 2, n, dtype=np.int32),
            "checksum": rng.integers(-(1 << 62), 1 << 62, n),
        }
        write_index(store / "index" / f"{p:05d}.arrow", columns)
        manifest["partitions"].append({"id": p, "file": f"partitions/{p:05d}.sqlite", "index": f"index/{p:05d}.arrow",
                                       "documents": n, "subsets": ["Pile-CC", "Github"]})  # fmt: skip
        manifest["documents"] += n
    write_manifest(store, manifest)
    return store


def bench_open(work: Path, docs: int, partitions: int) -> None:
    results = {}
    for label, n, parts in (("small", 100_000, 1), ("large", docs, partitions)):
        store = synthetic_index_store(work, n, parts)
        subprocess.run(f"cat {store}/index/*.arrow > /dev/null", shell=True, check=True)  # page cache warm
        runs = [list(map(float, subprocess.run([PY, "-c", OPEN_CODE, str(store)], capture_output=True, text=True,
                check=True).stdout.split())) for _ in range(3)]  # fmt: skip
        median = [sorted(r[k] for r in runs)[1] for k in range(5)]
        results[label] = median
        emit("open", store=label, documents=n, partitions=parts,
             index_mb=round(sum(f.stat().st_size for f in (store / "index").iterdir()) / 1e6),
             import_ms=round(median[0] * 1e3, 1), open_ms=round(median[1] * 1e3, 2),
             first_lookup_ms=round(median[2] * 1e3, 2), lookup_p50_us=round(median[3], 2),
             lookup_p99_us=round(median[4], 2),
             p50_vs_small=round(median[3] / results["small"][3], 3))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for sources and stores (kept)")
    parser.add_argument("--gb", type=float, default=10.0, help="JSON GB in all (10^9 bytes)")
    parser.add_argument("--sources", type=int, default=5)
    parser.add_argument("--tokenize-gb", type=float, default=0.5, help="JSON GB of the store that is tokenized")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--parts", default="ingest,tokenize,open")
    parser.add_argument("--open-docs", type=int, default=200_000_000)
    parser.add_argument("--open-partitions", type=int, default=30)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    if "open" in parts:
        bench_open(work, args.open_docs, args.open_partitions)
    if not parts & {"ingest", "tokenize", "cores"}:
        return
    mb = args.gb * 1000 / args.sources
    with ThreadPoolExecutor(2) as pool:  # two generators at a time: one per core
        sources = list(pool.map(lambda k: generate(work / f"src{k:02d}.jsonl.zst", mb, k), range(args.sources)))
    total_mb = json_mb(sources)
    emit(
        "generate",
        sources=len(sources),
        json_mb=round(total_mb, 1),
        zst_mb=round(sum(s["zst_bytes"] for s in sources) / 1e6, 1),
        documents=sum(s["docs"] for s in sources),
        machine=f"{platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}",
    )
    paths = [s["path"] for s in sources]
    if "cores" in parts:
        bench_cores(work, paths, total_mb)
    baseline = {}
    for parallel in (1, 2) if "ingest" in parts else ():
        wall, cpu, rss = zstd_pipe(paths, parallel)
        baseline[parallel] = (wall, cpu)
        emit("zstd", parallel=parallel, json_mb=round(total_mb, 1), wall_s=round(wall, 1), cpu_s=round(cpu, 1),
             mb_per_s=round(total_mb / wall, 1), mb_per_cpu_s=round(total_mb / cpu, 1), peak_rss_mb=rss)  # fmt: skip
    rates = {}
    for workers in (1, 2) if "ingest" in parts else ():
        store = work / f"ingest-{workers}w.store"
        shutil.rmtree(store, ignore_errors=True)
        wall, cpu, rss = pilestore("ingest", *map(str, paths), "--store", str(store), "--workers", str(workers),
                                   "--threads", "1")  # fmt: skip
        rates[workers] = total_mb / wall
        zwall, zcpu = baseline[workers]
        emit("ingest", workers=workers, json_mb=round(total_mb, 1), wall_s=round(wall, 1), cpu_s=round(cpu, 1),
             mb_per_s=round(total_mb / wall, 1), mb_per_cpu_s=round(total_mb / cpu, 1), peak_rss_mb=rss,
             zstd_pipe_mb_per_s=round(total_mb / zwall, 1), zstd_pipe_mb_per_cpu_s=round(total_mb / zcpu, 1),
             ratio_wall=round(zwall / wall, 3), ratio_per_cpu=round(zcpu / cpu, 3),
             speedup_vs_1_worker=round(rates[workers] / rates[1], 3))  # fmt: skip
        if workers == 2:
            shutil.rmtree(work / "ingest-1w.store", ignore_errors=True)
    if "tokenize" not in parts:
        return
    # tokenize: a smaller store (a prefix of source 0: make_synthetic's shorter runs are prefixes of longer ones)
    small = generate(work / "tok.jsonl.zst", args.tokenize_gb * 1000, 0)
    tok_store = work / "tok.store"
    if not (tok_store / "manifest.json").exists():
        pilestore("ingest", str(small["path"]), "--store", str(tok_store))
    model = work / "tok.model"
    if not model.exists():
        pilestore("train-tokenizer", "--store", str(tok_store), "--vocab-size", str(args.vocab_size),
                  "--sample-mb", "50", "--out", str(model))  # fmt: skip
    tok_rates = {}
    for workers in (1, 2):
        shutil.rmtree(tok_store / "tokens", ignore_errors=True)
        wall, cpu, rss = pilestore("tokenize", "--store", str(tok_store), "--tokenizer", str(model),
                                   "--workers", str(workers))  # fmt: skip
        view = json.loads(next((tok_store / "tokens").glob("*/view.json")).read_text())
        tok_rates[workers] = view["bytes"] / wall
        emit("tokenize", workers=workers, json_mb=round(json_mb([small]), 1), text_mb=round(view["bytes"] / 1e6, 1),
             tokens=view["tokens"], wall_s=round(wall, 1), cpu_s=round(cpu, 1),
             text_mb_per_s=round(view["bytes"] / 1e6 / wall, 2), tokens_per_s=round(view["tokens"] / wall),
             peak_rss_mb=rss, speedup_vs_1_worker=round(tok_rates[workers] / tok_rates[1], 3))  # fmt: skip


if __name__ == "__main__":
    main()
