"""The project's own code a stage runs: its module and every `stages` module it imports, at any depth
and wherever the import sits (inside a function too). dvc.yaml lists these files as each stage's
deps (tests/test_dvc_yaml.py checks it), and a resumable training state counts only for the same code."""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "stages"
PACKAGE_DIR = Path(__file__).resolve().parent


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from stages import params`
    return {name for name in names if name.split(".")[0] == PACKAGE}


def stage_modules(module: str) -> list[str]:
    """`module` and the project modules it imports, transitively, sorted."""
    seen: set[str] = set()
    todo = [module, PACKAGE]  # `python -m stages.x` runs the package's __init__ first
    while todo:
        name = todo.pop()
        file = PACKAGE_DIR / f"{name.split('.', 1)[1]}.py" if "." in name else PACKAGE_DIR / "__init__.py"
        if name in seen or not file.exists():
            continue
        seen.add(name)
        todo += _imported(ast.parse(file.read_text(encoding="utf-8")))
    return sorted(seen)


def stage_code_files(module: str) -> list[str]:
    """The files of stage_modules, as dvc.yaml names them (stages/<name>.py)."""
    return [f"{PACKAGE}/{'__init__' if '.' not in m else m.split('.', 1)[1]}.py" for m in stage_modules(module)]


def code_digest(module: str) -> str:
    digest = hashlib.sha256()
    for rel in stage_code_files(module):
        digest.update(rel.encode())
        digest.update((PACKAGE_DIR.parent / rel).read_bytes())
    return digest.hexdigest()
