"""stages/report.py: the pull-request report's errors, its review of accuracy (real or noise) on git revisions
of hand-written predictions, and its GitHub workflow's structure. The report between two trained revisions
is tested on test_pipeline's five-mode project (test_report_* there)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.report import files_dir, parse_args
from tests.conftest import ROOT, Project, commit_tagged, env_with_venv, init_repo
from transfer.evaluation.stats import wilson_interval
from transfer.review.seeds import seeds_text, summarize, t_quantile

WORKFLOW = ROOT / ".github" / "workflows" / "report.yml"
OLD_LR, NEW_LR = 0.1, 0.001


def git_json(project: Project, rev: str, path: str) -> dict:
    return json.loads(project.git("show", f"{rev}:{path}").stdout)


def run_report(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**env_with_venv(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_revision_is_one_line_exit_2_and_writes_nothing(review_repo, tmp_path):
    out = tmp_path / "report.md"
    out.write_text("the previous report\n")
    proc = run_report(review_repo.path, "base", "no-such-branch", "-o", str(out))
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


# ---------------------------------------------------------------------------------------------- the review

REVIEW_DVC_YAML = """\
stages:
  evaluate:
    cmd: echo evaluate
    params: [lr]
    metrics:
      - metrics/frozen.json:
          cache: false
