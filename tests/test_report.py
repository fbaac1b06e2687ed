"""stages/report.py: the pull-request report, from the real git and dvc CLIs in a temporary project with
two modes (frozen, partial), where a branch changes modes.frozen.lr; and its GitHub workflow's structure."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from stages.report import files_dir, parse_args
from tests.conftest import ROOT, Project, env_with_venv, make_project
from tests.imagegen import write_class_folders

WORKFLOW = ROOT / ".github" / "workflows" / "report.yml"
OLD_LR, NEW_LR = 0.1, 0.001


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> SimpleNamespace:
    """base: the first `dvc repro`; branch frozen-lr: modes.frozen.lr 0.1 -> 0.001, reproduced; main: base
    plus a commit that changes no param, metric or plot. Left checked out on frozen-lr, clean."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    write_class_folders(data / "train", {"ants": 12, "bees": 12})
    write_class_folders(data / "val", {"ants": 6, "bees": 6}, seed=1)
    project = make_project(root / "project", data, modes=["frozen", "partial"])
    assert project.params["modes"]["frozen"]["lr"] == OLD_LR
    project.dvc("repro")
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "baseline")
    project.git("tag", "base")
    project.git("checkout", "-q", "-B", "main")
    project.git("checkout", "-q", "-b", "frozen-lr")
    project.set_params(modes={"frozen": {"lr": NEW_LR}})
    project.dvc("repro")
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "frozen: lr 0.001")
    project.git("checkout", "-q", "main")
    (project.path / "NOTES.md").write_text("A change that touches no param, metric or plot.\n")
    project.git("add", "NOTES.md")
    project.git("commit", "-q", "-m", "notes")
    project.git("checkout", "-q", "frozen-lr")
    return SimpleNamespace(project=project, root=root)


def git_json(project: Project, rev: str, path: str) -> dict:
    return json.loads(project.git("show", f"{rev}:{path}").stdout)


def report(project: Project, out: Path, *revs: str) -> str:
    project.stage("report", *revs, "-o", str(out))
    return out.read_text()


def table_rows(text: str, section: str) -> list[list[str]]:
    """The body rows of the Markdown table under `## <section>`, as lists of stripped cells."""
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("|")]
    return rows[2:]  # past the header and its |---| line


def image_links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_report_shows_the_changed_param_metrics_and_plots_and_nothing_of_the_unchanged_mode(history, tmp_path):
    project = history.project
    out = tmp_path / "pr" / "report.md"
    text = report(project, out, "base", "frozen-lr")
    old = git_json(project, "base", "metrics/frozen.json")
    new = git_json(project, "frozen-lr", "metrics/frozen.json")
    assert old["accuracy"] != new["accuracy"], "precondition: lr 0.001 should change frozen's accuracy"

    summary = text.splitlines()[0]
    assert "1 param changed" in summary, summary
    assert f"frozen {old['accuracy']:.3f} -> {new['accuracy']:.3f}" in summary, summary
    assert f"headline {old['accuracy']:.3f} -> {new['accuracy']:.3f}" in summary, summary

    assert table_rows(text, "Params") == [["params.yaml", "modes.frozen.lr", str(OLD_LR), str(NEW_LR)]]

    # Exactly the rows `dvc metrics diff` calls changed, among them frozen's accuracy with both values.
    changed = json.loads(project.dvc("metrics", "diff", "base", "frozen-lr", "--json").stdout)
    rows = table_rows(text, "Metrics")
    assert sorted((path, metric) for path, metric, *_ in rows) == \
        sorted((path, metric) for path, metrics in changed.items() for metric in metrics)
    assert ["metrics/frozen.json", "accuracy", f"{old['accuracy']:.5g}", f"{new['accuracy']:.5g}"] == \
        next(row for row in rows if row[:2] == ["metrics/frozen.json", "accuracy"])[:4]

    # The changed images at both revisions, written beside the report and linked relatively.
    files = files_dir(out)
    links = image_links(text)
    assert links and all((out.parent / link).is_file() for link in links), links
    assert all(not Path(link).is_absolute() and link.startswith(f"{files.name}/") for link in links)
    section = text.split("### plots/errors/frozen.png\n", 1)[1].split("\n### ", 1)[0]
    base_link, head_link = image_links(section)
    for link, rev in ((base_link, "base"), (head_link, "frozen-lr")):
        committed = subprocess.run(["git", "show", f"{rev}:plots/errors/frozen.png"], cwd=project.path,
                                   capture_output=True, check=True).stdout
        assert (out.parent / link).read_bytes() == committed, (link, rev)
    assert base_link != head_link
    assert "### val accuracy per epoch, all modes" in text  # an all-modes curve, drawn from its data

    assert "partial" not in text.lower()  # the mode nothing changed in: no row, no plot
    assert not any("partial" in path.name for path in files.iterdir())


