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

from stages import download, pack, split, train
from tests.conftest import Project, make_project, run_in_process
from tests.imagegen import write_class_folders
from transfer.core.errors import UserError
from transfer.core.files import check_plain_tree
from transfer.core.paths import PUBLISH_DIR, RAW_DIR, RESUME_DIR, STORE_DIR, resume_state


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
    prints = []
    for name in ("one", "two"):
        checkout = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(upstream.path), str(checkout)], check=True)
        shutil.copytree(packed / "split", checkout / packed.name / "split")
        monkeypatch.chdir(checkout)
        prints.append([train.fingerprint({"mode": "frozen"}) for _ in range(2)])
    assert prints[0][0] == prints[0][1] and prints[1][0] == prints[1][1]
    assert prints[0][0] != prints[1][0]