"""
PATHS = [f"val/{'ants' if i % 2 else 'bees'}/img_{i:03d}.jpg" for i in range(200)]


def predictions(rights: list[bool], paths: list[str] = PATHS, reverse: bool = False) -> str:
    """A predictions CSV: one row per image, right where `rights` says (rows reversed if `reverse`:
    the review pairs images by path, not by row)."""
    rows = [f"{path},ants,{'ants' if right else 'bees'},0.9" for path, right in zip(paths, rights)]
    return "path,actual,predicted,confidence\n" + "\n".join(rows[::-1] if reverse else rows) + "\n"


def flipped(rights: list[bool], to_right: int, to_wrong: int) -> list[bool]:
    """`rights` with the first `to_right` wrong images made right and the first `to_wrong` right ones wrong."""
    wrong = [i for i, right in enumerate(rights) if not right][:to_right]
    right = [i for i, r in enumerate(rights) if r][:to_wrong]
    return [not r if i in wrong or i in right else r for i, r in enumerate(rights)]


def accuracy_of(n_right: int, n: int) -> list[bool]:
    return [i < n_right for i in range(n)]


FROZEN, PARTIAL, FINETUNE = accuracy_of(146, 153), accuracy_of(80, 100), accuracy_of(60, 80)


@pytest.fixture(scope="module")
def review_repo(tmp_path_factory) -> Project:
    """A git + DVC repo of hand-written predictions, no training. `base`: frozen 146/153, partial 80/100,
    finetune 60/80, scratch 5/10. `flips` (from base): frozen flips 1 image each way, partial 12 to right,
    finetune 6 to right (rows reversed), scratch removed, newmode added, lr changed. `split` (from base):
    frozen on as many other images (a new split)."""
    project = init_repo(tmp_path_factory.mktemp("review") / "repo")
    csv = "plots/predictions/{}.csv".format
    commit_tagged(project, "base", {"dvc.yaml": REVIEW_DVC_YAML, "params.yaml": "lr: 0.1\n",
                             "metrics/frozen.json": '{"accuracy": 0.954}\n', csv("frozen"): predictions(FROZEN),
                             csv("partial"): predictions(PARTIAL), csv("finetune"): predictions(FINETUNE),
                             csv("scratch"): predictions(accuracy_of(5, 10))})
    commit_tagged(project, "flips", {"params.yaml": "lr: 0.2\n", csv("frozen"): predictions(flipped(FROZEN, 1, 1)),
                              csv("partial"): predictions(flipped(PARTIAL, 12, 0)),
                              csv("finetune"): predictions(flipped(FINETUNE, 6, 0), reverse=True),
                              csv("newmode"): predictions(accuracy_of(7, 10))})
    project.git("rm", "-q", csv("scratch"))
    project.git("commit", "-q", "--amend", "--no-edit")
    project.git("tag", "-f", "flips")
    new_split = predictions(accuracy_of(150, 153), [f"new/{i}.jpg" for i in range(153)])
    commit_tagged(project, "split", {csv("frozen"): new_split})
    project.git("checkout", "-q", "base")
    return project


def review_section(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines[2] == "## Accuracy: real or noise", lines[:4]  # right after the one-line summary
    return [line for line in text.split("## Accuracy: real or noise\n\n", 1)[1].split("\n## ", 1)[0].splitlines()
            if line]


def test_review_tests_each_changed_mode_paired_and_holm_corrected(review_repo, tmp_path):
    """Hand values: 1 flip each way: p = 1; 12 to right, 0 to wrong: p = 2/2^12; 6 to 0: p = 2/2^6 = 0.031,
    which Holm over the 3 modes tested makes 2 * 0.031 = 0.0625: noise."""
    out, data = tmp_path / "report.md", tmp_path / "review.json"
    proc = run_report(review_repo.path, "base", "flips", "-o", str(out), "--json", str(data))
    assert proc.returncode == 0, proc.stderr
    lines = review_section(out.read_text())
    assert lines[1:] == [
        "- finetune: 60/80 -> 66/80: 6 images flipped to right, 0 to wrong, p = 0.031 (Holm: p = 0.062): noise.",
        "- frozen: 146/153 -> 146/153: 1 image flipped to right, 1 to wrong, p = 1.0 (Holm: p = 1.0): noise.",
        "- newmode: new in head, 7/10 right.",
        "- partial: 80/100 -> 92/100: 12 images flipped to right, 0 to wrong, p < 0.001 (Holm: p = 0.0015): real.",
        "- scratch: removed in head (was 5/10 right)."], lines
    assert "Holm-corrected across the 3 modes tested" in lines[0]
    modes = json.loads(data.read_text())["modes"]
    hand = {"frozen": (1, 1, 1.0, 1.0, False), "partial": (12, 0, 2 / 2**12, 3 * 2 / 2**12, True),
            "finetune": (6, 0, 2 / 2**6, 2 * 2 / 2**6, False)}
    for mode, (right, wrong, p, p_holm, real) in hand.items():
        got = modes[mode]
        assert (got["flipped_to_right"], got["flipped_to_wrong"], got["real"]) == (right, wrong, real), (mode, got)
        assert got["p"] == pytest.approx(p, rel=1e-12) and got["p_holm"] == pytest.approx(p_holm, rel=1e-12)
    assert modes["newmode"] == {"status": "new", "head": {"correct": 7, "images": 10, "interval": pytest.approx(
        list(wilson_interval(7, 10)))}}
    assert modes["scratch"]["status"] == "removed" and set(modes) == {*hand, "newmode", "scratch"}


def test_review_of_a_new_split_is_not_paired_and_gives_both_intervals(review_repo, tmp_path):
    out, data = tmp_path / "report.md", tmp_path / "review.json"
    proc = run_report(review_repo.path, "base", "split", "-o", str(out), "--json", str(data))
    assert proc.returncode == 0, proc.stderr
    (old_low, old_high), (new_low, new_high) = wilson_interval(146, 153), wilson_interval(150, 153)
    assert review_section(out.read_text())[1:] == [
        f"- frozen: 146/153 -> 150/153: not paired (the reporting images differ: a new split), so not tested; "
        f"95% Wilson intervals [{old_low:.3f}, {old_high:.3f}] -> [{new_low:.3f}, {new_high:.3f}]."]
    frozen = json.loads(data.read_text())["modes"]["frozen"]
    assert frozen["status"] == "not paired" and "p" not in frozen and "real" not in frozen
    assert frozen["base"]["interval"] == pytest.approx([old_low, old_high])
    assert frozen["head"]["interval"] == pytest.approx([new_low, new_high])


def test_review_reads_the_workspace_and_refuses_a_linked_predictions_file(review_repo, tmp_path):
    checkout = tmp_path / "checkout"
    review_repo.git("worktree", "add", "-q", "--detach", str(checkout), "base")
    (checkout / "plots/predictions/partial.csv").write_text(predictions(flipped(PARTIAL, 12, 0)))
    out, data = tmp_path / "report.md", tmp_path / "review.json"
    proc = run_report(checkout, "base", "-o", str(out), "--json", str(data))
    assert proc.returncode == 0, proc.stderr
    assert review_section(out.read_text())[1:] == [
        "- partial: 80/100 -> 92/100: 12 images flipped to right, 0 to wrong, p < 0.001 (Holm: p < 0.001): real."]
    assert json.loads(data.read_text())["head"] == "workspace"
    secret = tmp_path / "secret.csv"
    secret.write_text(predictions(PARTIAL))
    (checkout / "plots/predictions/partial.csv").unlink()
    (checkout / "plots/predictions/partial.csv").symlink_to(secret)
    proc = run_report(checkout, "base", "-o", str(tmp_path / "again.md"))
    assert proc.returncode == 2 and "partial.csv: a link or not a file" in proc.stderr, proc.stderr
    assert not (tmp_path / "again.md").exists()


# ---------------------------------------------------------------------------------------------- --verdict

IMAGES = [f"val/{'ants' if i % 2 else 'bees'}/img_{i:03d}.jpg" for i in range(100)]
TWO_MODES = "modes:\n  frozen: {}\n  finetune: {}\n"


def candidate_files(mode: str, rights: list[bool], arch: str, seconds: float, latency: float,
                    paths: list[str] = IMAGES) -> dict[str, str]:
    """What evaluate@<mode> commits: its predictions, metrics (train seconds, latency) and details (arch)."""
    return {f"plots/predictions/{mode}.csv": predictions(rights, paths),
            f"metrics/{mode}.json": json.dumps({"accuracy": sum(rights) / len(rights), "train_seconds": seconds,
                                                "latency_ms": latency}),
            f"results/details/{mode}.json": json.dumps({"mode": mode, "arch": arch})}


@pytest.fixture(scope="module")
def verdict_repo(tmp_path_factory) -> Project:
    """Hand-written candidates on 100 images, no training. `base` (lite0): frozen right on the first 80
    (10 s to train, 5 ms per image), finetune on the first 90 (40 s, 5 ms). `lite1` (from base): frozen on
    the first 92 (20 s, 9 ms), finetune's files removed though params.yaml names it. `lite0-lr` (from
    base): frozen on the first 90 (5 s, 7 ms), finetune removed. `other` (from base): frozen on images
    whose 4th differs."""
    project = init_repo(tmp_path_factory.mktemp("verdict") / "repo")
    lite0 = "efficientnet_lite0"
    commit_tagged(project, "base", {"dvc.yaml": REVIEW_DVC_YAML, "params.yaml": TWO_MODES,
                                    **candidate_files("frozen", accuracy_of(80, 100), lite0, 10, 5),
                                    **candidate_files("finetune", accuracy_of(90, 100), lite0, 40, 5)})
    finetune = ["plots/predictions/finetune.csv", "metrics/finetune.json", "results/details/finetune.json"]
    for tag, files in (("lite1", candidate_files("frozen", accuracy_of(92, 100), "efficientnet_lite1", 20, 9)),
                       ("lite0-lr", candidate_files("frozen", accuracy_of(90, 100), lite0, 5, 7))):
        commit_tagged(project, tag, files)
        project.git("rm", "-q", *finetune)
        project.git("commit", "-q", "--amend", "--no-edit")
        project.git("tag", "-f", tag)
    other = [*IMAGES[:3], "val/ants/another.jpg", *IMAGES[4:]]
    commit_tagged(project, "other", candidate_files("frozen", accuracy_of(80, 100), lite0, 10, 5, paths=other))
    project.git("checkout", "-q", "base")
    return project


def test_verdict_across_revisions_by_hand(verdict_repo, tmp_path):
    """Hand values: base:frozen against lite1:frozen: 12 images only lite1 gets right, p = 2/2^12, Holm x3;
    against base:finetune: 10, p = 2/2^10, Holm x2; finetune against lite1:frozen: 2, p = 2/2^2 = 0.5. So
    base:frozen is worse, beaten by lite1:frozen; the other two are tied, and as their backbones differ and
    each has a latency, the recommended is base:finetune (5 ms), not lite1:frozen (9 ms, though 20 s to
    train against 40 s). lite1's finetune has no predictions: left out, with a line."""
    data = tmp_path / "verdict.json"
    proc = run_report(verdict_repo.path, "--verdict", "base", "lite1", "--json", str(data))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[4:] == [
        "- Tied: lite1:frozen (92/100, 9 ms), base:finetune (90/100, 5 ms).",
        "- Recommended: base:finetune (efficientnet_lite0), 5 ms against 9 ms.",
        "- Worse: base:frozen (80/100), beaten by lite1:frozen (92/100), p = 0.0015 (Holm).",
        "- lite1:finetune: left out, no plots/predictions/finetune.csv there."], proc.stdout
    assert "3 candidates of base, lite1 on the same 100 images" in proc.stdout and "backbones differ" in proc.stdout
    result = json.loads(data.read_text())
    assert (result["cost"], result["tied"], result["recommended"]) == (
        "latency_ms", ["lite1:frozen", "base:finetune"], "base:finetune")
    [worse] = result["worse"]
    assert (worse["mode"], worse["beaten_by"]) == ("base:frozen", "lite1:frozen")
    assert worse["p_holm"] == pytest.approx(3 * 2 / 2**12, rel=1e-12)
    pairs = {(pair["a"], pair["b"]): pair["p"] for pair in result["pairs"]}
    assert pairs == pytest.approx({("base:finetune", "base:frozen"): 2 / 2**10,
                                   ("base:finetune", "lite1:frozen"): 0.5, ("base:frozen", "lite1:frozen"): 2 / 2**12})
    tags = {name: verdict_repo.git("rev-parse", f"{name}^{{commit}}").stdout.strip() for name in ("base", "lite1")}
    assert result["revisions"] == tags  # each name resolved once, to its commit
    assert result["accuracy"]["lite1:frozen"]["arch"] == "efficientnet_lite1"


