"""The project's own code a stage runs: its module and every module of `stages` or `transfer` it
imports, at any depth and wherever the import sits (inside a function too), with the __init__.py of
every package on the way. dvc.yaml lists these files as each stage's deps (tests/test_dvc_yaml.py
checks it), and a resumable training state counts only for the same code."""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGES = ("stages", "transfer")
ROOT = Path(__file__).resolve().parents[2]  # the project root: transfer/core/code_deps.py


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from transfer.core import params`
    return {name for name in names if name.split(".")[0] in PACKAGES}


def module_file(module: str) -> Path | None:
    """The file of a project module (a.b.c: a/b/c.py, or a/b/c/__init__.py for a package); None for a
    name that is no module (`from transfer.core.paths import RAW_DIR` also yields ...paths.RAW_DIR)."""
    base = ROOT.joinpath(*module.split("."))
    for file in (base.with_suffix(".py"), base / "__init__.py"):
        if file.is_file():
            return file
    return None


def stage_modules(module: str) -> list[str]:
    """`module` and the project modules it imports, transitively, with their packages, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        file = module_file(name)
        if name in seen or file is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:depth]) for depth in range(1, len(parts))]  # importing a.b runs a/__init__.py
        todo += _imported(ast.parse(file.read_text(encoding="utf-8")))
    return sorted(seen)


def stage_code_files(module: str) -> list[str]:
    """The files of stage_modules, relative to the project root, as dvc.yaml names them."""
    return sorted(module_file(name).relative_to(ROOT).as_posix() for name in stage_modules(module))


def code_digest(module: str) -> str:
    digest = hashlib.sha256()
    for rel in stage_code_files(module):
        digest.update(rel.encode())
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()
