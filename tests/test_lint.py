"""The code passes the project's linter (pyproject.toml [tool.ruff]: pycodestyle with the line length enforced,
pyflakes, import order)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed with the dev extra")
def test_ruff_is_clean():
    proc = subprocess.run(["ruff", "check", "--no-cache", "bench", "models", "tests"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
