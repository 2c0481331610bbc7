#!/usr/bin/env bash
# The peers that benchmarks/compare_peers.py measures, into the project's .venv (after the README's setup).
# litdata and mosaicml-streaming declare torchvision, which has no CPU build: pip would swap the CPU torch for
# the newest CUDA build (several GB), and mosaicml-streaming also pins numpy<2.2 and transformers<5 (older than
# what `datasets` needs). So their other dependencies come from the `bench` extra and they themselves are
# installed without dependencies; compare_peers.py imports only their text paths (no torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -q -e ".[dev,torch,bench]"
.venv/bin/pip install -q --no-deps "litdata==0.2.76" "mosaicml-streaming==0.13.0"
