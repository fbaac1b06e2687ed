"""Shared fixtures: real image files, real archives, and a real DVC project in a temporary git repo."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.imagegen import write_class_folders
from tests.launcher import StageServer

# One thread in every test process and every stage it starts: the test runner keeps both cores busy with
# one test each, and a second thread per process on tiny problems only spins (15-50% more CPU time for a
# tiny train or evaluate, measured with /usr/bin/time). Set before torch is first imported.
os.environ["OMP_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HYMENOPTERA_ZIP = SHARED / "datasets" / "hymenoptera_data.zip"
MIRROR_ENV = "DATASET_MIRROR"
# Stages DVC runs on every `dvc repro` (always_changed): none. The helpers below would leave them out, so
# that "what re-ran" and "is it up to date" speak of the stages that had work.
ALWAYS_RUNS: tuple[str, ...] = ()

# Small and fast: every test trains at 32 px for an epoch or two.
TINY_TRAIN = {"epochs": 2, "batch_size": 8, "image_size": 32, "cached_views": 2, "workers": 0}

# A test run started in the background (`cmd &`, nohup) begins with Ctrl-C ignored, and the stages it
# starts would inherit that; the interruption tests play a user pressing Ctrl-C in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The test files that take longest, longest first. The runner (-n auto --dist loadfile) hands out whole
# files in collection order, so these start first and a short file, not a long one, runs last while the
# other core has nothing left to do.
LONGEST_FIRST = ("test_pipeline.py", "test_reliability.py", "test_distributed.py", "test_kills.py", "test_suite.py",
                 "test_pipeline_changes.py", "test_many_machines.py", "test_security.py", "test_onnx.py",
                 "test_report.py", "test_hostile_checkout.py", "test_predict.py", "test_audit.py", "test_compare.py",
                 "test_store.py", "test_fuzz.py", "test_real_data.py", "test_early_stopping.py", "test_three_splits.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def env_with_venv() -> dict:
    """The environment stages run in: the interpreter running the tests first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop(MIRROR_ENV, None)
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_in_process(main) -> int:
    """Call a stage's main() in this process; its exit status (0 when it returns)."""
    try:
        main()
    except SystemExit as exit:
        return exit.code
    return 0


_stage_server: list[StageServer] = []  # this test process's, started by the first project that needs it


def with_stage_server(env: dict) -> dict:
    """`env` where the stages DVC runs start in the stage server (tests/launcher.py)."""
    if not _stage_server:
        _stage_server.append(StageServer(Path(tempfile.mkdtemp(prefix="stage-server-")), env_with_venv()))
        atexit.register(_stage_server[0].close)
    return _stage_server[0].environment(env)


class Project:
    """The pipeline copied into a fresh git + DVC repo; runs the real `dvc` CLI there. Its `python -m
    stages.<name>` and `python -m dvc` start in the stage server (tests/launcher.py) instead of a new
    interpreter each; a test that needs a new interpreter runs `sys.executable` itself."""

    def __init__(self, path: Path):
        self.path = path
        self.env = with_stage_server(env_with_venv())

    def run(self, *args: str, check: bool = True, env: dict | None = None, timeout: int = 900):
        proc = subprocess.run(list(args), cwd=self.path, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def dvc(self, *args: str, **kwargs):
        """The `dvc` CLI as `python -m dvc` from the project's PATH (the stage server's, where `fast`)."""
        return self.run("python", "-m", "dvc", *args, **kwargs)

    def stage(self, module: str, *args: str, **kwargs):
        """`python -m stages.<module> ARGS` from the project's PATH (the stage server's, where `fast`)."""
        return self.run("python", "-m", f"stages.{module}", *args, **kwargs)

    def git(self, *args: str, **kwargs):
        return self.run("git", *args, **kwargs)

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, **sections) -> None:
        """set_params(train={"epochs": 1}, modes={"frozen": {...}}): deep-merge into params.yaml."""
        params = self.params

        def merge(dst, src):
            for key, value in src.items():
                if isinstance(value, dict) and isinstance(dst.get(key), dict):
                    merge(dst[key], value)
                else:
                    dst[key] = value
        merge(params, sections)
        watch_local_url(params)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def changed_stages(self) -> dict:
        """`dvc status --json` without the stages that always run (ALWAYS_RUNS): {} when up to date."""
        status = json.loads(self.dvc("status", "--json").stdout or "{}")
        return {name: why for name, why in status.items() if not (name in ALWAYS_RUNS and why == ["always changed"])}

    def ran_stages(self, output: str) -> list[str]:
        """Names of the stages a `dvc repro`/`dvc exp run` output says it ran (ALWAYS_RUNS left out)."""
        names = [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
        return [name for name in names if name not in ALWAYS_RUNS]


def watch_local_url(params: dict) -> None:
    """A local data.url named in data.watch too, as the user does, so that DVC hashes its files (an
    http(s) URL keeps the watch it has)."""
    url = str(params["data"]["url"])
    if "://" not in url:
        params["data"]["watch"] = url


def clone(template: Project, path: Path) -> Project:
    """A copy of a project (git, DVC cache and lock, data included): as if checked out again."""
    shutil.copytree(template.path, path, symlinks=True)
    return Project(path)


def tiny_row(row: dict, epochs: int) -> None:
    """A mode row of params.yaml, and each of its phases, at the tests' tiny sizes (the real rows train
    for minutes): at most `epochs` a phase, the tiny `train` sizes instead of its own, crops at the tiny
    image size too."""
    for node in [row, *row.get("phases", [])]:
        for key in ("epochs", "head_epochs"):
            if key in node:
                node[key] = min(node[key], epochs)
        for key in ("image_size", "batch_size", "cached_views", "workers"):
            node.pop(key, None)
        node.get("augment", {}).pop("crop_size", None)


CODE_DIRS = ("stages", "transfer")  # what a project needs of this repository's code


def copy_code(path: Path) -> None:
    """The pipeline's code (the stages and the library) into the project folder `path`."""
    for name in CODE_DIRS:
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))


