"""A checkout of an untrusted branch reaches nothing outside the project: each hostile commit below is
made in a real git repo, cloned afresh as a reviewer would check it out, and then a stage, the
review report and `predict --help` run there. A folder beside the project (the victim) holds files
and subfolders; after every command it is exactly as it was."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages import check_tree, download, pack, split, train
from tests.conftest import ROOT, Project, make_project, run_in_process
from tests.imagegen import write_class_folders
from transfer.core import params as params_module
from transfer.core.errors import UserError
from transfer.core.files import check_plain_tree
from transfer.core.paths import PUBLISH_DIR, RAW_DIR, RESUME_DIR, STORE_DIR, resume_state
from transfer.core.settings import mode_settings


def victim_folder(root: Path) -> Path:
    for name in ("a", "b", "b/c"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "kept.txt").write_text(f"{name} must stay")
    (root / "target.txt").write_text("must stay")
    return root


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under `root` with its content (None for a folder)."""
    return {path.relative_to(root).as_posix(): None if path.is_dir() else path.read_text()
            for path in sorted(root.rglob("*"))}


def make_link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def crafted_journal(checkout: Path, victim: Path) -> None:
    """A leftover publish of download as an attacker would write it: a journal naming outputs
    outside the project (relative and absolute), and staged files to put there."""
    stage = checkout / PUBLISH_DIR / "download"
    outputs = [f"../{victim.name}/target.txt", str(victim / "a" / "kept.txt")]
    (stage / "new").mkdir(parents=True)
    (stage / "journal.json").write_text(json.dumps({"outputs": outputs}))
    (stage / "new" / victim.name).mkdir()
    (stage / "new" / victim.name / "target.txt").write_text("overwritten by the pull request")


# (what the pull request commits, whether the stage then refuses with one line naming the link)
HOSTILE = {
    "the staging folder a link outside": (lambda co, v: make_link(co / PUBLISH_DIR, str(v)), PUBLISH_DIR),
    "a stage's staging folder a link outside":
        (lambda co, v: [make_link(co / PUBLISH_DIR / name, f"../../{v.name}/{sub}")
                        for name, sub in (("download", "a"), ("compare", "b"), ("report", "b/c"))], None),
    "a journal naming paths outside": (crafted_journal, None),
    "an output's folder a link outside": (lambda co, v: make_link(co / RAW_DIR.parent, f"../{v.name}"),
                                          RAW_DIR.parent),
    "train's scratch folder a link outside": (lambda co, v: make_link(co / RESUME_DIR, f"../{v.name}"), RESUME_DIR),
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Project:
    """The project as main has it: a tiny local dataset, committed."""
    root = tmp_path_factory.mktemp("upstream")
    data = root / "data source"
    write_class_folders(data / "train", {"ants": 3, "bees": 3})
    write_class_folders(data / "val", {"ants": 2, "bees": 2}, seed=1)
    return make_project(root / "project", data, modes=["frozen"])


def hostile_checkout(upstream: Project, tmp_path: Path, commit_hostile) -> tuple[Project, Path]:
    """A fresh clone of a branch whose last commit adds the hostile files (git add -f: .publish/ and
    .resume/ are ignored, which a pull request does not have to respect)."""
    victim = victim_folder(tmp_path / "victim")
    branch = tmp_path / "branch"
    subprocess.run(["git", "clone", "-q", str(upstream.path), str(branch)], check=True)
    commit_hostile(branch, victim)
    for command in (["add", "-A", "-f"], ["-c", "user.email=pr@example.com", "-c", "user.name=pr",
                                          "commit", "-q", "-m", "hostile"]):
        subprocess.run(["git", *command], cwd=branch, check=True)
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(branch), str(checkout)], check=True)
    return Project(checkout), victim


