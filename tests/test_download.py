"""Stage `download` and transfer/data/archives.py: a real HTTP server, real archives, hostile archives."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stages import download
from tests.conftest import MIRROR_ENV, ROOT, Project, copy_code, make_project, run_in_process
from tests.imagegen import pack, tree_bytes, write_class_folders
from transfer.core.errors import UserError
from transfer.core.paths import PARAMS_FILE, PUBLISH_DIR, RAW_DIR, RAW_SKIPPED
from transfer.data import archives


@pytest.fixture
def workdir(tmp_path: Path) -> Project:
    """The stages and params.yaml in a plain folder: enough to run one stage, without git or DVC."""
    path = tmp_path / "work"
    copy_code(path)
    shutil.copy2(ROOT / PARAMS_FILE, path / PARAMS_FILE)
    return Project(path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "source" / "insects"
    write_class_folders(root / "train", {"ants": 3, "bees": 3})
    write_class_folders(root / "val", {"ants": 2, "bees": 2}, seed=1)
    return root


@pytest.fixture
def dataset_zip(dataset: Path, tmp_path: Path) -> Path:
    return pack(dataset, tmp_path / "insects.zip")


class _Handler(BaseHTTPRequestHandler):
    """Serves server.payload at any path; honours Range when server.ranges; server.statuses are
    answered first, one per request; the first server.drops requests lose the connection half-way."""

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        if srv.statuses:
            self.send_error(srv.statuses.pop(0))
            return
        start = 0
        if self.headers.get("Range") and srv.ranges:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(srv.payload) - 1}/{len(srv.payload)}")
        else:
            self.send_response(200)
        body = srv.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drops:
            srv.drops -= 1
            body = body[:len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(payload, drops=0, ranges=True, statuses=()) -> (server, URL of the archive)."""
    servers = []

    def start(payload: bytes, *, drops=0, ranges=True, statuses=()):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.payload, server.drops, server.ranges, server.statuses = payload, drops, ranges, list(statuses)
        server.requests = []
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_port}/files/insects.zip"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(archives, "RETRY_DELAY", 0.01)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/files/insects.zip"


# --- HTTP -------------------------------------------------------------------------------------------

def test_download_starts_over_when_the_server_ignores_range(tmp_path, serve, fast_retries, dataset_zip):
    payload = dataset_zip.read_bytes()
    server, url = serve(payload, drops=1, ranges=False)
    archives.download(url, tmp_path / "got.zip")
    assert (tmp_path / "got.zip").read_bytes() == payload
    assert len(server.requests) == 2 and server.requests[1] is not None  # asked to resume, got it all again


def test_download_retries_server_errors(tmp_path, serve, fast_retries, dataset_zip):
    server, url = serve(dataset_zip.read_bytes(), statuses=[503, 502])
    archives.download(url, tmp_path / "got.zip")
    assert (tmp_path / "got.zip").read_bytes() == dataset_zip.read_bytes()
    assert len(server.requests) == 3


def test_download_gives_up_after_the_last_try(tmp_path, serve, fast_retries):
    _, url = serve(b"", statuses=[500] * archives.TRIES)
    with pytest.raises(UserError, match=f"{url}: download failed after {archives.TRIES} tries"):
        archives.download(url, tmp_path / "got.zip")


def test_client_error_is_one_line_without_retries(tmp_path, serve):
    server, url = serve(b"", statuses=[404])
    with pytest.raises(UserError) as err:
        archives.download(url, tmp_path / "got.zip")
    assert str(err.value) == f"data.url: {url}: HTTP 404 Not Found"
    assert len(server.requests) == 1


# --- mirror -----------------------------------------------------------------------------------------

def test_mirror_replaces_the_network(workdir, dataset, dataset_zip, monkeypatch, capsys):
    mirror = dataset_zip.parent
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    workdir.set_params(data={"url": closed_port_url()})  # nothing listens there: the mirror must serve
    monkeypatch.chdir(workdir.path)
    assert run_in_process(download.main) == 0
    assert f"using {mirror / 'insects.zip'}" in capsys.readouterr().err
    assert tree_bytes(workdir.path / RAW_DIR) == tree_bytes(dataset.parent)


def test_stage_resumes_a_dropped_download_and_the_mirror_gives_the_same_dvc_lock(tmp_path, serve, dataset,
                                                                               dataset_zip):
    server, url = serve(dataset_zip.read_bytes(), drops=1)
    project = make_project(tmp_path / "project", dataset)
    project.set_params(data={"url": url})
    online = project.dvc("repro", "download")
    assert server.requests == [None, f"bytes={dataset_zip.stat().st_size // 2}-"]
    assert "resuming at byte" in online.stdout + online.stderr
    assert tree_bytes(project.path / RAW_DIR) == tree_bytes(dataset.parent)
    # no scratch folder left beside data/raw
    assert sorted(p.name for p in (project.path / RAW_DIR.parent).iterdir()) == [
        ".gitignore", RAW_DIR.name]
    lock = (project.path / "dvc.lock").read_text()

    project.dvc("repro", "--force", "download", env={MIRROR_ENV: str(dataset_zip.parent)})
    assert len(server.requests) == 2  # the second run took the mirror's copy
    assert (project.path / "dvc.lock").read_text() == lock
    assert project.dvc("status", "download").stdout.strip() == "Data and pipelines are up to date."


