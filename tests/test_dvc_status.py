"""DVC itself notices a change to the files of a local dataset (data.watch names data.url's
folder or archive, and download depends on it), and only a change to them. (That a whole `dvc repro`
leaves `dvc status` up to date and a second runs nothing: tests/test_pipeline.py, promise 1.)"""
from __future__ import annotations

import os
import time

import yaml

from tests.conftest import make_project
from tests.imagegen import make_image, pack
from transfer.core.paths import RAW_DIR, TRAIN_CSV


def train_rows(project) -> int:
    return len((project.path / TRAIN_CSV).read_text().splitlines()) - 1


def test_a_changed_local_folder_re_runs_download_and_nothing_else_does(tmp_path, tiny_dataset):
    """Adding an image to the folder data.url names re-runs download and split; a second repro, a
    touched file and a renamed-back file run neither."""
    project = make_project(tmp_path / "project", tiny_dataset, modes=["frozen"])
    first = project.dvc("repro", "split")
    assert project.ran_stages(first.stdout) == ["download", "split"], first.stdout
    assert train_rows(project) == 24
    assert project.ran_stages(project.dvc("repro", "split").stdout) == []
    assert "download" not in project.dvc("status", "download", "split").stdout  # up to date

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


def test_a_local_url_not_watched_is_a_warning(tmp_path, tiny_dataset):
    """A local data.url that data.watch does not name would let its files change unseen: download
    says so in one line (and still downloads)."""
    project = make_project(tmp_path / "project", tiny_dataset, modes=["frozen"])
    params = project.params
    params["data"]["watch"] = "stages/download.py"
    (project.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = project.stage("download")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: data.watch")]
    assert warnings == [f"warning: data.watch (stages/download.py) does not name data.url ({tiny_dataset}): DVC "
                        f"will not see its files change; set data.watch: {tiny_dataset}"], proc.stderr