@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_a_hostile_checkout_leaves_what_is_outside_it_alone(hostile, upstream, tmp_path):
    commit_hostile, refused_link = HOSTILE[hostile]
    checkout, victim = hostile_checkout(upstream, tmp_path, commit_hostile)
    before = snapshot(victim)

    helped = checkout.run(sys.executable, "-m", "stages.predict", "--help")
    assert "usage" in helped.stdout
    assert snapshot(victim) == before, "predict --help"

    checkout.run(sys.executable, "-m", "stages.report", "HEAD~1", "HEAD", check=False)
    assert snapshot(victim) == before, "report"

    stage = ["train", "frozen"] if refused_link == RESUME_DIR else ["download"]
    ran = checkout.stage(*stage, check=False)
    assert snapshot(victim) == before, " ".join(stage)
    if refused_link is None:
        assert ran.returncode == 0, ran.stderr
        assert not os.path.lexists(checkout.path / PUBLISH_DIR / "download")  # what was planted there is gone
        assert (checkout.path / RAW_DIR / "train").is_dir()
    else:
        assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr
        assert ran.stderr.strip().splitlines()[-1] == (
            f"{stage[0]}: error: {refused_link}: a symbolic link where the pipeline writes (it could lead "
            "outside the project); remove it and run again")


@pytest.fixture(scope="module")
def packed(upstream) -> Path:
    """upstream's data/ after download, split and pack (run in this process once): copied into a
    checkout, it lets train get as far as it would on a real one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(upstream.path)
        assert [run_in_process(stage.main) for stage in (download, split, pack)] == [0, 0, 0]
    return upstream.path / STORE_DIR.parent


# A link deep in train's scratch folder: DVCLive empties dvclive/plots/{metrics,images} when it starts.
DEEP_LINKS = {".resume/frozen/dvclive/plots": "../../../../{victim}/b",
              ".resume/frozen/dvclive/plots/metrics": "../../../../../{victim}/b/c"}


@pytest.mark.parametrize("link", sorted(DEEP_LINKS))
def test_train_refuses_a_link_anywhere_in_its_scratch_folder(link, upstream, packed, tmp_path, monkeypatch, capsys):
    checkout, victim = hostile_checkout(
        upstream, tmp_path, lambda co, v: make_link(co / link, DEEP_LINKS[link].format(victim=v.name)))
    shutil.copytree(packed, checkout.path / packed.name, dirs_exist_ok=True)
    before = snapshot(victim)
    monkeypatch.chdir(checkout.path)
    assert run_in_process(lambda: train.main(["frozen"])) == 2
    assert snapshot(victim) == before
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"train: error: {link}: a symbolic link where the pipeline writes (it could lead outside the project); "
        "remove it and run again")


@pytest.mark.parametrize("make, where, words", [
    (lambda root: os.mkfifo(root / ".resume/frozen/dvclive/plots/fifo"), ".resume/frozen/dvclive/plots/fifo",
     "a FIFO where the pipeline writes (only files and folders belong there)"),
    (lambda root: (root / ".resume/frozen").write_text("x"), ".resume/frozen", "not a folder"),
    (lambda root: (root / ".resume").write_text("x"), ".resume", "not a folder"),
])
def test_what_git_cannot_commit_is_refused_in_the_scratch_folder_too(make, where, words, tmp_path, monkeypatch):
    """A FIFO (git stores none, a local process may leave one) or a file where a folder belongs."""
    if where.endswith("fifo"):
        (tmp_path / ".resume/frozen/dvclive/plots").mkdir(parents=True)
    elif where.endswith("frozen"):
        (tmp_path / ".resume").mkdir()
    make(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        check_plain_tree(RESUME_DIR / "frozen")
    assert str(err.value).startswith(f"{where}: {words}") and "\n" not in str(err.value)


def forged_state(checkout: Path, victim: Path) -> None:
    """A resume state as a branch could commit it, saying every epoch is done: it must never be resumed."""
    path = checkout / resume_state("frozen")
    path.parent.mkdir(parents=True)
    torch.save({"fingerprint": "computed in advance", "epoch": 99, "result": {"best_accuracy": 1.0}}, path)


def test_train_refuses_a_committed_resume_state(upstream, packed, tmp_path, monkeypatch, capsys):
    checkout, victim = hostile_checkout(upstream, tmp_path, forged_state)
    shutil.copytree(packed, checkout.path / packed.name, dirs_exist_ok=True)
    monkeypatch.chdir(checkout.path)
    assert run_in_process(lambda: train.main(["frozen"])) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train: error: .resume/frozen/state.pt: committed to git, where only a run of this working tree keeps "
        "its resumable state; remove it from the branch (git rm -r --cached) and run again")


def test_a_resume_state_is_keyed_to_the_working_tree_that_wrote_it(upstream, packed, tmp_path, monkeypatch):
    """Two clones of one commit, same settings, split and code: each its own fingerprint, every time the
    same, so a state computed elsewhere (or placed by a download) never passes for this tree's own."""
    settings = mode_settings(params_module.load(ROOT / "params.yaml"), "frozen")
    prints = []
    for name in ("one", "two"):
        checkout = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(upstream.path), str(checkout)], check=True)
        shutil.copytree(packed / "split", checkout / packed.name / "split")
        monkeypatch.chdir(checkout)
        prints.append([train.fingerprint(settings) for _ in range(2)])
    assert prints[0][0] == prints[0][1] and prints[1][0] == prints[1][1]
    assert prints[0][0] != prints[1][0]