def init_repo(path: Path) -> Project:
    """An empty git + DVC repository at `path` (made if missing), with a committer."""
    path.mkdir(parents=True, exist_ok=True)
    project = Project(path)
    project.git("init", "-q")
    project.git("config", "user.email", "tests@example.com")
    project.git("config", "user.name", "tests")
    project.dvc("init", "-q")
    return project


def commit_tagged(project: Project, tag: str, files: dict[str, str]) -> None:
    """Commit `files` on top of `base` (the first commit: on top of nothing) and tag it `tag`."""
    if tag != "base":
        project.git("checkout", "-q", "base")
    for name, text in files.items():
        (project.path / name).parent.mkdir(parents=True, exist_ok=True)
        (project.path / name).write_text(text)
    project.git("add", *files)
    project.git("commit", "-q", "-m", tag)
    project.git("tag", tag)


def make_project(path: Path, data_source: Path, modes: list[str] | None = None) -> Project:
    path.mkdir(parents=True, exist_ok=True)
    copy_code(path)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy2(ROOT / name, path / name)
    project = init_repo(path)
    project.dvc("config", "core.autostage", "true")
    params = project.params
    params["data"]["url"] = str(data_source)
    watch_local_url(params)
    params["train"].update(TINY_TRAIN)
    if modes is not None:
        params["modes"] = {name: params["modes"][name] for name in modes}
        if params["mode"] not in modes:
            params["mode"] = modes[0]
    for row in params["modes"].values():
        tiny_row(row, epochs=1)
    params["audit"]["image_size"] = TINY_TRAIN["image_size"]  # the audit's features at the tiny size too
    # No int8 model: quantizing EfficientNet-Lite0 takes ~10 s of every export (onnxruntime's per-channel
    # pass in Python), and its int8 depthwise convs refuse 32 px inputs; tests/test_onnx.py's project quantizes.
    params["export"]["calibration_images"] = 0
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "pipeline")
    return project


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """An ImageFolder dataset (train/ and val/, two classes) of small generated JPEGs."""
    root = tmp_path / "tiny_data"
    write_class_folders(root / "train", {"ants": 12, "bees": 12})
    write_class_folders(root / "val", {"ants": 6, "bees": 6}, seed=1)
    return root


@pytest.fixture
def project(tmp_path: Path, tiny_dataset: Path) -> Project:
    return make_project(tmp_path / "project", tiny_dataset)


def a_phase(**values):
    """A real phase (the shipped params.yaml's first mode's first), with `values` set over it."""
    import dataclasses

    from transfer.core import params as params_module
    from transfer.core.settings import mode_settings

    params = params_module.load(ROOT / "params.yaml")
    return dataclasses.replace(mode_settings(params, next(iter(params["modes"]))).phases[0], **values)


def split_settings(**changes):
    """What stage split reads of the shipped params.yaml's data section, with `changes` set over it."""
    from transfer.core.settings import SplitSettings, section

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    return section({"data": {**params["data"], **changes}}, "data", SplitSettings)
