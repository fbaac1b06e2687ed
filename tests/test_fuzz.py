"""Stages `download` and `split` on 300 archives damaged at random (fixed seed): images truncated,
bytes flipped, headers swapped, sizes lied about. Each run ends in success or in one error line, never
a traceback, and writes nothing but the stages' outputs (data/, metrics/data.json)."""
from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import struct
import tarfile
import traceback
import zipfile
from pathlib import Path

import pytest
import yaml

from stages import download, split
from tests.conftest import ROOT, run_in_process
from tests.imagegen import make_image
from transfer.core.paths import DATA_METRICS, PARAMS_FILE, RAW_DIR, SPLIT_DIR

SEED = 19
CASES = 300
KINDS = ("zip", "tar", "tar.gz")


def image_bytes(label: int, seed: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    make_image(label, seed, size=(24, 20)).save(buffer, fmt)
    return buffer.getvalue()


def dataset_files(rng: random.Random) -> dict[str, bytes]:
    """An imagefolder dataset (two classes, a wrapping folder) as {member name: bytes}, some images
    damaged: cut short, bytes flipped, another format's header, emptied."""
    files = {}
    for part, count in (("train", 3), ("val", 2)):
        for label, name in enumerate(("ants", "bees")):
            for i in range(count):
                fmt = rng.choice(("JPEG", "PNG"))
                files[f"insects/{part}/{name}/{i}.{fmt.lower()}"] = image_bytes(label, rng.randrange(10**6), fmt)
    for name in rng.sample(sorted(files), rng.randrange(4)):
        files[name] = damage_image(rng, files[name])
    return files


def damage_image(rng: random.Random, data: bytes) -> bytes:
    how = rng.choice(("truncate", "flip", "header", "empty"))
    if how == "truncate":
        return data[:rng.randrange(len(data))]
    if how == "flip":
        return flip(rng, data, rng.randint(1, 8))
    if how == "header":
        other = b"\x89PNG\r\n\x1a\n" if data.startswith(b"\xff\xd8") else b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
        return other + data[len(other):]
    return b""


def flip(rng: random.Random, data: bytes, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def make_archive(kind: str, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tar.gz" else "w") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def lie_about_sizes(rng: random.Random, kind: str, data: bytes) -> bytes:
    """A member's recorded size changed, its checksums left valid where the format has them for it."""
    out = bytearray(data)
    if kind == "zip":  # the central directory's uncompressed size (offset 24 of each entry)
        entries = [i for i in range(len(out) - 46) if out[i:i + 4] == b"PK\x01\x02"]
        if entries:
            at = rng.choice(entries) + 24
            out[at:at + 4] = struct.pack("<I", rng.choice((0, 1, 10**6, 2**32 - 1)))
    elif kind == "tar":  # a header's size field, then its checksum recomputed
        headers = [i for i in range(0, len(out) - 512, 512) if out[i + 257:i + 262] == b"ustar"]
        if headers:
            at = rng.choice(headers)
            out[at + 124:at + 136] = b"%011o\0" % rng.choice((0, 1, 5000, 8**11 - 1))
            out[at + 148:at + 156] = b" " * 8
            out[at + 148:at + 156] = b"%06o\0 " % sum(out[at:at + 512])
    return bytes(out)


def damage_archive(rng: random.Random, kind: str, data: bytes, other: bytes) -> tuple[bytes, str]:
    how = rng.choice(("none", "truncate", "flip", "header", "sizes"))
    if how == "truncate":
        return data[:rng.randrange(len(data))], how
    if how == "flip":
        return flip(rng, data, rng.randint(1, 16)), how
    if how == "header":  # another archive's first bytes over this one's
        cut = rng.randrange(4, 600)
        return other[:cut] + data[cut:], how
    if how == "sizes":
        return lie_about_sizes(rng, kind, data), how
    return data, how


def outside_outputs(root: Path, work: Path) -> dict[str, tuple]:
    """Size and mtime of every file under `root` but the stages' outputs in `work`."""
    outputs = (work / "data", work / DATA_METRICS)
    return {p.as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if not p.is_dir() and not any(p == out or out in p.parents for out in outputs)}


def run_stage(main) -> tuple[int, str, str]:
    """(exit status, stderr, traceback or "") of a stage's main run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return run_in_process(main), err.getvalue(), ""
        except Exception:  # noqa: BLE001 - what the test is there to catch
            return -1, err.getvalue(), traceback.format_exc()


def check_outcome(name: str, code: int, err: str, trace: str) -> str | None:
    """None when the stage succeeded or failed with one error line; else what went wrong."""
    if trace:
        return f"traceback:\n{trace}"
    lines = err.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith(f"{name}: error: ")]
    if code == 0 and not errors:
        return None
    if code == 2 and len(errors) == 1 and lines[-1] == errors[0]:
        return None
    return f"exit {code}, stderr:\n{err}"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    shutil.copy2(ROOT / PARAMS_FILE, path / PARAMS_FILE)
    monkeypatch.chdir(path)
    return path


def test_damaged_archives_end_in_success_or_one_line(workdir, tmp_path):
    rng = random.Random(SEED)
    params = yaml.safe_load((workdir / PARAMS_FILE).read_text())
    archives = tmp_path / "archives"
    archives.mkdir()
    problems, outcomes = [], {"ok": 0, "download": 0, "split": 0}
    for case in range(CASES):
        kind = KINDS[case % len(KINDS)]
        data, how = damage_archive(rng, kind, make_archive(kind, dataset_files(rng)),
                                   make_archive(rng.choice(KINDS), {"x/y.txt": b"y" * 700}))
        archive = archives / f"{case:03d}.{kind}"
        archive.write_bytes(data)
        params["data"].update(url=str(archive), max_unpacked_mb=1)
        (workdir / PARAMS_FILE).write_text(yaml.safe_dump(params))
        shutil.rmtree(workdir / "data", ignore_errors=True)
        (workdir / DATA_METRICS).unlink(missing_ok=True)
        before = outside_outputs(tmp_path, workdir)
        label = f"case {case} ({kind}, {how})"
        for name, main, output in (("download", download.main, RAW_DIR), ("split", split.main, SPLIT_DIR)):
            code, err, trace = run_stage(main)
            problem = check_outcome(name, code, err, trace)
            if problem:
                problems.append(f"{label}, {name}: {problem}")
            if code != 0:
                outcomes[name] += 1
                if output.exists() or (name == "split" and (workdir / DATA_METRICS).exists()):
                    problems.append(f"{label}, {name}: failed but left {output} behind")
                break
        else:
            outcomes["ok"] += 1
            json.loads((workdir / DATA_METRICS).read_text())
        if outside_outputs(tmp_path, workdir) != before:
            problems.append(f"{label}: wrote outside data/ and {DATA_METRICS}")
    assert problems == [], f"{len(problems)} of {CASES} cases went wrong:\n" + "\n".join(problems[:5])
    # The damage was real: every stage's refusals and successes all occurred.
    assert min(outcomes.values()) >= 20, outcomes
