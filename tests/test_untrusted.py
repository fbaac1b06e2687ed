"""A checkout of an untrusted branch never reaches outside the project: no user-given value reaches git
or dvc as an option, a local dataset's links out of it are neither copied nor read, archives keep their
members inside, and the pull-request report refuses what DVC cannot read, bad values and links where it
writes, and stays within what a pull-request comment holds."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from stages import download, report
from stages.report import MAX_CHARS, files_dir
from tests.conftest import ROOT, Project, commit_tagged, copy_code, env_with_venv, init_repo, run_in_process
from tests.imagegen import tree_bytes, write_class_folders
from tests.test_report import run_report
from transfer.core import params
from transfer.core.errors import UserError
from transfer.core.paths import PARAMS_FILE, RAW_DIR, RAW_SKIPPED
from transfer.data import archives
from transfer.review.dvc_diff import WORKSPACE, check_revision

SCRIPT = ROOT / "scripts" / "exp_on_machine.sh"
SECRET = b"outside the dataset: never copied, never read\n"


def one_error_line(proc: subprocess.CompletedProcess, stage: str) -> str:
    """The single `<stage>: error: ...` line a user error gives (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"{stage}: error: "), line
    return line


# ---------------------------------------------------------------------------------------------- options

def test_exp_on_machine_passes_the_url_to_git_clone_as_a_url(tmp_path):
    """git clone --upload-pack=<command> <repo> runs the command; after `--` it is just a missing repo."""
    origin = tmp_path / "origin"
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    subprocess.run(["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    marker, work = tmp_path / "marker", tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(["bash", str(SCRIPT), f"--upload-pack=touch {marker};", f"file://{origin}", "exp"],
                          cwd=work, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and not marker.exists(), proc.stderr
    assert list(work.iterdir()) == []


def test_exp_on_machine_refuses_a_revision_that_reads_as_an_option(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "file:///nowhere", str(tmp_path / "clone"), "exp"], cwd=tmp_path,
                          env={**env_with_venv(), "EXP_REV": "--output=x"}, capture_output=True, text=True)
    assert proc.returncode == 2 and "'--output=x' starts with '-'" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- local datasets

@pytest.fixture
def hostile_dataset(tmp_path: Path) -> tuple[Project, Path, Path]:
    """(a project folder to run download in, a dataset with links out of it, the folder they lead to):
    a link to an outside folder, to an outside file, and to the project itself, beside one link that
    stays inside the dataset."""
    project = Project(tmp_path / "work")
    copy_code(project.path)
    shutil.copy2(ROOT / PARAMS_FILE, project.path / PARAMS_FILE)
    dataset, outside = tmp_path / "insects", tmp_path / "outside"
    write_class_folders(dataset / "train", {"ants": 2, "bees": 2})
    write_class_folders(dataset / "val", {"ants": 2, "bees": 2}, seed=1)
    (outside / "deeper").mkdir(parents=True)
    (outside / "deeper" / "secret.txt").write_bytes(SECRET)
    (dataset / "train" / "ants" / "etc").symlink_to(outside)
    (dataset / "train" / "bees" / "secret.jpg").symlink_to(outside / "deeper" / "secret.txt")
    (dataset / "val" / "project").symlink_to(project.path)
    (dataset / "val" / "bees" / "alias.jpg").symlink_to("../ants/ants_000.jpg")
    project.set_params(data={"url": str(dataset)})
    return project, dataset, outside


LINKS_OUT = {"train/ants/etc", "train/bees/secret.jpg", "val/project"}


def test_download_copies_no_link_out_of_a_local_dataset_and_lists_them(hostile_dataset, monkeypatch, capsys):
    project, dataset, outside = hostile_dataset
    monkeypatch.chdir(project.path)
    assert run_in_process(download.main) == 0
    err = capsys.readouterr().err
    copied = tree_bytes(project.path / RAW_DIR)
    skipped = json.loads(copied.pop(RAW_SKIPPED.name))
    assert {item["path"] for item in skipped} == LINKS_OUT, skipped
    assert all("outside the dataset folder" in item["reason"] for item in skipped), skipped
    assert all(f"warning: skipped {dataset}/{path}: link to " in err for path in LINKS_OUT), err
    assert SECRET not in copied.values() and not any(path.split("/")[-1] in ("etc", "project") for path in copied)
    assert copied["val/bees/alias.jpg"] == copied["val/ants/ants_000.jpg"]  # a link inside is still a copy
    assert len(copied) == 9


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd"])
def test_unpack_refuses_a_zip_link_leading_outside(target, tmp_path):
    """Zip links (Info-ZIP: the mode's link bits, the target as data); tar links and `..` or absolute
    member names are tested in tests/test_download.py."""
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/ok.txt", b"ok")
        link = zipfile.ZipInfo("d/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, target)
    with pytest.raises(UserError, match="links.zip: link 'd/link' points outside the archive"):
        archives.unpack(archive, tmp_path / "raw", 1, "links.zip")
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------------------------------------- the report

DVC_YAML = """\
stages:
  evaluate:
    cmd: echo evaluate
    params: [lr]
    metrics:
      - metrics/m.json:
          cache: false
    plots:
      - plots/curve.csv:
          cache: false
          x: epoch
          y: acc
"""


@pytest.fixture(scope="module")
def hostile_revisions(tmp_path_factory) -> Project:
    """A git + DVC repo of hand-written files, no training: tag `base`, and tags branching from it that
    a hostile branch could hold: `broken` (dvc.yaml unreadable), `huge` (a metrics file of many keys),
    `nan` (a word in a plotted CSV), `linked` (report_files and pr committed as links out of the repo)."""
    project = init_repo(tmp_path_factory.mktemp("untrusted") / "repo")
    files = {"dvc.yaml": DVC_YAML, "params.yaml": "lr: 0.1\n", "metrics/m.json": '{"accuracy": 0.5}\n',
             "plots/curve.csv": "epoch,acc\n1,0.5\n2,0.6\n"}
    commit_tagged(project, "base", files)
    commit_tagged(project, "broken", {"dvc.yaml": "stages: [evaluate\n", "params.yaml": "lr: 0.2\n"})
    many = {"accuracy": 0.5, **{f"metric_number_{i:05d}_with_a_long_name": i for i in range(3000)}}
    commit_tagged(project, "huge", {"metrics/m.json": json.dumps(many)})
    commit_tagged(project, "nan", {"plots/curve.csv": "epoch,acc\n1,0.5\n2,oops\n"})
    project.git("checkout", "-q", "base")
    (project.path / "report_files").symlink_to("../outside")
    (project.path / "pr").symlink_to("../outside")
    project.git("add", "report_files", "pr")
    project.git("commit", "-q", "-m", "linked")
    project.git("tag", "linked")
    project.git("checkout", "-q", "base")
    return project


def test_report_refuses_a_revision_that_reads_as_an_option(hostile_revisions, tmp_path):
    marker, out = tmp_path / "marker", tmp_path / "report.md"
    proc = run_report(hostile_revisions.path, "-o", str(out), "--", f"--output={marker}", "base")
    assert "starts with '-'" in one_error_line(proc, "report")
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("rev, words", [("broken", "broken: DVC cannot read its params"),
                                        ("nan", "plots/curve.csv: at refs/tags/nan: epoch or acc is not a number")])
def test_report_of_a_revision_dvc_cannot_read_or_a_bad_value_is_one_line(hostile_revisions, tmp_path, rev, words):
    """DVC warns, exits 0 and diffs an unreadable dvc.yaml as no params, metrics or plots at all."""
    out = tmp_path / "report.md"
    proc = run_report(hostile_revisions.path, "base", rev, "-o", str(out))
    assert words in one_error_line(proc, "report")
    assert not out.exists() and not files_dir(out).exists()


def test_a_huge_report_is_cut_to_what_a_pull_request_comment_holds(hostile_revisions, tmp_path):
    out = tmp_path / "report.md"
    proc = run_report(hostile_revisions.path, "base", "huge", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "3000 metrics changed" in text.splitlines()[0]
    assert MAX_CHARS - 1000 < len(text) <= MAX_CHARS
    assert re.match(r"\*\*Cut here\*\*: [\d,]+ characters are more than a pull-request comment holds",
                    text.splitlines()[-1]), text.splitlines()[-1]


@pytest.mark.parametrize("output", ["report.md", "pr/report.md"])
def test_report_writes_through_no_committed_link(hostile_revisions, tmp_path, output):
    """report_files/ (beside report.md) or the report's folder committed as a link out of the checkout."""
    checkout = tmp_path / "checkout"
    hostile_revisions.git("worktree", "add", "-q", "--detach", str(checkout), "linked")
    outside = tmp_path / "outside"
    outside.mkdir()
    proc = run_report(checkout, "base", "HEAD", "-o", output)
    assert "is a link" in one_error_line(proc, "report")
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in checkout.iterdir()) == sorted([".git", ".dvc", ".dvcignore", "dvc.yaml",
                                                                "params.yaml", "metrics", "plots", "pr",
                                                                "report_files"])


def test_report_copies_no_workspace_plot_that_links_out_of_the_project(hostile_revisions, tmp_path):
    checkout = tmp_path / "checkout"
    hostile_revisions.git("worktree", "add", "-q", "--detach", str(checkout), "base")
    secret = tmp_path / "secret.csv"
    secret.write_text("epoch,acc\n1,0.25\n")
    (checkout / "plots" / "curve.csv").unlink()
    (checkout / "plots" / "curve.csv").symlink_to(secret)
    proc = run_report(checkout, "base", "-o", str(tmp_path / "report.md"))
    assert "plots/curve.csv: a link out of the project" in one_error_line(proc, "report")
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("option", ["-o", "--json"])
def test_report_refuses_to_write_over_a_special_file(hostile_revisions, tmp_path, monkeypatch, capsys, option):
    """A FIFO (or, as root, /dev/null) named as the report or its JSON would be replaced by a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.chdir(hostile_revisions.path)
    argv = ["base", "base", "-o", str(tmp_path / "report.md"), option, str(fifo)]
    assert run_in_process(lambda: report.main(argv)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"report: error: {fifo}: is a FIFO; the report writes a new or regular file, through no link, "
                    "into folders (name another -o)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_report_reads_each_revision_once_as_git_and_dvc_both_see_it(hostile_revisions, monkeypatch, capsys):
    """A tag named `workspace`: git reads the tag, DVC the working tree; refused. Others resolve to one ref."""
    monkeypatch.chdir(hostile_revisions.path)
    hostile_revisions.git("tag", "-f", WORKSPACE, "nan")
    assert run_in_process(lambda: report.main([WORKSPACE, "base"])) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"report: error: '{WORKSPACE}': DVC reads this name as the working tree, not a revision")
    commit = hostile_revisions.git("rev-parse", "base^{commit}").stdout.strip()
    assert [check_revision(rev) for rev in ("base", commit, "base~0")] == ["refs/tags/base", commit, commit]


# ---------------------------------------------------------------------------------------------- params.yaml

@pytest.mark.parametrize("old, new", [("  seed: 0\n", "  seed: 017\n"), ("  lr: 0.01\n", "  lr: 1e-05\n")])
def test_params_read_as_dvc_reads_them(old, new, tmp_path):
    """What a stage runs is what dvc.lock records: YAML 1.2, DVC's own loader (017 is 17, not octal 15)."""
    from dvc.utils.serialize import parse_yaml

    text = (ROOT / PARAMS_FILE).read_text()
    assert old in text
    edited = text.replace(old, new, 1)
    (tmp_path / "params.yaml").write_text(edited)
    key = new.split(":")[0].strip()
    assert params.load(tmp_path / "params.yaml")["train"][key] == parse_yaml(edited, "p")["train"][key]


@pytest.mark.parametrize("write, words", [
    (lambda p: p.write_text("mode: auto\nmode: frozen\n"), 'not valid YAML at line 2 (found duplicate key "mode"'),
    (lambda p: p.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join([f'*{j}'] * 10)}]\n" for j, k in zip("abcdef", "bcdefg")) + "mode: *g\n"),
     "expand it past 100,000 values"),
    (lambda p: p.write_bytes(b"mode: \xff\n"), "not UTF-8 text (byte 6)"),
    (lambda p: p.mkdir(), "cannot be read (Is a directory)"),
    (lambda p: p.write_text((ROOT / PARAMS_FILE).read_text().replace("keep_bn_stats: false", "keep_bn_stats: yes")),
     "train.keep_bn_stats: must be true or false, got 'yes'"),
])
def test_params_dvc_would_read_otherwise_or_not_at_all_are_one_line(write, words, tmp_path):
    write(tmp_path / "params.yaml")
    with pytest.raises(UserError) as err:
        params.load(tmp_path / "params.yaml")
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