def test_verdict_on_one_backbone_chooses_by_train_seconds(verdict_repo, tmp_path):
    """base:finetune and lite0-lr:frozen are both right on the first 90 images (p = 1), base:frozen beaten by
    both; one backbone, so the cheaper to train (5 s against 40 s) is recommended though it runs slower."""
    data = tmp_path / "verdict.json"
    proc = run_report(verdict_repo.path, "--verdict", "base", "lite0-lr", "--json", str(data))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(data.read_text())
    assert (result["cost"], result["tied"], result["recommended"]) == (
        "train_seconds", ["base:finetune", "lite0-lr:frozen"], "lite0-lr:frozen")
    assert "- Recommended: lite0-lr:frozen (efficientnet_lite0), 5 s against 40 s." in proc.stdout.splitlines()


def test_verdict_refuses_other_images_and_bad_names_in_one_line(verdict_repo, tmp_path):
    data = tmp_path / "verdict.json"
    proc = run_report(verdict_repo.path, "--verdict", "base", "other", "--json", str(data))
    assert proc.returncode == 2, proc
    assert proc.stderr.splitlines() == [
        "report: error: other:frozen: not on the images of base:finetune: row 4 of plots/predictions/frozen.csv "
        "is 'val/ants/another.jpg' there, 'val/ants/img_003.jpg' in base:finetune (100 against 100 images); "
        "a paired verdict needs the same reporting split"], proc.stderr
    assert not data.exists() and proc.stdout == ""
    for name, message in (("workspace", "DVC reads this name as the working tree"),
                          ("no-such", "no such git revision or finished DVC experiment")):
        proc = run_report(verdict_repo.path, "--verdict", "base", name)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------- --seeds

