"""The pull-request report's review: for each mode whose predictions changed between BASE and HEAD, is the
accuracy change real or noise? Base against head on the same images (evaluate's plots/predictions/<mode>.csv,
committed at every revision): the exact McNemar test on the images that flipped, two-sided, p Holm-corrected
across the modes tested. A new split (not the same images) is not paired: both Wilson intervals instead.
Then the report itself: the review after the one-line summary, then params, metrics and plots."""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

from transfer.core.errors import UserError, plural
from transfer.core.files import kind_of, what_is
from transfer.evaluation.mode_results import Table, parse_predictions
from transfer.evaluation.stats import format_p, holm, paired, wilson_interval
from transfer.review.dvc_diff import WORKSPACE, capped, diff_section, git, plots_section, summary_line

PREDICTIONS = "plots/predictions"
MODE_FILE = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]*)\.csv")
MAX_CSV_BYTES = 64 * 2**20  # about a million images; a bigger file is refused, never read
ALPHA = 0.05


# ---------------------------------------------------------------------------------------------- reading

def workspace_predictions() -> dict[str, Table]:
    """{mode: table} of the working tree's plots/predictions/; a link there is refused, not followed."""
    top = Path(git("rev-parse", "--show-toplevel") or ".")
    folder = top / PREDICTIONS
    for path in (folder.parent, folder):
        if path.is_symlink():
            raise UserError(f"{path.relative_to(top)}: a link; the report reads no predictions through it")
    if os.path.lexists(folder) and not folder.is_dir():
        raise UserError(f"{PREDICTIONS}: {what_is(folder)}, where evaluate writes a folder; remove it and "
                        f"re-run dvc repro")
    if not folder.is_dir():
        return {}
    tables = {}
    for path in sorted(folder.iterdir()):
        match = MODE_FILE.fullmatch(path.name)
        if match is None:
            continue
        name = f"{PREDICTIONS}/{path.name}"
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{name}: a link or not a file; the report reads no predictions through it")
        if path.stat().st_size > MAX_CSV_BYTES:
            raise UserError(f"{name}: over {MAX_CSV_BYTES:,} bytes; not read")
        tables[match.group(1)] = parse_predictions(path.read_bytes(), name)
    return tables


def committed_predictions(rev: str) -> dict[str, Table]:
    """{mode: table} of plots/predictions/ at git revision `rev`, read with `git show` (no checkout);
    a committed link, or a file over MAX_CSV_BYTES, is refused."""
    listing = git("ls-tree", "-l", "--end-of-options", rev, "--", f"{PREDICTIONS}/")
    tables = {}
    for line in (listing or "").splitlines():
        info, _, path = line.partition("\t")
        kind = info.split()[0]
        size = info.split()[-1]
        match = MODE_FILE.fullmatch(path.removeprefix(f"{PREDICTIONS}/"))
        if match is None:
            continue
        if kind == "120000" or not size.isdigit():
            raise UserError(f"{path} at {rev}: a link or not a file; the report reads no predictions through it")
        if int(size) > MAX_CSV_BYTES:
            raise UserError(f"{path} at {rev}: over {MAX_CSV_BYTES:,} bytes; not read")
        proc = subprocess.run(["git", "show", "--end-of-options", f"{rev}:{path}"], capture_output=True)
        if proc.returncode != 0:
            raise UserError(f"{path} at {rev}: git cannot read it")
        tables[match.group(1)] = parse_predictions(proc.stdout, f"{path} at {rev}")
    return tables


# ---------------------------------------------------------------------------------------------- testing

def score(table: Table) -> dict:
    right = sum(table.values())
    images = len(table)
    return {"correct": right, "images": images, "interval": list(wilson_interval(right, images))}


def compare(old: Table | None, new: Table | None) -> dict:
    """One mode, base (old) against head (new): new, removed, not paired (other images), or paired."""
    if old is None or new is None:
        side = "head" if old is None else "base"
        return {"status": "new" if old is None else "removed", side: score(new if old is None else old)}
    result = {"base": score(old), "head": score(new)}
    if set(old) != set(new):
        return {"status": "not paired", **result}
    order = sorted(old)
    tally = paired([old[path] for path in order], [new[path] for path in order])
    return {"status": "paired", **result, "flipped_to_right": tally["only_b"], "flipped_to_wrong": tally["only_a"],
            "p": tally["p"]}


