"""The tests' stage server (tests/launcher.py) behaves as `python -m` would for what the tests rely on:
the working folder, arguments, environment, stdin, stdout, stderr and exit status; a traceback and
status 1 for an uncaught exception; SIGTERM passed on; the stage gone when its shim is killed; and a
real stage's one-line error, byte for byte the same as from a new interpreter."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_code, env_with_venv, init_repo, with_stage_server

PROBE = """
import os, signal, sys, time
what = sys.argv[1]
if what == "echo":
    import probe_extra  # found through PYTHONPATH
    print("out", os.getcwd(), sys.argv[2:], os.environ.get("PROBE_VALUE"), probe_extra.NAME,
          os.environ.get("PROBE_SITE"), sys.orig_argv[1:], sys.stdin.read().strip())
    print("err", file=sys.stderr)
    sys.exit(int(sys.argv[2]))
if what == "raise":
    raise ValueError("broken on purpose")
if what == "wait":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    open("pid", "w").write(str(os.getpid()))
    print("waiting", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with a `stages` package of one module, the probe, and a module and a sitecustomize
    on PYTHONPATH."""
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "probe_extra.py").write_text("NAME = 'extra'\n")
    (tmp_path / "extra" / "sitecustomize.py").write_text("import os\nos.environ['PROBE_SITE'] = 'site'\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "stages" / "probe.py").write_text(PROBE)
    return tmp_path


def both(folder: Path, *args: str, stdin: str = "") -> list[subprocess.CompletedProcess]:
    """The same command from a new interpreter, then through the stage server."""
    plain = env_with_venv()
    served = with_stage_server(plain)
    extra = {"PROBE_VALUE": "v", "PYTHONPATH": str(folder / "extra")}
    return [subprocess.run(["python", "-m", *args], cwd=folder, env={**env, **extra}, input=stdin,
                           capture_output=True, text=True, timeout=120) for env in (plain, served)]


def test_arguments_folder_environment_streams_and_status_are_those_of_python_m(folder):
    plain, served = both(folder, "stages.probe", "echo", "3", stdin="from stdin\n")
    assert served.returncode == plain.returncode == 3
    said = f"out {folder} ['3'] v extra site ['-m', 'stages.probe', 'echo', '3'] from stdin\n"
    assert served.stdout == plain.stdout == said
    assert served.stderr == plain.stderr == "err\n"


def test_an_uncaught_exception_is_a_traceback_and_status_1(folder):
    plain, served = both(folder, "stages.probe", "raise")
    assert served.returncode == plain.returncode == 1
    assert served.stderr.startswith("Traceback") and served.stderr.endswith("ValueError: broken on purpose\n")


def test_a_real_stage_says_the_same_line_either_way(tmp_path):
    """compare before any mode was evaluated: its one line and status, whichever interpreter ran it."""
    copy_code(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    plain, served = both(tmp_path, "stages.compare")
    assert plain.returncode != 0 and "Traceback" not in plain.stderr
    assert (served.returncode, served.stdout, served.stderr) == (plain.returncode, plain.stdout, plain.stderr)


def test_dvc_says_the_same_either_way(tmp_path):
    """`dvc status` and `dvc repro` of a one-stage project: the same output and status from each."""
    import yaml

    init_repo(tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {"cmd": "echo made > out.txt",
                                                                          "outs": ["out.txt"]}}}))
    for args in (["status"], ["repro", "--dry"], ["doctor-is-no-command"]):
        plain, served = both(tmp_path, "dvc", *args)
        assert (served.returncode, served.stdout, served.stderr) == (plain.returncode, plain.stdout, plain.stderr)


def start(folder: Path) -> tuple[subprocess.Popen, int]:
    shim = subprocess.Popen(["python", "-m", "stages.probe", "wait"], cwd=folder,
                            env=with_stage_server(env_with_venv()), stdout=subprocess.PIPE, text=True)
    assert shim.stdout.readline() == "waiting\n"
    return shim, int((folder / "pid").read_text())


def gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_is_passed_on_and_a_killed_shim_takes_its_stage_along(folder):
    shim, stage = start(folder)
    assert stage != shim.pid
    shim.send_signal(signal.SIGTERM)
    assert shim.wait(timeout=60) == 143 and gone(stage)

    shim, stage = start(folder)
    shim.kill()
    assert shim.wait(timeout=60) == -signal.SIGKILL
    assert gone(stage), "the stage outlived its shim"


def test_anything_but_a_stage_module_runs_in_the_real_interpreter(folder):
    served = with_stage_server(env_with_venv())
    said = subprocess.run(["python", "-c", "import sys; print(sys.executable)"], env=served, capture_output=True,
                          text=True, timeout=60)
    assert said.stdout.strip() == sys.executable
