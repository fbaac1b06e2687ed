"""The code stays small enough to read: ruff's rules (complexity 10 at most, pyproject.toml) pass and no
function of the pipeline is over 60 lines (modules are cut by concept, not by length); and its layers hold: the stages
import the library (transfer/), the library and the bench tools never import a stage, and no module
imports itself round a circle."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from transfer.core.code_deps import _imported, module_file


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements-dev.txt installs it)")
    proc = subprocess.run([ruff, "check", "stages", "transfer", "tests", "bench"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_code_shape():
    """Small enough to read: no function of the pipeline over 60 lines."""
    long = []
    for path in sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "transfer").rglob("*.py"),
                        *(ROOT / "bench").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{rel}: {node.name}() {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def project_imports(path: Path) -> set[str]:
    """The project modules (stages.*, transfer.*) that the file at `path` imports, anywhere in it."""
    return {name for name in _imported(ast.parse(path.read_text(encoding="utf-8"))) if module_file(name)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_library_and_the_bench_tools_never_import_a_stage():
    crossing = [f"{path.relative_to(ROOT)} imports {name}"
                for folder in ("transfer", "bench") for path in sorted((ROOT / folder).rglob("*.py"))
                for name in sorted(project_imports(path)) if name.split(".")[0] == "stages"]
    assert crossing == []


def test_no_module_imports_itself_round_a_circle():
    graph = {module_name(path): {name for name in project_imports(path) if name != module_name(path)}
             for folder in ("stages", "transfer") for path in (ROOT / folder).rglob("*.py")}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert circles == []


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_is_a_guide_whose_links_resolve():
    """At most 250 lines, and every relative link of it and of docs/ names a file that exists, and a
    heading of that file where the link names one (page.md#heading)."""
    readme = ROOT / "README.md"
    assert readme.read_text(encoding="utf-8").count("\n") <= 250
    broken = []
    for page in [readme, *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            file = page.parent / target
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert broken == []


NAMED_MODULE = re.compile(r"(?<![-/.\w])((?:transfer|stages|bench)(?:\.[A-Za-z_]\w*)+)")
NAMED_PATH = re.compile(r"(?<![-/.\w])((?:transfer|stages|bench|tests|docs|scripts)/[\w/.-]*\w)")


def prose(path: Path) -> str:
    """What a reader reads as words: a Markdown file whole, a module's docstrings and comments."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return text
    tree = ast.parse(text)
    docs = [ast.get_docstring(node) or "" for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    return "\n".join(docs + comments)


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def names_something(dotted: str) -> bool:
    """transfer.a.b[.name[.attr]]: a module, then (if anything is left) a name defined at its top level."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        found = module_file(".".join(parts[:end]))
        if found:
            rest = parts[end:]
            return not rest or rest[0] in top_level_names(found) or (found.parent / f"{rest[0]}.py").exists()
    return False


def test_docs_and_docstrings_name_only_modules_and_files_that_exist():
    """A docstring, comment or doc that names a module, function or file of the project names a real one."""
    stale = []
    for path in sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "transfer").rglob("*.py"),
                        *(ROOT / "bench").glob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]):
        text = prose(path)
        rel = path.relative_to(ROOT).as_posix()
        stale += [f"{rel}: {m}" for m in NAMED_MODULE.findall(text) if not names_something(m)]
        stale += [f"{rel}: {m}" for m in NAMED_PATH.findall(text)
                  if "<" not in m and "/." not in m and not (ROOT / m.rstrip(".")).exists()]
    assert stale == []


LAYERS = ("core", "data", "models", "training", "evaluation", "audit", "review")  # each may import those before it


def test_each_subpackage_imports_only_the_layers_below_it():
    """transfer/'s subpackages are layers: core, data, models, training, evaluation, audit, review; a module
    imports its own layer and those before it, never one after it."""
    upward = []
    for path in sorted((ROOT / "transfer").rglob("*.py")):
        parts = path.relative_to(ROOT / "transfer").parts
        if len(parts) < 2:
            continue
        own = LAYERS.index(parts[0])
        for name in sorted(project_imports(path)):
            layer = name.split(".")[1] if name.startswith("transfer.") and name.count(".") else None
            if layer in LAYERS and LAYERS.index(layer) > own:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def code_map_rows() -> list[str]:
    """docs/code-map.md's table, from the code: each entry point of stages/, the library modules it
    imports itself, and the params it declares (its PARAMS, as dvc.yaml's stage lists them)."""
    rows = []
    for path in sorted((ROOT / "stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        params = next((ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                       and any(getattr(t, "id", None) == "PARAMS" for t in node.targets)), ())
        modules = sorted(name for name in project_imports(path)
                         if name.startswith("transfer.") and module_file(name).name != "__init__.py")
        core = [name.rsplit(".", 1)[1] for name in modules if name.startswith("transfer.core.")]
        library = [name.removeprefix("transfer.") for name in modules if not name.startswith("transfer.core.")]
        rows.append(f"| `{path.relative_to(ROOT).as_posix()}` | {', '.join(f'`{m}`' for m in library) or '-'} | "
                    f"{', '.join(core)} | {', '.join(f'`{p}`' for p in params) or '-'} |")
    return rows


def test_the_code_map_is_the_code():
    """docs/code-map.md lists every entry point with the library modules it imports and the params it
    declares, exactly as the code has them (on a mismatch, the expected rows are printed)."""
    text = (ROOT / "docs" / "code-map.md").read_text(encoding="utf-8")
    documented = [line for line in text.splitlines() if line.startswith("| `stages/")]
    assert documented == code_map_rows(), "\n".join(code_map_rows())


def reads_an_earlier_target(node: ast.Assign) -> bool:
    """`a, b = b, a` (or `a, b = b, a + b`): a value reads a name that a target before it writes, so one
    assignment a line would need a temporary; `a, b = x, y` with no such read is two assignments packed."""
    def names(tree: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}

    def written(target: ast.expr) -> set[str]:
        while isinstance(target, (ast.Attribute, ast.Subscript, ast.Starred)):
            target = target.value  # a.b = ... or a[i] = ... changes a
        return names(target)

    targets = node.targets[0].elts
    values = node.value.elts
    return any(written(targets[j]) & names(values[k]) for k in range(len(values)) for j in range(min(k, len(targets))))


def test_one_assignment_a_line():
    """No `a, b = x, y` in stages/, transfer/ or bench/: unrelated assignments are not packed on one line
    (unpacking a call's tuple, `a, b = f()`, is one assignment; a swap that needs the old values stays)."""
    packed = []
    for path in sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "transfer").rglob("*.py"),
                        *(ROOT / "bench").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
                    and isinstance(node.value, ast.Tuple) and not reads_an_earlier_target(node)):
                packed.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    assert packed == [], "packed assignments:\n" + "\n".join(packed)
