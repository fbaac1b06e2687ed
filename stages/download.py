"""Stage `download`: bring the dataset that params data.url names into data/raw.

data.url is an http(s) URL, a local archive or a local folder (copied as is). An archive is checked
against data.sha256 when given, then unpacked. data/raw appears only complete: a failed or
interrupted run leaves none."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stages import params
from stages.archives import fetch, file_sha256, is_url, unpack
from stages.common import atomic_path, fail, log, run_main
from stages.paths import RAW_DIR


@run_main
def main() -> None:
    data = params.load()["data"]
    source, expected = data["url"], data["sha256"]
    folder = None if is_url(source) else Path(source).expanduser()
    with atomic_path(RAW_DIR) as raw, \
            tempfile.TemporaryDirectory(prefix=".download.", dir=RAW_DIR.parent) as scratch:
        if folder is not None and folder.is_dir():
            if expected:
                fail(f"data.sha256: {source} is a folder; a checksum applies to an archive only")
            shutil.copytree(folder, raw)
        else:
            archive, label = fetch(source, Path(scratch))
            if expected:
                actual = file_sha256(archive)
                if actual != expected.lower():
                    fail(f"data.sha256: {label}: expected {expected.lower()}, got {actual}")
            unpack(archive, raw, data["max_unpacked_mb"], label)
    files = sum(1 for path in RAW_DIR.rglob("*") if path.is_file())
    log(f"{RAW_DIR}: {files} files from {source}")


if __name__ == "__main__":
    main()