def test_mirror_without_the_file_falls_back_to_the_network(tmp_path, serve, dataset_zip, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "empty_mirror"))
    server, url = serve(dataset_zip.read_bytes())
    archive, label = archives.fetch(url, tmp_path)
    assert archive.read_bytes() == dataset_zip.read_bytes() and label == url
    assert len(server.requests) == 1


# --- checksum ---------------------------------------------------------------------------------------

def test_sha256_mismatch_is_one_line_and_unpacks_nothing(workdir, dataset_zip):
    actual = hashlib.sha256(dataset_zip.read_bytes()).hexdigest()
    workdir.set_params(data={"url": str(dataset_zip), "sha256": "0" * 64})
    proc = workdir.stage("download", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"download: error: data.sha256: {dataset_zip}: expected {'0' * 64}, got {actual}"]
    assert not (workdir.path / RAW_DIR.parent).exists() or not any((workdir.path / RAW_DIR.parent).iterdir())


def test_sha256_match_unpacks_a_local_tar_gz(workdir, dataset, tmp_path, monkeypatch):
    archive = pack(dataset, tmp_path / "insects.tgz")
    workdir.set_params(data={"url": str(archive), "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()})
    monkeypatch.chdir(workdir.path)
    assert run_in_process(download.main) == 0
    assert tree_bytes(workdir.path / RAW_DIR) == tree_bytes(dataset.parent)


# --- unpacking --------------------------------------------------------------------------------------

MB = 1  # data.max_unpacked_mb: plenty for the test archives


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_unpack_detects_the_format_by_content(suffix, dataset, tmp_path):
    archive = pack(dataset, tmp_path / f"insects{suffix}").rename(tmp_path / "insects.bin")
    archives.unpack(archive, tmp_path / "raw", MB, "insects.bin")
    assert tree_bytes(tmp_path / "raw") == tree_bytes(dataset.parent)


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes | tuple[bytes, str]]]) -> Path:
    """members: (name, content) for a file; (name, (type, target)) for a tarfile.SYMTYPE/LNKTYPE link."""
    with tarfile.open(path, "w:gz") as tf:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type, info.linkname = content
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return path


def test_unpack_skips_hidden_files_and_macos_metadata(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"d/x.txt": b"x", "d/.DS_Store": b"junk", "__MACOSX/d/._x.txt": b"junk",
                                            ".hidden/y.txt": b"y"})
    archives.unpack(archive, tmp_path / "raw", MB, "a.zip")
    assert tree_bytes(tmp_path / "raw") == {"d/x.txt": b"x"}


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil.txt", "d/../../evil.txt", "..\\evil.txt"])
def test_unpack_refuses_members_outside_the_target(evil, tmp_path):
    archive = make_zip(tmp_path / "slip.zip", {"d/ok.txt": b"ok", evil: b"pwned"})
    with pytest.raises(UserError, match=f"slip.zip: member '{evil.replace(chr(92), '/')}'.* outside"):
        archives.unpack(archive, tmp_path / "raw", MB, "slip.zip")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("target", ["../../outside.txt", "/etc/passwd"])
@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_unpack_refuses_links_leading_outside(kind, target, tmp_path):
    archive = make_tar(tmp_path / "links.tar.gz", [("d/ok.txt", b"ok"), ("d/link", (kind, target))])
    with pytest.raises(UserError, match="links.tar.gz: link 'd/link' points outside the archive"):
        archives.unpack(archive, tmp_path / "raw", MB, "links.tar.gz")
    assert not (tmp_path / "raw").exists()


def test_unpack_turns_links_inside_into_copies(tmp_path):
    archive = make_tar(tmp_path / "links.tar.gz", [
        ("d/a.txt", b"aaa"), ("d/sub/sym.txt", (tarfile.SYMTYPE, "../a.txt")),
        ("d/hard.txt", (tarfile.LNKTYPE, "d/a.txt")), ("d/dangling", (tarfile.SYMTYPE, "missing.txt"))])
    archives.unpack(archive, tmp_path / "raw", MB, "links.tar.gz")
    assert tree_bytes(tmp_path / "raw") == {"d/a.txt": b"aaa", "d/hard.txt": b"aaa", "d/sub/sym.txt": b"aaa"}
    assert not any(p.is_symlink() for p in (tmp_path / "raw").rglob("*"))


