"""Stage `source`: `dvc repro` notices a change to the files of a local data.url (folder or archive),
and only a change to them; a URL gives the same data/source.json (and dvc.lock) online and offline."""
from __future__ import annotations

import json
import os
import shutil
import time

from stages import source
from tests.conftest import make_project
from tests.imagegen import make_image, pack, write_class_folders
from transfer.core.paths import RAW_DIR, TRAIN_CSV


def train_rows(project) -> int:
    return len((project.path / TRAIN_CSV).read_text().splitlines()) - 1


def test_a_changed_local_folder_re_runs_download_and_nothing_else_does(tmp_path, tiny_dataset):
    """Adding an image to the folder data.url names re-runs download and split; a second repro, a
    touched file and a renamed-back file run neither."""
    project = make_project(tmp_path / "project", tiny_dataset, modes=["frozen"])
    first = project.dvc("repro", "split")
    assert project.ran_stages(first.stdout) == ["download", "split"], first.stdout
    assert "Running stage 'source'" in first.stdout
    assert train_rows(project) == 24
    assert project.ran_stages(project.dvc("repro", "split").stdout) == []

    os.utime(tiny_dataset / "train" / "ants" / "ants_000.jpg", (time.time() + 60,) * 2)  # same bytes
    assert project.ran_stages(project.dvc("repro", "split").stdout) == []

    make_image(1, 777).save(tiny_dataset / "train" / "bees" / "bees_new.jpg")
    grown = project.dvc("repro", "split")
    assert project.ran_stages(grown.stdout) == ["download", "split"], grown.stdout
    assert train_rows(project) == 25
    assert project.ran_stages(project.dvc("repro", "split").stdout) == []

    (tiny_dataset / "train" / "bees" / "bees_new.jpg").write_bytes(b"not an image any more")  # edited in place
    assert project.ran_stages(project.dvc("repro", "split").stdout) == ["download", "split"]
    assert train_rows(project) == 24


def test_a_changed_local_archive_re_runs_download(tmp_path, tiny_dataset):
    archive = pack(tiny_dataset, tmp_path / "tiny.zip")
    project = make_project(tmp_path / "project", archive, modes=["frozen"])
    assert project.ran_stages(project.dvc("repro", "download").stdout) == ["download"]
    assert project.ran_stages(project.dvc("repro", "download").stdout) == []
    make_image(0, 778).save(tiny_dataset / "train" / "ants" / "ants_new.jpg")
    pack(tiny_dataset, archive)
    assert project.ran_stages(project.dvc("repro", "download").stdout) == ["download"]
    assert (project.path / RAW_DIR / "tiny_data" / "train" / "ants" / "ants_new.jpg").is_file()


def test_the_same_bytes_elsewhere_give_the_same_record(tmp_path, monkeypatch):
    """The record is the data's, not the copy's: another folder with the same files (new inodes and
    mtimes) gives the same digest; one changed byte gives another. A URL's record is the URL alone,
    whatever DATASET_MIRROR says."""
    first, second = tmp_path / "a" / "photos", tmp_path / "b" / "photos"
    write_class_folders(first, {"cats": 2, "dogs": 2})
    shutil.copytree(first, second, copy_function=shutil.copyfile)
    digest = source.folder_digest(first, source.Hasher({}))
    assert digest == source.folder_digest(second, source.Hasher({})) and digest["files"] == 4
    data = bytearray((second / "dogs" / "dogs_001.jpg").read_bytes())
    data[-3] ^= 1
    (second / "dogs" / "dogs_001.jpg").write_bytes(bytes(data))
    assert source.folder_digest(second, source.Hasher({}))["sha256"] != digest["sha256"]
    url = "https://example.com/datasets/photos.zip"
    for mirror in (None, str(tmp_path / "a")):
        if mirror:
            monkeypatch.setenv("DATASET_MIRROR", mirror)
        assert source.source_record(url, source.Hasher({})) == {"url": url}


def test_a_file_is_hashed_again_only_when_its_size_mtime_or_inode_change(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    write_class_folders(folder, {"cats": 1, "dogs": 1})
    old = time.time() - 3600
    for path in folder.rglob("*.jpg"):
        os.utime(path, (old, old))
    hasher = source.Hasher({})
    digest = source.folder_digest(folder, hasher)
    assert len(hasher.seen) == 2
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    again = source.Hasher(json.loads(json.dumps(hasher.seen)))
    assert source.folder_digest(folder, again) == digest and opened == []
    cat = folder / "cats" / "cats_000.jpg"
    os.utime(cat, (old + 1, old + 1))  # touched: hashed again, same digest
    assert source.folder_digest(folder, source.Hasher(again.seen)) == digest and opened == [str(cat)]