def exp_entry(name: str, seed: int, accuracies: dict[str, float], state: str = "success", lr: float = 0.1) -> dict:
    """One experiment as DVC 3.67's `dvc exp show --json` lists it under a baseline (captured from a real
    `dvc exp run --queue -S 'train.seed=range(0,3)'` + `dvc queue start`; a queued one has metrics {})."""
    rev = f"{abs(hash(name)):040x}"[:40]
    metrics = {} if state == "queued" else {f"metrics/{mode}.json": {"data": {"accuracy": value, "images": 100}}
                                            for mode, value in accuracies.items()}
    data = {"rev": rev, "timestamp": "2026-12-05T04:42:55",
            "params": {"params.yaml": {"data": {"train": {"seed": seed, "lr": lr}}}},
            "metrics": metrics, "deps": {"make.py": {"hash": "3d0bc921", "size": 307, "nfiles": None}},
            "outs": {}, "meta": {}}
    return {"revs": [{"rev": rev, "name": name, "data": data, "error": None, "experiments": None}],
            "executor": {"state": state, "name": "dvc-task", "local": {"root": None, "log": None, "pid": None,
                                                                      "returncode": 0, "task_id": rev}},
            "name": name}


def exp_document(experiments: list[dict]) -> list[dict]:
    baseline = exp_entry("main", 0, {"frozen": 0.5})["revs"][0]
    workspace = {**baseline, "rev": "workspace", "name": None, "data": {**baseline["data"], "rev": "workspace"}}
    return [workspace, {**baseline, "rev": "c0705f29ecb9b1129c35632c2a13eb7fc2ab1e53", "name": "main",
                        "experiments": experiments}]


