"""Runs every ```python block of docs/python-streams.md, so the guide stays runnable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "python-streams.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _blocks() -> list[str]:
    return _BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_guide_has_examples() -> None:
    assert len(_blocks()) >= 10


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_python_block_runs(index: int, tmp_path: Path) -> None:
    code = _blocks()[index]
    script = tmp_path / f"block_{index}.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"block {index}:\n{code}\nstderr:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
