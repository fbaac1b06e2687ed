"""One paired verdict across revisions or DVC experiments, not only across the modes of one run: which
backbone or setting to ship, when each was run as its own commit or experiment.

    python -m stages.report --verdict main exp-lite1 exp-lite2 [--json verdict.json]
    python -m stages.report --verdict --all-experiments     # HEAD and every finished experiment of it

Each candidate is `<revision>:<mode>`: every mode whose reporting-split predictions
(plots/predictions/<mode>.csv) the revision holds, read from git (no checkout, no `dvc pull`). All must
be scored on the same images in the same order, or nothing is tested. stats.verdict then tests every pair
(exact McNemar, Holm over all pairs): the tied set, the recommended (the cheapest of the tied: by
`latency_ms` when the backbones differ and every candidate's metrics hold it, else by `train_seconds`)
and the worse ones, each with the candidate that beats it."""
from __future__ import annotations

import json
import math
import re
import subprocess

from transfer.core.errors import UserError
from transfer.core.params import parse_yaml
from transfer.core.paths import mode_details, mode_metrics, predictions_csv
from transfer.evaluation.stats import format_p, verdict
from transfer.review.dvc_diff import WORKSPACE, check_revision, dvc, git, plural
from transfer.review.report import MAX_CSV_BYTES, committed_predictions

COMMIT = re.compile(r"[0-9a-f]{40}")
PARAMS = "params.yaml"
FINISHED = (None, "success")  # DVC's executor state of a finished experiment (None: run in the workspace)


# ---------------------------------------------------------------------------------------------- naming

def commit_of(rev: str) -> str | None:
    return git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")


def experiment_commits(document) -> tuple[list[tuple[str, str]], dict[str, str], dict[str, str]]:
    """([(name, commit)] of the baselines, {name: commit} of the finished experiments, {name: state} of
    the others) in `dvc exp show --json` (DVC 3); a commit that is not 40 hex digits is no commit."""
    baselines = []
    finished = {}
    pending = {}
    for baseline in document if isinstance(document, list) else []:
        if not isinstance(baseline, dict) or not COMMIT.fullmatch(str(baseline.get("rev"))):
            continue  # the workspace row, or junk
        baselines.append((str(baseline.get("name") or baseline["rev"][:7]), baseline["rev"]))
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") if isinstance(exp, dict) else None
            rev = revs[0] if isinstance(revs, list) and revs and isinstance(revs[0], dict) else {}
            name = str(exp.get("name") or rev.get("name"))
            state = (exp.get("executor") or {}).get("state")
            if state in FINISHED and not rev.get("error") and COMMIT.fullmatch(str(rev.get("rev"))):
                finished.setdefault(name, rev["rev"])  # newest first: a reused name is its newest run
            else:
                pending[name] = str(state or "failed")
    return baselines, finished, pending


def read_experiments() -> tuple[list[tuple[str, str]], dict[str, str], dict[str, str]]:
    return experiment_commits(json.loads(dvc("exp", "show", "--json", revs=[]) or "[]"))


