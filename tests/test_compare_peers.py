"""benchmarks/compare_peers.py runs end to end (pilestore and the memmap baseline, which need no peer installed):
its table, raw figures and chart; a system that fails is reported in the table, not dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, ShardMaker, doc

SCRIPT = ROOT / "benchmarks" / "compare_peers.py"


def test_compare_peers_reports_every_system_it_was_asked_for(tmp_path: Path, make_shard: ShardMaker) -> None:
    texts = [f"document {i} " + "words " * (i % 50) for i in range(300)] + ["lone \ud83d surrogate"]
    corpus = make_shard([doc(t, "Github" if i % 2 else "Pile-CC") for i, t in enumerate(texts)], name="c.jsonl.zst")
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    (work / "memmap.docs").write_text("a file where the memmap system wants its folder: its build fails")

    def compare(systems: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(SCRIPT), "--corpus", str(corpus), "--work", str(work), "--systems", systems,
                   "--parts", "docs", "--out", str(out)]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    refused = compare("pilestore,nosuch")
    assert refused.returncode == 2 and "unknown system nosuch" in refused.stderr
    missing = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(tmp_path / "none.jsonl.zst")],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert missing.returncode == 2 and "none.jsonl.zst: no such file" in missing.stderr
    result = compare("pilestore,pilestore-l5,pilestore-l3,memmap")
    assert result.returncode == 0, result.stderr[-3000:]
    meta, *rows = [json.loads(line) for line in (out / "compare_peers.jsonl").read_text().splitlines()]
    (ours,) = [r for r in rows if r["system"] == "pilestore"]
    (level5,) = [r for r in rows if r["system"] == "pilestore-l5"]  # the same documents, zstd level 5
    assert level5["docs"] == len(texts) and 0 < level5["bytes"] and level5["access_n"] == 20_000
    manifests = {
        s: json.loads((work / f"{s}.docs" / "manifest.json").read_text())["partitions"][0]["compression"]
        for s in ("pilestore", "pilestore-l5", "pilestore-l3")
    }
    assert [(m["level"], m["small_level"]) for m in manifests.values()] == [(3, 5), (5, 5), (3, None)]
    assert ours["docs"] == ours["pass_docs"] == len(texts) and ours["access_n"] == 20_000
    assert 0 < ours["access_p50_us"] <= ours["access_p99_us"] and ours["bytes"] > 0
    assert meta["docs_with_replacement_chars_for_peers"] == 1 and meta["source_bytes"] == corpus.stat().st_size
    (failed,) = [r for r in rows if r["system"] == "memmap"]
    assert "FileExistsError" in failed["error"]
    table = (out / "compare_peers.md").read_text()
    assert "**failed**: `FileExistsError" in table.split("| memmap |")[1].splitlines()[0]
    assert f"| pilestore | {ours['build_s']:.1f} | {ours['build_mb_s']:.1f} | {ours['bytes'] / 1e6:.1f} |" in table
    assert (out / "compare_peers.png").read_bytes()[:4] == b"\x89PNG"


def test_the_chart_of_a_loader_only_run_marks_the_parts_not_measured(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import compare_peers
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rows = [{"part": "loader", "system": s, "workers": w, "samples_s": 100 * w, "token_bytes": 1}
            for s in ("pilestore", "memmap") for w in (1, 2)]  # fmt: skip
    compare_peers.chart(rows, tmp_path / "c.png")  # no docs rows: the log-scaled access panel has no values
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert "| pilestore | – |" in compare_peers.table(rows, 1_000_000)
