"""What DVC says changed between two revisions, for the pull-request report (stages/report.py): the safe
git and dvc command lines (every revision after `--end-of-options`/`--`, what DVC could not read is an
error), the params and metrics diffs, the one-line summary and the changed plots, drawn."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from transfer.core.errors import UserError, plural

WORKSPACE = "workspace"  # the name DVC gives the working tree in its diff tables
DEFAULT_BASES = ("main", "origin/main")
MAX_CHARS = 65_536  # what a GitHub pull-request comment holds
# A longer line (a param whose value is a huge string) is cut, so that the cap on the whole text does not
# drop its section and every one after it.
MAX_LINE_CHARS = 2_000
LOAD_FAILURE = re.compile(  # DVC's two warnings (it exits 0) that it could not read a revision's files
    r"failed to load (?:some )?(\w+) (?:in revision '([^']*)', (.+)|for following revisions: (.+))")


def git(*args: str) -> str | None:
    """git's stdout, stripped, or None when it fails (not a repository, an unknown revision)."""
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def dvc(*args: str, revs: list[str]) -> str:
    """The real DVC CLI of this interpreter (not DVC internals, which change between versions), with the
    revisions `revs` after `--` (never read as options; no `--` without revisions, which `dvc exp show`
    refuses); fails when DVC could not read one of them."""
    after = ["--", *revs] if revs else []
    proc = subprocess.run([sys.executable, "-m", "dvc", *args, *after], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or [f"exit {proc.returncode}"]
        raise UserError(f"dvc {' '.join(args)}: {lines[-1].strip()}")
    check_read(proc.stderr, revs)
    return proc.stdout


def check_read(stderr: str, revs: list[str]) -> None:
    """Fail where DVC could not read one of `revs` (and the workspace beside a lone base): it diffs that as
    absent, everything "changed". Another revision's trouble (a broken workspace beside two) is not ours."""
    asked = set(revs) | ({WORKSPACE} if len(revs) == 1 else set())
    for what, rev, why, listed in LOAD_FAILURE.findall(stderr):  # the warnings, with reasons, come first
        for name in [rev] if rev else re.findall(r"'([^']*)'", listed):
            if name in asked:
                raise UserError(f"{name}: DVC cannot read its {what}" + (f" ({why.strip()})" if why else "")
                                + "; fix the revision's dvc.yaml or files")


def check_repository() -> None:
    if git("rev-parse", "--show-toplevel") is None:
        raise UserError(f"{os.getcwd()}: not inside a git repository")
    if subprocess.run([sys.executable, "-m", "dvc", "root"], capture_output=True).returncode != 0:
        raise UserError(f"{os.getcwd()}: not inside a DVC repository (no .dvc/ found; `dvc init` makes one)")


def check_revision(rev: str) -> str:
    """`rev` resolved once, as git and DVC both read it alike: its full ref name (refs/tags/..., refs/heads/...)
    or else its commit. `workspace`, DVC's name for the working tree, is refused: git would read a tag of
    that name, DVC the working tree."""
    if rev.startswith("-"):  # git and dvc would read it as an option (--output=<file> writes a file)
        raise UserError(f"{rev!r}: starts with '-': not a revision")
    if rev == WORKSPACE:
        raise UserError(f"{rev!r}: DVC reads this name as the working tree, not a revision; name the commit (or "
                        f"refs/tags/{rev})")
    commit = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if commit is None:
        raise UserError(f"{rev!r}: no such git revision")
    full = git("rev-parse", "--symbolic-full-name", rev) or ""  # no --end-of-options: here git prints it
    return full if full.startswith("refs/") and "\n" not in full else commit


def default_base() -> str:
    """The merge base of `main` with HEAD: what the branch changed, not what main did since."""
    for name in DEFAULT_BASES:
        if git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}") is not None:
            base = git("merge-base", name, "HEAD")
            if base is not None:
                return base[:12]
    raise UserError(f"no BASE given and no {' or '.join(DEFAULT_BASES)} branch to start from: name the base revision")