def resolve(names: list[str], all_experiments: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """([(name, commit)] of the revisions named (a git revision first, else a finished DVC experiment of
    HEAD), and with `all_experiments` HEAD's baseline and each finished experiment; each commit once),
    (a line for each commit named twice or experiment left out)."""
    experiments = read_experiments() if all_experiments or any(_not_git(name) for name in names) else None
    named = []
    for name in names:
        if not _not_git(name):
            named.append((name, commit_of(check_revision(name))))
            continue
        _, finished, pending = experiments
        if name in pending:
            raise UserError(f"{name!r}: a DVC experiment not finished ({pending[name]}); `dvc queue status` shows it")
        if name not in finished or commit_of(finished[name]) is None:
            raise UserError(f"{name!r}: no such git revision or finished DVC experiment")
        named.append((name, finished[name]))
    notes = []
    if all_experiments:
        baselines, finished, pending = experiments
        named += baselines + list(finished.items())
        if pending:
            notes.append(f"{plural(len(pending), 'experiment')} not finished, left out: {', '.join(sorted(pending))}.")
    seen: dict[str, str] = {}
    for name, commit in named:
        if commit in seen:
            notes.append(f"{name}: the same commit as {seen[commit]}; left out.")
        seen.setdefault(commit, name)
    return [(name, commit) for commit, name in seen.items()], notes


def _not_git(name: str) -> bool:
    """A name git does not know (an experiment's); '-x' and `workspace` go to check_revision to be refused."""
    return not name.startswith("-") and name != WORKSPACE and commit_of(name) is None


# ---------------------------------------------------------------------------------------------- reading

def committed_file(commit: str, name: str, path: str) -> bytes | None:
    """The bytes of `path` at `commit` (named `name` in errors); None when absent; a link or a file over
    MAX_CSV_BYTES is refused."""
    listing = git("ls-tree", "-l", "--end-of-options", commit, "--", path) or ""
    info, _, found = listing.partition("\t")
    if found != path:
        return None
    if info.split()[0] == "120000" or not info.split()[-1].isdigit():
        raise UserError(f"{path} at {name}: a link or not a file; not read")
    if int(info.split()[-1]) > MAX_CSV_BYTES:
        raise UserError(f"{path} at {name}: over {MAX_CSV_BYTES:,} bytes; not read")
    return subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, check=True).stdout


def committed_json(commit: str, name: str, path: str) -> dict | None:
    data = committed_file(commit, name, path)
    if data is None:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{path} at {name}: not JSON ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} at {name}: expected a JSON object")
    return value