def test_unpack_refuses_an_archive_bomb_by_declared_size(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"d/small.txt": b"x", "d/zeros.bin": bytes(100_000)})
    assert archive.stat().st_size < 2000
    with pytest.raises(UserError, match=r"bomb.zip: member 'd/zeros.bin' .* data.max_unpacked_mb = 0.01\b"):
        archives.unpack(archive, tmp_path / "raw", 0.01, "bomb.zip")
    assert not (tmp_path / "raw").exists()


def test_unpack_counts_the_bytes_actually_written(tmp_path):
    # Links declare no size of their own, yet each one unpacks into a full copy of its target.
    members = [("d/f.bin", bytes(4000))] + [(f"d/copy{i}.bin", (tarfile.LNKTYPE, "d/f.bin")) for i in range(10)]
    archive = make_tar(tmp_path / "links.tar.gz", members)
    with pytest.raises(UserError, match=r"links.tar.gz: member 'd/copy\d.bin' takes the unpacked size past"):
        archives.unpack(archive, tmp_path / "raw", 0.01, "links.tar.gz")


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_unpack_refuses_a_truncated_archive(suffix, dataset, tmp_path):
    archive = pack(dataset, tmp_path / f"insects{suffix}")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    with pytest.raises(UserError, match="insects: truncated or corrupt archive"):
        archives.unpack(archive, tmp_path / "raw", MB, "insects")


def test_unpack_refuses_a_file_that_is_no_archive(tmp_path):
    (tmp_path / "notes.zip").write_text("just some text\n" * 50)
    with pytest.raises(UserError, match="^notes.zip: not a zip or tar archive$"):
        archives.unpack(tmp_path / "notes.zip", tmp_path / "raw", MB, "notes.zip")


def test_stage_error_leaves_no_data_raw(workdir, tmp_path, monkeypatch, capsys):
    archive = make_zip(tmp_path / "slip.zip", {"d/ok.txt": b"ok", "../evil.txt": b"pwned"})
    workdir.set_params(data={"url": str(archive)})
    monkeypatch.chdir(workdir.path)
    assert run_in_process(download.main) == 2
    assert capsys.readouterr().err.count("\n") == 1
    data = workdir.path / RAW_DIR.parent
    assert not data.exists() or list(data.iterdir()) == []
    assert not (workdir.path.parent / "evil.txt").exists() and not (workdir.path / PUBLISH_DIR).exists()


def test_missing_local_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="^data.url: .*nowhere.zip: no such file or folder$"):
        archives.fetch(str(tmp_path / "nowhere.zip"), tmp_path)


# --- local folders ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["data", ".", "data/raw", "data/raw/insects"])
def test_a_folder_holding_or_inside_data_raw_is_refused_in_one_line(url, workdir, dataset, monkeypatch, capsys):
    """data.url at the project's own data folder (or the project, or data/raw itself) would copy data/raw
    into itself without end; one line, and the data/raw of the last run is left as it was."""
    shutil.copytree(dataset.parent, workdir.path / RAW_DIR)
    before = tree_bytes(workdir.path / RAW_DIR.parent)
    workdir.set_params(data={"url": url})
    monkeypatch.chdir(workdir.path)
    assert run_in_process(download.main) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"download: error: data.url: {url}: ") and str(RAW_DIR) in line, line
    assert tree_bytes(workdir.path / RAW_DIR.parent) == before
    assert sorted(p.name for p in (workdir.path / RAW_DIR.parent).iterdir()) == [RAW_DIR.name]  # nothing aside


def test_a_folder_with_a_link_loop_and_a_dangling_link_is_copied_once(workdir, dataset, monkeypatch, capsys):
    """Links in a source folder are followed as copies, except one back to a folder holding it (a
    loop, not endless nested copies); a dangling link is skipped and named in a warning."""
    (dataset / "train" / "ants" / "loop").symlink_to("../..")
    (dataset / "train" / "bees" / "gone.jpg").symlink_to("nowhere.jpg")
    (dataset / "val" / "ants" / "alias.jpg").symlink_to(dataset / "val" / "ants" / "ants_000.jpg")
    workdir.set_params(data={"url": str(dataset)})
    monkeypatch.chdir(workdir.path)
    assert run_in_process(download.main) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {dataset}/train/ants/loop: link to a folder that holds it (a loop)" in err
    assert f"warning: skipped {dataset}/train/bees/gone.jpg: dangling link to nowhere.jpg" in err
    copied = tree_bytes(workdir.path / RAW_DIR)
    assert json.loads(copied.pop(RAW_SKIPPED.name)) == [  # what split reports in metrics/data.json
        {"path": "train/ants/loop", "reason": "link to a folder that holds it (a loop)"},
        {"path": "train/bees/gone.jpg", "reason": "dangling link to nowhere.jpg"}]
    assert copied == tree_bytes(dataset)  # rglob follows no folder link and drops the dangling one
    assert copied["val/ants/alias.jpg"] == copied["val/ants/ants_000.jpg"]
    assert not any(p.is_symlink() for p in (workdir.path / RAW_DIR).rglob("*"))