# ---------------------------------------------------------------------------------------------- params, metrics

def diff_section(kind: str, revs: list[str]) -> tuple[dict, str]:
    """({path: {name: {old, new, ...}}} of the changed params or metrics (kind), the section's Markdown)."""
    changed = json.loads(dvc(kind, "diff", "--json", revs=revs) or "{}")
    changed = {path: rows for path, rows in changed.items() if rows}
    body = dvc(kind, "diff", "--md", revs=revs).strip() if changed else f"No {kind} changed."
    return changed, f"## {kind.capitalize()}\n\n{body}\n"


def accuracy_changes(metrics: dict) -> list[str]:
    """'frozen 0.961 -> 0.974' for each mode (metrics/<mode>.json) and the headline whose accuracy changed."""
    changes = []
    for path, rows in sorted(metrics.items(), key=lambda item: item[0] == "results/headline.json"):
        row = rows.get("accuracy")
        name = "headline" if path == "results/headline.json" else re.fullmatch(r"metrics/(.+)\.json", path)
        if row is None or name is None:
            continue
        name = name if isinstance(name, str) else name.group(1)
        old, new = (f"{v:.3f}" if isinstance(v, (int, float)) else "none" for v in (row.get("old"), row.get("new")))
        changes.append(f"{name} {old} -> {new}")
    return changes


def summary_line(base: str, head: str, params: int, metrics: dict, plots: int) -> str:
    if not (params or metrics or plots):
        return f"**{base} -> {head}**: nothing changed (no params, metrics or plots differ)."
    parts = [f"{plural(params, 'param')} changed", f"{plural(sum(map(len, metrics.values())), 'metric')} changed",
             f"{plural(plots, 'plot')} changed"]
    accuracy = accuracy_changes(metrics)
    if accuracy:
        parts.append("accuracy of " + ", ".join(accuracy))
    return f"**{base} -> {head}**: " + ", ".join(parts) + "."


# ---------------------------------------------------------------------------------------------- plots

def plot_versions(items: list[dict]) -> dict[str, object]:
    """{revision: what this plot shows at it}: an image's bytes, or a vega plot's data points (order-free)."""
    versions: dict[str, object] = {}
    for item in items:
        if item["type"] == "image":
            versions[item["revisions"][0]] = Path(item["url"]).read_bytes()
            continue
        points: dict[str, list[str]] = {}
        for value in item["content"]["data"]["values"]:
            point = {k: v for k, v in value.items() if k != "rev"}
            points.setdefault(value.get("rev"), []).append(json.dumps(point, sort_keys=True))
        versions.update({rev: sorted(rows) for rev, rows in points.items()})
    return versions


def changed_plots(data: dict, base: str, head: str) -> list[tuple[str, list[dict]]]:
    """[(plot name, its dvc items)] of the plots whose images or data differ between base and head.
    (A revision named twice is one revision to DVC: its plots equal themselves.)"""
    changed = []
    for name, items in data.items():
        versions = plot_versions(items)
        if versions.get(base) != versions.get(head):
            changed.append((name, items))
    return changed


def slug(name: str) -> str:
    """A file name for a plot's name or path: 'plots/errors/frozen.png' -> 'plots_errors_frozen'."""
    name = re.sub(r"\.(png|jpe?g|gif|svg|csv|tsv|json|ya?ml)$", "", name, flags=re.I)
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def line_axes(node) -> tuple[str, str, str | None] | None:
    """(x field, y field, series field) of the first vega-lite encoding with quantitative x and y."""
    if isinstance(node, list):
        return next((axes for axes in map(line_axes, node) if axes), None)
    if not isinstance(node, dict):
        return None
    enc = node.get("encoding", {})
    x = enc.get("x", {})
    y = enc.get("y", {})
    if x.get("type") == "quantitative" and y.get("type") == "quantitative" and "field" in x and "field" in y:
        color = enc.get("color", {}).get("field")
        return x["field"], y["field"], color if color != "rev" else None
    return next((axes for axes in map(line_axes, node.values()) if axes), None)