def cost(metrics: dict, key: str, where: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{where}: {key} must be a number >= 0, got {str(value)[:40]!r}")
    return float(value)


def planned_modes(commit: str, name: str) -> list[str]:
    """The modes params.yaml names at `commit` (none when it has no `modes:` table)."""
    data = committed_file(commit, name, PARAMS)
    try:
        text = (data or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{PARAMS} at {name}: not UTF-8 text") from None
    params = parse_yaml(text, f"{PARAMS} at {name}") or {}  # as DVC and the stages read it
    modes = params.get("modes") if isinstance(params, dict) else None
    return [str(mode) for mode in modes] if isinstance(modes, dict) else []


def candidates(revisions: list[tuple[str, str]]) -> tuple[dict[str, dict], list[str]]:
    """({`<name>:<mode>`: {rev, commit, mode, arch, train_seconds, latency_ms, predictions}}, a line for
    each mode left out: params.yaml names it but its predictions or train seconds are not committed)."""
    found = {}
    skipped = []
    for name, commit in revisions:
        tables = committed_predictions(commit)
        for mode in sorted(set(tables) | set(planned_modes(commit, name))):
            label = f"{name}:{mode}"
            metrics_path = mode_metrics(mode).as_posix()
            metrics = committed_json(commit, name, metrics_path) if mode in tables else None
            seconds = cost(metrics, "train_seconds", f"{metrics_path} at {name}") if metrics is not None else None
            if mode not in tables or seconds is None:
                missing = predictions_csv(mode) if mode not in tables else f"{metrics_path} with train_seconds"
                skipped.append(f"{label}: left out, no {missing} there.")
                continue
            details = committed_json(commit, name, mode_details(mode).as_posix()) or {}
            found[label] = {"rev": name, "commit": commit, "mode": mode, "arch": details.get("arch"),
                            "train_seconds": seconds,
                            "latency_ms": cost(metrics, "latency_ms", f"{metrics_path} at {name}"),
                            "predictions": tables[mode]}
    return found, skipped


def check_same_images(found: dict[str, dict]) -> None:
    """Every candidate on the first one's images in the same order; else one line naming the first difference."""
    first, *others = found
    paths = list(found[first]["predictions"])
    for label in others:
        theirs = list(found[label]["predictions"])
        if theirs == paths:
            continue
        row = next((i for i, (a, b) in enumerate(zip(paths, theirs)) if a != b), min(len(paths), len(theirs)))
        seen = [repr(side[row]) if row < len(side) else "no image" for side in (paths, theirs)]
        where = predictions_csv(found[label]["mode"])
        raise UserError(f"{label}: not on the images of {first}: row {row + 1} of {where} is {seen[1]} there, "
                        f"{seen[0]} in {first} ({len(theirs)} against {len(paths)} images); "
                        "a paired verdict needs the same reporting split")


def cost_key(found: dict[str, dict]) -> str:
    """latency_ms when the candidates' backbones differ and each one's metrics hold it: inference is paid on
    every image; else train_seconds (one backbone runs at one cost, whatever the mode)."""
    archs = {candidate["arch"] for candidate in found.values()}
    measured = all(candidate["latency_ms"] is not None for candidate in found.values())
    return "latency_ms" if len(archs) > 1 and measured else "train_seconds"


def cross_verdict(revisions: list[tuple[str, str]], notes: list[str]) -> dict:
    """The verdict's data over every candidate of `revisions` ([(name, commit)])."""
    found, skipped = candidates(revisions)
    if len(found) < 2:
        raise UserError(f"{plural(len(found), 'candidate')} with committed predictions and train seconds in "
             f"{', '.join(name for name, _ in revisions) or 'no revision'}: nothing to compare"
             + (f" ({skipped[0]})" if skipped else ""))
    check_same_images(found)
    key = cost_key(found)
    order = list(found[next(iter(found))]["predictions"])
    result = verdict({label: [c["predictions"][path] for path in order] for label, c in found.items()},
                     {label: c[key] for label, c in found.items()})
    for label, candidate in found.items():
        result["accuracy"][label].update({k: v for k, v in candidate.items() if k != "predictions"})
    return {**result, "revisions": dict(revisions), "cost": key, "skipped": skipped, "notes": notes}


# ---------------------------------------------------------------------------------------------- writing

UNITS = {"latency_ms": ("ms per image", "{:g} ms"), "train_seconds": ("train seconds", "{:g} s")}


def score(data: dict, label: str) -> str:
    row = data["accuracy"][label]
    return f"{row['correct']}/{row['total']}"


def verdict_markdown(data: dict) -> str:
    """The verdict as a few Markdown lines: how it was tested, tied, recommended, worse, left out."""
    what, unit = UNITS[data["cost"]]
    costs = {label: unit.format(row[data["cost"]]) for label, row in data["accuracy"].items()}
    tied = data["tied"]
    best = data["recommended"]
    intro = (f"{plural(len(data['accuracy']), 'candidate')} of {', '.join(data['revisions'])} on the same "
             f"{data['images']} images: exact McNemar test on every pair, Holm-corrected over "
             f"{plural(len(data['pairs']), 'pair')}; the cheapest by {what}"
             + (" (the backbones differ)." if data["cost"] == "latency_ms" else "."))
    lines = [f"- Tied: {', '.join(f'{label} ({score(data, label)}, {costs[label]})' for label in tied)}."]
    others = [costs[label] for label in tied if label != best]
    lines.append(f"- Recommended: {best} ({data['accuracy'][best]['arch'] or 'backbone not recorded'}), "
                 f"{costs[best]}" + (f" against {', '.join(others)}." if others else "."))
    lines += [f"- Worse: {row['mode']} ({score(data, row['mode'])}), beaten by {row['beaten_by']} "
              f"({score(data, row['beaten_by'])}), {format_p(row['p_holm'])} (Holm)." for row in data["worse"]]
    lines += [f"- {line}" for line in data["skipped"] + data["notes"]]
    return "## Verdict across revisions\n\n" + intro + "\n\n" + "\n".join(lines) + "\n"