def test_report_between_revisions_that_change_nothing_says_so(history, tmp_path):
    project = history.project
    for revs in (("base", "main"), ("main", "main")):  # a docs-only commit; the same revision twice
        out = tmp_path / f"{'-'.join(revs)}.md"
        text = report(project, out, *revs)
        assert "nothing changed" in text.splitlines()[0], text
        for section in ("params", "metrics", "plots"):
            assert f"No {section} changed." in text, text
        assert "|" not in text and not image_links(text), text
        assert list(files_dir(out).iterdir()) == []


def test_report_defaults_to_the_merge_base_with_main_and_the_workspace(history, tmp_path):
    """On frozen-lr, with main one commit past where frozen-lr left it: the branch's own change."""
    project = history.project
    merge_base = project.git("merge-base", "main", "HEAD").stdout.strip()
    assert merge_base != project.git("rev-parse", "main").stdout.strip()
    out = tmp_path / "report.md"
    text = report(project, out)
    assert text.splitlines()[0].startswith(f"**{merge_base[:12]} -> workspace**: 1 param changed"), text
    assert table_rows(text, "Params") == [["params.yaml", "modes.frozen.lr", str(OLD_LR), str(NEW_LR)]]


def run_report(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**env_with_venv(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_revision_is_one_line_exit_2_and_writes_nothing(history, tmp_path):
    out = tmp_path / "report.md"
    out.write_text("the previous report\n")
    proc = run_report(history.project.path, "base", "no-such-branch", "-o", str(out))
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().splitlines() == ["report: error: 'no-such-branch': no such git revision"], proc.stderr
    assert out.read_text() == "the previous report\n"
    assert not files_dir(out).exists()


def test_outside_a_git_or_dvc_repository_is_one_line_exit_2(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    proc = run_report(plain, "main", "HEAD", "-o", "report.md")
    assert proc.returncode == 2, proc
    assert re.fullmatch(r"report: error: .*: not inside a git repository\n", proc.stderr), proc.stderr
    subprocess.run(["git", "init", "-q"], cwd=plain, check=True)
    proc = run_report(plain, "main", "HEAD", "-o", "report.md")
    assert proc.returncode == 2, proc
    assert re.fullmatch(r"report: error: .*: not inside a DVC repository .*\n", proc.stderr), proc.stderr
    assert sorted(p.name for p in plain.iterdir()) == [".git"]


# ---------------------------------------------------------------------------------------------- the workflow

def workflow_steps() -> tuple[dict, list[dict]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    return workflow, job["steps"]


def test_workflow_runs_the_report_on_pull_requests_with_full_history():
    workflow, steps = workflow_steps()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert list(triggers) == ["pull_request"]
    assert workflow["permissions"]["pull-requests"] == "write"
    checkout = next(step for step in steps if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    runs = [step.get("run", "") for step in steps]
    assert any(re.match(r"pip install -r requirements\.txt\b", run) for run in runs), runs
    command = "python -m stages.report origin/${{ github.base_ref }} HEAD -o report.md"
    assert command in runs
    as_run = shlex.split(command.replace("${{ github.base_ref }}", "main"))  # as GitHub expands it
    args = parse_args(as_run[3:])  # what the report's own parser makes of it
    assert (args.base, args.head, args.output) == ("origin/main", "HEAD", "report.md")

    pull = next(step for step in steps if "dvc pull" in step.get("run", ""))
    assert pull["continue-on-error"] is True and "dvc remote list" in pull["run"]
    assert steps.index(pull) < runs.index(command)
    artifact = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert f"{files_dir(Path(args.output))}/" in artifact["with"]["path"].split()
    comment = next(step for step in steps if "cml comment update" in step.get("run", ""))
    assert comment["run"].endswith(f" {args.output}") and "REPO_TOKEN" in comment["env"]
    assert runs.index(command) < steps.index(comment)