def test_t_quantiles_match_the_table():
    for df, table in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-4), df


def test_seeds_mean_std_and_t_interval_by_hand():
    """frozen at seeds 0, 1, 2: 0.90, 0.91, 0.92: mean 0.91, std 0.01, interval 0.91 -/+ 4.3027 * 0.01 / sqrt(3);
    a queued run, a failed one, a repeated seed and a run with another lr are not seeds."""
    document = exp_document([
        exp_entry("queued", 7, {}, state="queued"), exp_entry("failed", 8, {"frozen": 0.1}, state="failed"),
        exp_entry("s2", 2, {"frozen": 0.92, "partial": 0.80}), exp_entry("s1", 1, {"frozen": 0.91, "partial": 0.80}),
        exp_entry("s0", 0, {"frozen": 0.90}), exp_entry("s0-again", 0, {"frozen": 0.2}),
        exp_entry("lr", 3, {"frozen": 0.3}, lr=0.5)])
    summary = summarize(document)
    frozen = summary["modes"]["frozen"]
    half = 4.302653 * 0.01 / 3 ** 0.5
    assert (frozen["seeds"], summary["seeds"], summary["not_finished"], summary["left_out"]) == (3, [0, 1, 2], 2, 2)
    assert (frozen["mean"], frozen["std"]) == (pytest.approx(0.91), pytest.approx(0.01))
    assert frozen["low"] == pytest.approx(0.91 - half, abs=1e-6)
    assert frozen["high"] == pytest.approx(0.91 + half, abs=1e-6)
    assert summary["modes"]["partial"] == {"seeds": 2, "mean": pytest.approx(0.8), "std": pytest.approx(0.0),
                                           "low": pytest.approx(0.8), "high": pytest.approx(0.8)}
    lines = seeds_text(summary).splitlines()
    assert lines[1] == f"frozen: 3 seeds, mean accuracy 0.9100, std 0.0100, 95% interval of the mean " \
                       f"[{0.91 - half:.4f}, {0.91 + half:.4f}]", lines
    assert lines[0].startswith("Seeds 0, 1, 2: 5 finished experiments of c0705f2") and "2 queued, running" in lines[0]