def draw_lines(name: str, item: dict, base: str, head: str, path: Path) -> bool:
    """Draw a vega line plot's data with matplotlib (DVC's own renderer needs a browser); False if not lines."""
    axes = line_axes(item["content"])
    if axes is None:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_field, y_field, series_field = axes
    lines: dict[tuple, list[tuple[float, float]]] = {}
    for value in item["content"]["data"]["values"]:
        key = (value.get(series_field, "") if series_field else "", value.get("rev"))
        try:
            lines.setdefault(key, []).append((float(value[x_field]), float(value[y_field])))
        except (KeyError, TypeError, ValueError):  # a word in a committed CSV
            raise UserError(f"{name}: at {value.get('rev')}: {x_field} or {y_field} is not a number "
                            f"in {value}") from None
    colours = {series: f"C{i}" for i, series in enumerate(sorted({str(series) for series, _ in lines}))}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (series, rev), points in sorted(lines.items(), key=lambda item: (str(item[0][0]), item[0][1] != base)):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, "--" if rev == base else "-", color=colours[str(series)], marker="o", markersize=3,
                label=f"{series} {rev}".strip())
    ax.set(title=name, xlabel=x_field, ylabel=y_field)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
    return True


def plot_markdown(name: str, items: list[dict], base: str, head: str, files: Path, link: str) -> str:
    """One changed plot: its images at both revisions side by side, a drawing of its lines, or its name."""
    top = Path(git("rev-parse", "--show-toplevel") or ".").resolve()  # DVC reads through a workspace link
    if head == WORKSPACE and top not in Path(os.path.realpath(top / name)).parents:
        raise UserError(f"{name}: a link out of the project; the report copies no file from outside it")
    images = {item["revisions"][0]: Path(item["url"]) for item in items if item["type"] == "image"}
    if images:
        cells = []
        for side, rev in (("base", base), ("head", head)):
            if rev in images:
                target = f"{side}_{slug(name)}{images[rev].suffix}"
                shutil.copyfile(images[rev], files / target)
                cells.append(f"![{name} at {rev}]({link}/{target})")
            else:
                cells.append("(absent)")
        return f"### {name}\n\n| {base} | {head} |\n|---|---|\n| {cells[0]} | {cells[1]} |\n"
    target = f"{slug(name)}.png"
    if draw_lines(name, items[0], base, head, files / target):
        return f"### {name}\n\n![{name}: {base} dashed, {head} solid]({link}/{target})\n"
    return f"### {name}\n\nChanged; not drawn here (`dvc plots diff {base} {head}` shows it).\n"


def plots_section(revs: list[str], base: str, head: str, files: Path, link: str) -> tuple[int, str]:
    """(how many plots changed, the section's Markdown); the changed images are written under `files`."""
    with tempfile.TemporaryDirectory(prefix="dvc-plots-") as out:
        data = json.loads(dvc("plots", "diff", "--json", "-o", out, revs=revs)).get("data", {})  # none: no key
        changed = changed_plots(data, base, head)
        blocks = [plot_markdown(name, items, base, head, files, link) for name, items in changed]
    body = "\n".join(blocks) if blocks else "No plots changed.\n"
    return len(changed), f"## Plots\n\n{body}"


def capped(text: str, base: str, head: str) -> str:
    """`text` whole when a pull-request comment holds it, else cut at a line, with a line saying so; a line
    over MAX_LINE_CHARS is cut first, its section kept."""
    text = "\n".join(line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS - 1] + "…"
                     for line in text.split("\n"))
    if len(text) <= MAX_CHARS:
        return text
    note = (f"\n\n**Cut here**: {len(text):,} characters are more than a pull-request comment holds "
            f"({MAX_CHARS:,}); `dvc params/metrics/plots diff {base} {head}` show the rest.\n")
    return text[:text.rfind("\n", 0, MAX_CHARS - len(note))] + note  # cut at a line
