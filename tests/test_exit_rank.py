"""pilestore.torch.exit_rank: how a training script ends without the interpreter teardown gloo can abort."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def test_exit_rank_flushes_closes_the_group_and_exits_with_the_code_skipping_teardown(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import atexit, sys
            import torch, torch.distributed as dist
            from pilestore.torch import exit_rank

            atexit.register(lambda: print("teardown ran", flush=True))
            dist.init_process_group("gloo", init_method="file://{tmp_path / "store"}", rank=0, world_size=1)
            total = torch.ones(4)
            dist.all_reduce(total)
            print(f"sum {{int(total.sum())}}", end="")  # no newline, not flushed: exit_rank flushes
            sys.stderr.write("to stderr")
            del total
            exit_rank(3)
            print("not reached")
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as a script's stdout is
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "sum 4" and "to stderr" in done.stderr
    assert "teardown ran" not in done.stdout  # atexit handlers and finalization are skipped