# ---------------------------------------------------------------------------------------------- before DVC runs

GUARDED_REPRO = "python -m stages.check_tree && dvc repro"  # the README's pipeline command


def committed_file(path: str, text: str = "x"):
    def commit(checkout: Path, victim: Path) -> None:
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text(text.format(victim=victim))
    return commit


LINKED = "a symbolic link where the pipeline writes (it could lead outside the project); remove it and run again"
COMMITTED = "committed to git, where only DVC or a run of the pipeline writes"
# (what the branch commits, the start of the one line that refuses it)
GUARDED = {
    "data": (lambda co, v: make_link(co / "data", f"../{v.name}"), f"data: {LINKED}"),
    "metrics": (lambda co, v: make_link(co / "metrics", f"../{v.name}"), f"metrics: {LINKED}"),
    "models/modes": (lambda co, v: make_link(co / "models/modes", f"../../{v.name}/a"), f"models/modes: {LINKED}"),
    "a plotted file": (lambda co, v: make_link(co / "plots/predictions/frozen.csv", f"../../../{v.name}/target.txt"),
                       f"plots/predictions/frozen.csv: {LINKED}"),
    "deep in .resume": (lambda co, v: make_link(co / ".resume/frozen/dvclive/plots", f"../../../../{v.name}/b"),
                        f".resume/frozen/dvclive/plots: {LINKED}"),
    "DVC's cache": (lambda co, v: make_link(co / ".dvc/cache", f"../../{v.name}"), f".dvc/cache: {LINKED}"),
    "DVC's local config": (committed_file(".dvc/config.local", "[cache]\n    dir = {victim}\n"),
                           f".dvc/config.local: {COMMITTED}"),
    "a cached output's file": (committed_file("data/raw/train/ants/x.jpg"), f"data/raw/train/ants/x.jpg: {COMMITTED}"),
    "an ignored file": (committed_file("report_files/x.png"), "report_files/x.png: committed to git although"),
}


@pytest.mark.parametrize("hostile", sorted(GUARDED))
def test_the_tree_check_refuses_what_dvc_would_follow_or_trust(hostile, upstream, tmp_path, monkeypatch, capsys):
    commit_hostile, words = GUARDED[hostile]
    checkout, victim = hostile_checkout(upstream, tmp_path, commit_hostile)
    monkeypatch.chdir(checkout.path)
    assert run_in_process(check_tree.main) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"check_tree: error: {words}"), line


def test_readme_and_ci_check_the_tree_before_dvc_runs():
    readme = (ROOT / "README.md").read_text()
    assert GUARDED_REPRO in readme.split("```")[1].splitlines()[1]
    workflow = (ROOT / ".github/workflows/report.yml").read_text()
    assert 0 <= workflow.index("python -m stages.check_tree") < workflow.index("dvc pull")


