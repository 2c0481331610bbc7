from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pilestore.cli import cli

from .conftest import ShardMaker, doc


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pilestore", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"pilestore {command}" in result.output


def test_sample_json_equals_the_source_line(sample_store_dir: Path, sample_records: list[dict]) -> None:
    for idx in (0, 1, 576, 5992):  # 1 and 576 hold lone surrogates
        result = run("sample", "--idx", str(idx), "--store", str(sample_store_dir), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"idx": idx, **sample_records[idx]}


def test_sample_prints_a_header_and_the_text(sample_store_dir: Path, sample_records: list[dict]) -> None:
    result = run("sample", "--idx", "-1", "--store", str(sample_store_dir))
    header, _, text = result.stdout.partition("\n")
    assert header == "# document 5,992 of 5,993 | Gutenberg (PG-19) | 6,489,524 bytes"
    assert text.rstrip("\n") == sample_records[-1]["text"].rstrip("\n")


def test_sample_reads_the_store_from_the_environment(sample_store_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["sample", "--idx", "3", "--json"], env={"PILESTORE_STORE": str(sample_store_dir)})
    assert result.exit_code == 0 and json.loads(result.output)["idx"] == 3


def test_sample_imports_neither_torch_nor_numba_nor_pyarrow(sample_store_dir: Path) -> None:
    code = (
        "import sys; from pilestore.cli import main; sys.argv = ['pilestore', 'sample', '--idx', '7', '--store', "
        f"{str(sample_store_dir)!r}, '--json']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('\\nLOADED', sorted(m for m in ('torch', 'numba', 'pyarrow', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("LOADED []")


def test_sample_out_of_range_is_a_usage_error(sample_store_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["sample", "--idx", "99999", "--store", str(sample_store_dir)])
    assert result.exit_code == 2 and "out of range" in result.output


def test_missing_store_exits_1_with_a_hint(tmp_path: Path) -> None:
    result = run("sample", "--idx", "0", "--store", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "no such store" in result.stderr and "Traceback" not in result.stderr


def test_ingest_json_report_and_warnings(make_shard: ShardMaker, tmp_path: Path) -> None:
    shard = make_shard([doc("a"), b"oops", doc("b", "Github")])
    result = run("ingest", str(shard), "--store", str(tmp_path / "s.store"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["documents"] == 2 and report["skipped"] == {"not_json": 1}
    assert set(report["subsets"]) == {"Pile-CC", "Github"}
    result = run("ingest", str(shard), "--store", str(tmp_path / "t.store"))
    assert result.returncode == 0
    assert f"{shard}:2: not JSON" in result.stderr and "skipped 1 bad lines" in result.stderr
    assert "\x1b[" not in result.stderr  # no progress bar or colours in a pipe


def test_ingest_failures_exit_non_zero_naming_the_file(tmp_path: Path, make_shard: ShardMaker) -> None:
    junk = tmp_path / "junk.jsonl.zst"
    junk.write_bytes(b"\x00" * 100)
    for source, message in ((junk, "neither zstd"), (tmp_path / "gone.jsonl.zst", "no such file")):
        result = run("ingest", str(source), "--store", str(tmp_path / "s.store"))
        assert result.returncode == 1
        assert str(source) in result.stderr and message in result.stderr
    strict = run("ingest", str(make_shard([b"oops"])), "--store", str(tmp_path / "s.store"), "--strict")
    assert strict.returncode == 1 and ":1: not JSON" in strict.stderr


def test_bad_option_values_are_usage_errors(make_shard: ShardMaker, tmp_path: Path) -> None:
    shard = make_shard([doc("a")])
    for args in (["--level", "0"], ["--workers", "0"], ["--dict-size", "10"]):
        result = CliRunner().invoke(cli, ["ingest", str(shard), "--store", str(tmp_path / "s"), *args])
        assert result.exit_code == 2, args


def test_info_json_and_table(sample_store_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["info", "--store", str(sample_store_dir), "--json"])
    data = json.loads(result.output)
    assert data["documents"] == 5993 and data["subsets"]["Github"]["documents"] == 2267
    assert data["disk_to_source"] <= 1.10
    table = CliRunner().invoke(cli, ["info", "--store", str(sample_store_dir)])
    assert "Gutenberg (PG-19)" in table.output and "sample.jsonl.zst" in table.output


def test_info_gives_each_partitions_stored_size_and_zstd_level(make_shard: ShardMaker, tmp_path: Path) -> None:
    store = str(tmp_path / "s.store")
    a = make_shard([doc(f"first source, document {i} " * 20) for i in range(50)], name="a.jsonl.zst")
    b = make_shard([doc(f"second source, document {i} " * 20, "Github") for i in range(50)], name="b.jsonl.zst")
    assert run("ingest", str(a), "--store", store).returncode == 0
    c = make_shard([doc(f"third source, document {i} " * 20) for i in range(50)], name="c.jsonl.zst")
    assert run("ingest", str(b), "--store", store, "--level", "5").returncode == 0
    assert run("ingest", str(c), "--store", store, "--small-level", "7").returncode == 0
    data = json.loads(CliRunner().invoke(cli, ["info", "--store", store, "--json"]).output)
    assert [p["zstd_level"] for p in data["partitions"]] == [3, 5, 3]
    assert [p["zstd_small_level"] for p in data["partitions"]] == [5, None, 7]  # the default 5; 5 is --level 5's
    stored = sum(v["stored_bytes"] for v in data["subsets"].values())
    assert all(p["stored_bytes"] > 0 for p in data["partitions"])
    assert sum(p["stored_bytes"] for p in data["partitions"]) == stored
    table = CliRunner().invoke(cli, ["info", "--store", store]).output
    assert "level" in table and "stored MB" in table and "a.jsonl.zst" in table and "b.jsonl.zst" in table
    assert "3 (5 < 16 KiB)" in table and "3 (7 < 16 KiB)" in table and "5 (5 <" not in table


def test_verify_and_export_commands(sample_store_dir: Path, tmp_path: Path, sample_records: list[dict]) -> None:
    ok = CliRunner().invoke(cli, ["verify", "--store", str(sample_store_dir), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["documents_checked"] == 5993
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["export", "--store", str(sample_store_dir), "--out", str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["documents"] == 5993
    assert [json.loads(line) for line in out.read_bytes().split(b"\n")[:-1]] == sample_records


def test_export_to_stdout(sample_store_dir: Path, sample_records: list[dict]) -> None:
    result = run("export", "--store", str(sample_store_dir), "--out", "-")
    assert result.returncode == 0 and "wrote 5,993 documents to stdout" in result.stderr
    assert [json.loads(line) for line in result.stdout.split("\n")[:-1]] == sample_records
    both = CliRunner().invoke(cli, ["export", "--store", str(sample_store_dir), "--out", "-", "--json"])
    assert both.exit_code == 2 and "--json prints to stdout" in both.output
    model = CliRunner().invoke(cli, ["train-tokenizer", "--store", str(sample_store_dir), "--out", "-"])
    assert model.exit_code == 2 and "writes a file, not stdout" in model.output  # only export writes to stdout
    assert not Path("-").exists()


@pytest.mark.parametrize("args", [["export", "--out", "-"], ["sample", "--idx", "-1"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(sample_store_dir: Path, args: list[str]) -> None:
    """`pilestore export --out - | head`, `pilestore sample --idx N | less` (quit early): no error printed."""
    with subprocess.Popen(
        [sys.executable, "-m", "pilestore", *args, "--store", str(sample_store_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert len(process.stdout.read(100)) == 100
        process.stdout.close()
        errors = process.stderr.read().decode()
        status = process.wait(timeout=120)
    assert status in (0, 1), status  # 0 where the write cut short returned the bytes it got out, without an error
    assert "Error" not in errors and "Traceback" not in errors and "Broken pipe" not in errors, errors


def test_an_empty_source_makes_an_empty_partition(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = run("ingest", str(empty), "--store", str(tmp_path / "s.store"), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["documents"] == 0
    info = CliRunner().invoke(cli, ["info", "--store", str(tmp_path / "s.store"), "--json"])
    assert json.loads(info.output)["documents"] == 0
    shown = CliRunner().invoke(cli, ["sample", "--idx", "0", "--store", str(tmp_path / "s.store")])
    assert shown.exit_code == 2 and "out of range for a store of 0 documents" in shown.output


def test_store_and_source_paths_of_the_wrong_kind_are_refused(tmp_path: Path, make_shard: ShardMaker) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    as_store = CliRunner().invoke(cli, ["ingest", str(make_shard([doc("a")])), "--store", str(a_file)])
    assert as_store.exit_code == 2 and "is a file" in as_store.output
    as_source = run("ingest", str(tmp_path), "--store", str(tmp_path / "s.store"))
    assert as_source.returncode == 1 and "is a directory" in as_source.stderr


def test_outputs_into_a_missing_folder_fail_before_any_work(sample_store_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    export = CliRunner().invoke(cli, ["export", "--store", str(sample_store_dir), "--out", str(missing / "x.jsonl")])
    assert export.exit_code == 2 and "does not exist; create it first" in export.output
    train = CliRunner().invoke(
        cli,
        [
            "train-tokenizer",
            "--store",
            str(sample_store_dir),
            "--vocab-size",
            "2000",
            "--sample-docs",
            "50",
            "--out",
            str(missing / "t.model"),
        ],
    )
    assert train.exit_code == 2 and "does not exist" in train.output


def test_an_existing_output_is_replaced_only_with_force(sample_store_dir: Path, tmp_path: Path) -> None:
    """export and train-tokenizer refuse to overwrite a file before doing any work; --force replaces it once the
    new file is complete."""
    from pilestore.tokenizer import Tokenizer

    out, model = tmp_path / "mine.jsonl", tmp_path / "mine.model"
    out.write_text("someone's file\n")
    model.write_text("someone's model\n")
    store = ["--store", str(sample_store_dir)]
    train = ["train-tokenizer", *store, "--vocab-size", "2000", "--sample-docs", "60", "--out", str(model)]
    for args, path in ((["export", *store, "--out", str(out)], out), (train, model)):
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code == 2 and f"{path} exists; pass --force to replace it" in refused.output
        assert path.read_text().startswith("someone's")
        forced = CliRunner().invoke(cli, [*args, "--force", "--json"])
        assert forced.exit_code == 0, forced.output
    assert len(out.read_bytes().splitlines()) == 5993 and json.loads(out.read_bytes().splitlines()[0])["text"]
    assert Tokenizer(model).vocab_size == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.jsonl", "mine.model"]  # no temporary files left


def test_an_os_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    locked = tmp_path / "locked.store"
    locked.mkdir()
    (locked / "manifest.json").mkdir()  # reading it as a file fails with an OSError
    result = run("info", "--store", str(locked))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "manifest.json" in result.stderr


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("3", "3")])
def test_commands_run_numpys_blas_on_one_thread_unless_told_otherwise(given: str | None, expected: str) -> None:
    """No command does linear algebra; OpenBLAS's idle threads would spin ~0.1 CPU s in each process."""
    code = (
        "import os, sys\nfrom pilestore.cli import main\nsys.argv = ['pilestore', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint(os.environ['OPENBLAS_NUM_THREADS'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == expected
