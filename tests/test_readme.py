"""The README's Python examples run as written; the torchrun example runs under torchrun."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
TORCHRUN = ("# train.py, run with: torchrun", "# fsdp.py, run with: torchrun")


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    code = BLOCKS[index]
    if not code.startswith(TORCHRUN):
        exec(compile(code, f"README.md block {index}", "exec"), {})
        return
    script = tmp_path / code.split(",")[0].removeprefix("# ")
    script.write_text(code)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    done = subprocess.run([*command, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