def test_dvc_repro_as_documented_never_deletes_through_a_link(upstream, tmp_path):
    """Plain `dvc repro` deletes data/raw through the link before download can refuse it."""
    def commit(checkout: Path, victim: Path) -> None:
        make_link(checkout / "data", f"../{victim.name}")
        (victim / "raw").mkdir()
        (victim / "raw" / "kept.txt").write_text("raw must stay")
    checkout, victim = hostile_checkout(upstream, tmp_path, commit)
    before = snapshot(victim)
    ran = checkout.run("bash", "-c", GUARDED_REPRO, check=False)
    assert snapshot(victim) == before
    assert ran.returncode == 2 and ran.stderr.strip().splitlines() == [f"check_tree: error: data: {LINKED}"]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Project:
    """A git + DVC repo whose one stage's output, data/raw, is in the cache and pushed to a local remote
    (DVC's Python API: the CLI's start-up, several times over, is most of the time)."""
    from dvc.repo import Repo

    project = Project(tmp_path_factory.mktemp("pushed") / "repo")
    project.path.mkdir()
    project.git("init", "-q")
    Repo.init(str(project.path))
    (project.path / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: mkdir -p data/raw && echo made > data/raw/made.txt\n    outs:\n      - data/raw\n")
    with (project.path / ".dvc/config").open("a") as config:
        config.write(f"[core]\n    remote = store\n['remote \"store\"']\n    url = {project.path.parent / 'remote'}\n")
    with pytest.MonkeyPatch.context() as patch, Repo(str(project.path)) as repo:
        patch.chdir(project.path)  # DVC's API reads the stages of the current folder
        repo.reproduce()
        repo.push()
    project.git("add", "-A")
    project.git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "made")
    return project


@pytest.mark.parametrize("dvc_command", ["pull", "checkout"])
def test_dvc_pull_and_checkout_as_guarded_never_write_through_a_link(dvc_command, pushed, tmp_path, monkeypatch):
    """DVC writes a pulled or checked-out output through a link on its way (treeverse/dvc#11101)."""
    def commit(checkout: Path, victim: Path) -> None:
        shutil.rmtree(checkout / "data")
        make_link(checkout / "data", f"../{victim.name}")
    checkout, victim = hostile_checkout(pushed, tmp_path, commit)
    if dvc_command == "checkout":
        from dvc.repo import Repo

        monkeypatch.chdir(checkout.path)
        with Repo(str(checkout.path)) as repo:
            repo.fetch()  # the cache only: inside .dvc/
    before = snapshot(victim)
    ran = checkout.run("bash", "-c", f"python -m stages.check_tree && dvc {dvc_command}", check=False,
                       env={"PYTHONPATH": str(ROOT)})
    assert snapshot(victim) == before
    assert ran.returncode == 2 and ran.stderr.strip().splitlines() == [f"check_tree: error: data: {LINKED}"]



@pytest.mark.parametrize("foreign", [None, "legacy", "byteorder"])
def test_a_resume_state_torch_would_read_whole_is_never_loaded(tmp_path, foreign):
    """A state that torch.load would read whole (its older format; another byte order, swapped as it
    loads) is skipped on its format alone, though its fingerprint matches; as torch.save writes it, it resumes."""
    import zipfile

    from transfer.training.loop import ResumeState

    path = tmp_path / "state.pt"
    torch.save({"fingerprint": "f", "epoch": 1, "model": {"w": torch.zeros(4)}}, path,
               _use_new_zipfile_serialization=foreign != "legacy")
    if foreign == "byteorder":
        native = path.with_suffix(".native")
        path.rename(native)
        with zipfile.ZipFile(native) as source, zipfile.ZipFile(path, "w") as target:
            for info in source.infolist():
                swapped = info.filename.endswith("/byteorder")
                target.writestr(info, b"big" if swapped else source.read(info))
    state = ResumeState(path, "f").load()
    assert (state is None) == (foreign is not None)
