"""Write a small Pile-format shard from text every Python install has: its standard library.

Each stdlib module's source becomes a "Github" document and its docstring a "Pile-CC" one, so a new
user can try pilestore without downloading the Pile:

    python examples/make_demo_shard.py demo.jsonl.zst
    pilestore ingest demo.jsonl.zst --store demo.store
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
from pathlib import Path

import zstandard


def documents(limit: int, start: int = 0) -> list[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[dict] = []
    for path in sorted(stdlib.glob("*.py"))[start : start + limit]:
        source = path.read_text(encoding="utf-8", errors="surrogateescape")
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            continue
        docs.append({"text": source, "meta": {"pile_set_name": "Github", "path": path.name}})
        try:
            docstring = ast.get_docstring(ast.parse(source))
        except SyntaxError:
            docstring = None
        if docstring:
            docs.append({"text": docstring, "meta": {"pile_set_name": "Pile-CC"}})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output .jsonl.zst file")
    parser.add_argument("--modules", type=int, default=400, help="stdlib modules to include (default 400)")
    parser.add_argument("--start", type=int, default=0, help="skip this many modules (sorted by name) first")
    args = parser.parse_args()
    docs = documents(args.modules, args.start)
    if not docs:
        raise SystemExit(f"no modules from number {args.start} on: the standard library has fewer")
    lines = b"".join(json.dumps(d, ensure_ascii=False).encode() + b"\n" for d in docs)
    args.out.write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    count = lines.count(b"\n")
    print(f"wrote {count:,} documents ({len(lines) / 1e6:.1f} MB of JSON lines) to {args.out}")


if __name__ == "__main__":
    main()