def test_seeds_without_experiments_is_one_line():
    for document in ([], exp_document([]), exp_document([exp_entry("queued", 7, {}, state="queued")])):
        [line] = seeds_text(summarize(document)).splitlines()
        assert line.startswith("No finished experiments") and "dvc exp run --queue -S 'train.seed=range(0,3)'" in line


MAKE_PY = """\
import json, os, yaml
seed = yaml.safe_load(open('params.yaml'))['train']['seed']
for folder in ('metrics', 'plots/predictions', 'results/details'):
    os.makedirs(folder, exist_ok=True)
json.dump({'accuracy': 0.9 + seed / 100, 'train_seconds': 3 - seed}, open('metrics/frozen.json', 'w'))
rows = ''.join(f'{i}.jpg,a,{"a" if i < 5 + 2 * seed else "b"}\\n' for i in range(10))
open('plots/predictions/frozen.csv', 'w').write('path,actual,predicted\\n' + rows)
json.dump({'arch': 'tiny'}, open('results/details/frozen.json', 'w'))
"""
EXP_DVC_YAML = """\
stages:
  evaluate:
    cmd: {python} make.py
    deps: [make.py]
    params: [train.seed]
    metrics:
      - metrics/frozen.json:
          cache: false
    outs:
      - plots/predictions/frozen.csv:
          cache: false
      - results/details/frozen.json:
          cache: false
"""


def test_seeds_and_verdict_read_the_experiments_dvc_ran(tmp_path):
    """A real `dvc exp run -S train.seed=N` of a stage that writes metrics/frozen.json, its predictions
    (right on the first 5 + 2 * seed of 10 images) and details from the seed. --seeds: the seeds' spread;
    --verdict --all-experiments: HEAD and each experiment a candidate (at most 4 images apart of 10: all
    tied), the cheapest (3 - seed train seconds) recommended."""
    project = Project(tmp_path / "repo")
    project.path.mkdir()
    for args in (("init", "-q"), ("config", "user.email", "t@t"), ("config", "user.name", "t")):
        project.git(*args)
    project.dvc("init", "-q")
    (project.path / "params.yaml").write_text("train:\n  seed: 0\n")
    (project.path / "make.py").write_text(MAKE_PY)
    (project.path / "dvc.yaml").write_text(EXP_DVC_YAML.format(python=sys.executable))
    project.dvc("repro", "-q")
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "base")
    assert run_report(project.path, "--seeds").stdout.startswith("No finished experiments")
    for seed in range(3):
        project.dvc("exp", "run", "-q", "-n", f"s{seed}", "-S", f"train.seed={seed}")
    proc = run_report(project.path, "--seeds", "--json", str(tmp_path / "seeds.json"))
    assert proc.returncode == 0, proc.stderr
    frozen = json.loads((tmp_path / "seeds.json").read_text())["modes"]["frozen"]
    assert (frozen["seeds"], frozen["mean"], frozen["std"]) == (3, pytest.approx(0.91), pytest.approx(0.01))
    assert "frozen: 3 seeds, mean accuracy 0.9100, std 0.0100" in proc.stdout, proc.stdout

    proc = run_report(project.path, "--verdict", "--all-experiments", "--json", str(tmp_path / "verdict.json"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "verdict.json").read_text())
    seeds = {f"s{seed}:frozen": 5 + 2 * seed for seed in range(3)}
    assert {label: row["correct"] for label, row in result["accuracy"].items() if label in seeds} == seeds
    assert len(result["accuracy"]) == 4 and set(result["tied"]) == set(result["accuracy"]), result
    assert result["recommended"] == "s2:frozen" and result["cost"] == "train_seconds"
    exps = json.loads(project.dvc("exp", "show", "--json").stdout)[1]["experiments"]
    assert {exp["name"]: exp["revs"][0]["rev"] for exp in exps} == {
        name: commit for name, commit in result["revisions"].items() if name in ("s0", "s1", "s2")}
