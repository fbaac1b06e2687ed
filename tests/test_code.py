"""The code stays small enough to read: ruff's rules (complexity 10 at most, pyproject.toml) pass, no
module of the pipeline is over 300 lines and no function over 60."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements-dev.txt installs it)")
    proc = subprocess.run([ruff, "check", "stages", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_code_shape():
    """Small enough to read: no module of the pipeline over 300 lines, no function over 60."""
    long = []
    for path in sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        if text.count("\n") > 300:
            long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{rel}: {node.name}() {node.end_lineno - node.lineno + 1} lines")
    assert long == []
