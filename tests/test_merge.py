"""pilestore merge: stores built apart combine into the store one ingest of all sources gives, files untouched,
token views carried without re-encoding."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

import pilestore
from pilestore.cli import cli
from pilestore.export import export
from pilestore.indexes import build_indexes
from pilestore.ingest import ingest
from pilestore.merge import merge
from pilestore.samples import SampleIndex
from pilestore.tokens import TokenView, tokenize
from pilestore.verify import verify

from .conftest import read_source_lines


def test_merged_stores_equal_one_ingest_and_carry_their_token_views(
    sample_path: Path, model: Path, tmp_path: Path
) -> None:
    lines = read_source_lines(sample_path)[:900]
    shards = []
    for k, chunk in enumerate((lines[:400], lines[400:700], lines[700:])):
        shards.append(tmp_path / f"s{k}.jsonl")
        shards[-1].write_bytes(b"\n".join(chunk) + b"\n")
    parts = [tmp_path / "a.store", tmp_path / "b.store"]
    ingest(shards[:2], parts[0])
    ingest(shards[2:], parts[1])
    whole = tmp_path / "whole.store"
    ingest(shards, whole)
    for store in (*parts, whole):
        view = TokenView(Path(tokenize(pilestore.open(store), model)["view"]))
        build_indexes(view, pilestore.open(store), 64, 16, "bestfit", val_fraction=0.2)

    merged = tmp_path / "merged.store"
    result = CliRunner().invoke(cli, ["merge", str(parts[0]), str(parts[1]), "--store", str(merged), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["partitions_added"] == 3 and report["documents"] == 900 and len(report["views"]) == 1

    exported = [tmp_path / "m.jsonl", tmp_path / "w.jsonl"]
    export(pilestore.open(merged), exported[0])
    export(pilestore.open(whole), exported[1])
    assert exported[0].read_bytes() == exported[1].read_bytes()  # same documents, same order
    entries = [p["files"] for s in parts for p in pilestore.open(s).manifest["partitions"]]
    assert [p["files"] for p in pilestore.open(merged).manifest["partitions"]] == entries  # not recompressed

    name = report["views"][0]["view"]
    assert sorted(report["views"][0]["indexes"]) == ["eval-L64-C16-val0.2", "train-L64-C16-bestfit-train0.2"]
    for ext in ("tokens", "lens", "long", "arrow"):
        for p in range(3):
            got = (merged / "tokens" / name / f"p{p:05d}.{ext}").read_bytes()
            assert got == (whole / "tokens" / name / f"p{p:05d}.{ext}").read_bytes()
    for index in ("eval-L64-C16-val0.2", "train-L64-C16-bestfit-train0.2"):
        for part in ("spans", "samples"):
            file = Path("tokens") / name / "samples" / f"{index}.{part}.arrow"
            assert (merged / file).read_bytes() == (whole / file).read_bytes()
    assert len(SampleIndex(TokenView(merged / "tokens" / name), "eval-L64-C16-val0.2")) > 0
    assert verify(pilestore.open(merged)).ok
    carried = merged / "tokens" / name / "p00002.tokens"  # b.store's first partition, linked, not re-encoded
    assert carried.stat().st_ino == (parts[1] / "tokens" / name / "p00000.tokens").stat().st_ino

    again = CliRunner().invoke(cli, ["merge", str(parts[1]), "--store", str(merged), "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["skipped_sources"] == ["s2.jsonl"]
    itself = CliRunner().invoke(cli, ["merge", str(merged), "--store", str(merged)])
    assert itself.exit_code == 1 and "into itself" in itself.output


def test_a_damaged_source_file_fails_the_merge_and_leaves_the_target_unchanged(
    sample_path: Path, tmp_path: Path
) -> None:
    lines = read_source_lines(sample_path)[:300]
    for name, chunk in (("x", lines[:150]), ("y", lines[150:])):
        (tmp_path / f"{name}.jsonl").write_bytes(b"\n".join(chunk) + b"\n")
        ingest([tmp_path / f"{name}.jsonl"], tmp_path / f"{name}.store")
    target = tmp_path / "target.store"
    ingest([tmp_path / "x.jsonl"], target)
    before = (target / "manifest.json").read_bytes()
    damaged = tmp_path / "y.store" / "partitions" / "00000.sqlite"
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "y.store"), "--store", str(target)])
    assert result.exit_code == 1 and "00000.sqlite: sha256 differs" in result.output, result.output
    assert (target / "manifest.json").read_bytes() == before and len(pilestore.open(target)) == 150
    assert not list((target / ".staging").iterdir())


def test_merging_into_a_tokenized_store_rebuilds_its_own_indexes_too(
    sample_path: Path, model: Path, tmp_path: Path
) -> None:
    """The target's view gains the sources' partitions; its indexes of shapes the sources do not have would be
    behind it (refused), so the merge rebuilds them as well."""
    lines = read_source_lines(sample_path)[:300]
    stores = [tmp_path / "a.store", tmp_path / "b.store"]
    for k, (store, chunk) in enumerate(zip(stores, (lines[:200], lines[200:]), strict=True)):
        (tmp_path / f"s{k}.jsonl").write_bytes(b"\n".join(chunk) + b"\n")
        ingest([tmp_path / f"s{k}.jsonl"], store)
        view = TokenView(Path(tokenize(pilestore.open(store), model)["view"]))
        build_indexes(view, pilestore.open(store), 64, 16, "bestfit")
    build_indexes(
        view := TokenView(stores[0] / "tokens" / view.folder.name), pilestore.open(stores[0]), 32, 8, "greedy"
    )

    result = CliRunner().invoke(cli, ["merge", str(stores[1]), "--store", str(stores[0]), "--json"])
    assert result.exit_code == 0, result.output
    rebuilt = json.loads(result.output)["views"][0]["indexes"]
    assert sorted(rebuilt) == ["eval-L32-C8", "eval-L64-C16", "train-L32-C8-greedy", "train-L64-C16-bestfit"]
    stages: list[str] = []  # merging again (into a new store) reports each index it rebuilds

    def on_stage(label: str, total: int | None, unit: str):  # noqa: ANN202
        stages.append(label)
        return lambda n: None

    merge([stores[0]], tmp_path / "c.store", on_stage=on_stage)
    assert [s.removesuffix(": windows") for s in stages if s.endswith(": windows")] == sorted(rebuilt)
    view = TokenView(view.folder)
    for name in rebuilt:  # each opens (none is behind) and holds documents of both sources
        index = SampleIndex(view, name)
        docs = {span["doc"] for i in range(len(index)) for span in index[i].spans}
        assert min(docs) < 200 <= max(docs), name