def review(base: str, head: str | None) -> dict:
    """The review's data: each mode whose predictions differ between `base` and `head` (None: the
    workspace), compared; the paired ones' p Holm-corrected across them, `real` when below ALPHA."""
    before = committed_predictions(base)
    after = committed_predictions(head) if head is not None else workspace_predictions()
    modes = {mode: compare(before.get(mode), after.get(mode))
             for mode in sorted(set(before) | set(after)) if before.get(mode) != after.get(mode)}
    tested = {mode: result["p"] for mode, result in modes.items() if result["status"] == "paired"}
    for mode, p_holm in holm(tested).items():
        modes[mode].update(p_holm=p_holm, real=p_holm < ALPHA)
    return {"base": base, "head": head or WORKSPACE, "alpha": ALPHA, "correction": "holm", "tested": len(tested),
            "modes": modes}


# ---------------------------------------------------------------------------------------------- writing

def interval(side: dict) -> str:
    low, high = side["interval"]
    return f"[{low:.3f}, {high:.3f}]"


def mode_line(mode: str, result: dict) -> str:
    status = result["status"]
    if status == "new":
        return f"- {mode}: new in head, {result['head']['correct']}/{result['head']['images']} right."
    if status == "removed":
        return f"- {mode}: removed in head (was {result['base']['correct']}/{result['base']['images']} right)."
    old = result["base"]
    new = result["head"]
    counts = f"- {mode}: {old['correct']}/{old['images']} -> {new['correct']}/{new['images']}"
    if status == "not paired":
        return (f"{counts}: not paired (the reporting images differ: a new split), so not tested; 95% Wilson "
                f"intervals {interval(old)} -> {interval(new)}.")
    verdict = "real" if result["real"] else "noise"
    return (f"{counts}: {plural(result['flipped_to_right'], 'image')} flipped to right, "
            f"{result['flipped_to_wrong']} to wrong, {format_p(result['p'])} (Holm: {format_p(result['p_holm'])}): "
            f"{verdict}.")


def review_markdown(data: dict) -> str:
    """The review as a Markdown section: one line per mode, after a line saying how it was tested."""
    if not data["modes"]:
        return "## Accuracy: real or noise\n\nNo predictions changed.\n"
    intro = (f"Base against head on the same images: exact McNemar test on the images that flipped (two-sided), "
             f"p Holm-corrected across the {plural(data['tested'], 'mode')} tested; real when the corrected "
             f"p < {data['alpha']}.")
    lines = [mode_line(mode, result) for mode, result in data["modes"].items()]
    return "## Accuracy: real or noise\n\n" + intro + "\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- the report

def build_report(base: str, head: str | None, files: Path) -> tuple[str, dict]:
    """(the report's Markdown, the review's data); the images it links to are written into `files`, a
    folder beside the report."""
    revs = [base] if head is None else [base, head]
    head_name = head or WORKSPACE
    link = files.name  # the folder lies beside the report: a relative link works in any checkout
    checked = review(base, head)
    params, params_md = diff_section("params", revs)
    metrics, metrics_md = diff_section("metrics", revs)
    n_plots, plots = plots_section(revs, base, head_name, files, link)
    summary = summary_line(base, head_name, sum(map(len, params.values())), metrics, n_plots)
    text = "\n".join([summary, "", review_markdown(checked), params_md, metrics_md, plots])
    return capped(text, base, head_name), checked


def files_dir(output: Path) -> Path:
    """Where the report's images go: report.md -> report_files/, beside it."""
    return output.with_name(f"{output.stem}_files")


def check_output(output: Path, files: bool = True) -> None:
    """Refuse a link (a checkout may commit `report_files` as one to anywhere) or a non-folder where the
    report writes. Every folder of a relative path is the checkout's; of an absolute one, only its own."""
    folders = [output.parent] if output.is_absolute() else [p for p in output.parents if p != Path(".")]
    for path in (*folders, *([files_dir(output)] if files else []), output):
        what = _unfit(path, path == output)
        if what:
            raise UserError(f"{path}: is {what}; the report writes a new or regular file, through no link, into "
                            "folders (name another -o)")


def _unfit(path: Path, is_file: bool) -> str | None:
    """What `path` is when the report cannot write there: a link, a special file (a device or FIFO would be
    replaced by a regular file), a folder for a file, or a file for a folder; None when missing or fit."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        return "a link"
    mode = os.stat(path).st_mode
    if not is_file:
        return None if stat.S_ISDIR(mode) else "not a folder"
    return "a folder" if stat.S_ISDIR(mode) else kind_of(mode)
