"""Shared fixtures: every test runs the real `minirun` as root against a private store and state dir.

The store (MINIRUN_ROOT) is shared by the whole session so the built-in image is built once; the
state directory (MINIRUN_STATE) is private to each test, so a test can count what a run left.
"""
import contextlib
import fcntl
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from minirun import network
from minivm import kernel

if os.geteuid() != 0:
    pytest.exit("the tests start real containers and VMs: run them as root", returncode=1)


@pytest.fixture(scope="session")
def store_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def minirun_env(store_root, tmp_path) -> dict:
    state = tmp_path / "state"
    state.mkdir()
    return {**os.environ, "MINIRUN_ROOT": str(store_root), "MINIRUN_STATE": str(state)}


@pytest.fixture
def minirun(minirun_env):
    """Run `minirun ARGS...` to completion: returns the CompletedProcess (text mode)."""
    def run(*args, input=None, timeout=60, check_clean=True):
        result = subprocess.run([sys.executable, "-m", "minirun", *args], env=minirun_env,
                                input=input, capture_output=True, text=True, timeout=timeout)
        if check_clean:
            assert "Traceback" not in result.stderr, result.stderr
        return result
    return run


@pytest.fixture
def start_minirun(minirun_env):
    """Start `minirun ARGS...` in the background: returns the Popen; the test must wait for it."""
    started = []

    def start(*args, **popen_args):
        process = subprocess.Popen([sys.executable, "-m", "minirun", *args], env=minirun_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   **popen_args)
        started.append(process)
        return process
    yield start
    for process in started:          # a failed test must not leave its container running
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def wait_for_container(minirun_env, timeout=20.0) -> dict:
    """The state record of the one container of this test, once its PID 1 has started."""
    import json
    deadline = time.monotonic() + timeout
    state = Path(minirun_env["MINIRUN_STATE"])
    while time.monotonic() < deadline:
        for path in state.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("pid"):
                return record
        time.sleep(0.02)
    raise AssertionError("the container did not start")


@contextlib.contextmanager
def released_together(env: dict, barrier: str, args: list[str], count: int = 20):
    """Start `count` minirun processes that each stop at a barrier, then let them all go at once;
    yields the Popens (text mode, stdin/stdout/stderr pipes) and kills what is left at the end.

    `barrier` is a Python script that wraps the step under test so that it first writes one
    byte to descriptor sys.argv[1] ("here") and then reads from sys.argv[2] (end of file: "go"),
    and then runs minirun's cli with sys.argv[3:]."""
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    runs = [subprocess.Popen([sys.executable, "-c", barrier, str(ready_write), str(go_read), *args],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, pass_fds=[ready_write, go_read])
            for _ in range(count)]
    os.close(ready_write)
    os.close(go_read)
    try:
        arrived = b""
        while len(arrived) < count and (chunk := os.read(ready_read, count)):
            arrived += chunk
        assert len(arrived) == count, [run.stderr.read() for run in runs if run.poll() is not None]
        os.close(go_write)                      # end of file: all of them go at once
        go_write = None
        yield runs
    finally:
        os.close(ready_read)
        if go_write is not None:
            os.close(go_write)
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()


def read_line(process, timeout=20.0) -> str:
    """The next line of a background minirun's stdout, with a deadline."""
    import selectors
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError("no output from the container in time")
    return process.stdout.readline()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty image store of this test's own, for tests that call minirun.image directly:
    MINIRUN_ROOT and MINIRUN_STATE point into tmp_path, for this process and its children."""
    from minirun.image import Store
    monkeypatch.setenv("MINIRUN_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("MINIRUN_STATE", str(tmp_path / "state"))
    return Store()


# --- minivm: real guests -----------------------------------------------------------------------

BOOT_TIMEOUT = 300      # seconds; generous, the machine is shared and TCG is slow


@pytest.fixture(scope="session")
def guest(tmp_path_factory):
    """The environment of a boot: the cached guest kernel and its modules linked into a private
    directory and cache."""
    try:
        vmlinux = kernel.bootable_vmlinux(kernel.find_kernel())
        modules = kernel.modules_directory(vmlinux)
    except Exception as error:          # the set-up should have fetched one: say so
        pytest.fail(f"no guest kernel: {error}")
    home = tmp_path_factory.mktemp("minivm")
    (home / "vmlinux").symlink_to(vmlinux)
    (home / "cache" / "kernels").mkdir(parents=True)
    (home / "cache" / "kernels" / modules.name).symlink_to(modules)
    (home / "tmp").mkdir()
    env = dict(os.environ, MINIVM_KERNEL=str(home / "vmlinux"), MINIVM_CACHE=str(home / "cache"),
               TMPDIR=str(home / "tmp"))
    return home, env


def with_store(guest, store) -> tuple:
    """The same guest environment, booting images from the store at `store` (MINIRUN_ROOT)."""
    home, env = guest
    return home, {**env, "MINIRUN_ROOT": str(store)}


def minivm(guest, *args, **popen):
    home, env = guest
    command = [sys.executable, "-m", "minivm", "boot", *args]
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=BOOT_TIMEOUT)


def leftovers(guest):
    """QEMU processes booted from this test's kernel link, and files in this test's TMPDIR."""
    home, _ = guest
    qemus = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:                 # the process ended while we looked
            continue
        if b"qemu-system" in argv[0] and str(home).encode() in b" ".join(argv):
            qemus.append(cmdline.parent.name)
    return qemus, sorted(os.listdir(home / "tmp"))


def wait_for_qemu_to_end(guest) -> None:
    """QEMU dies with a killed minivm (PR_SET_PDEATHSIG), a little later: wait until each one
    has ended, rather than guess a time. A pidfd becomes readable when its process ends, even
    one that is not our child."""
    for pid in leftovers(guest)[0]:
        try:
            pidfd = os.pidfd_open(int(pid))
        except ProcessLookupError:
            continue
        try:
            assert select.select([pidfd], [], [], 60)[0], f"QEMU {pid} outlived minivm"
        finally:
            os.close(pidfd)


# --- the network: what it adds to the host, counted before and after a test ---------------------

LEASES = network.network_dir()
HTTPD = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def network_state(ports=()) -> dict:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    listening = subprocess.run(["ss", "-Htlnu"], capture_output=True, text=True).stdout
    return {
        "veths": sorted(re.findall(r"^\d+: (veth\w+)", links, re.M)),
        "taps": sorted(re.findall(r"^\d+: (tap\w+)", links, re.M)),
        "bridge": network.BRIDGE in links,
        "addresses": sorted(line.split()[3] for line in addresses.splitlines()
                            if not line.split()[1].startswith(("veth", "tap", network.BRIDGE))),
        "nat rules": subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True,
                                    text=True).stdout.splitlines(),
        "listeners": sorted(line for line in listening.splitlines()
                            if any(f":{port} " in line for port in ports)),
        "leases": sorted(p.name for p in LEASES.iterdir() if p.name[0].isdigit())
        if LEASES.is_dir() else [],
    }


def unheld_leases() -> list[str]:
    """Lease files that no minirun holds: left behind. (A later run's gc would remove them, and
    take the same address again, so comparing the leases before and after is not enough.)"""
    unheld = []
    for path in LEASES.iterdir() if LEASES.is_dir() else ():
        if path.name[0].isdigit():
            with open(path) as lease:
                try:
                    fcntl.flock(lease, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    unheld.append(path.name)
                except BlockingIOError:
                    pass
    return unheld


def fetch(url: str, timeout=20.0) -> str:
    """GET `url` from the host, retrying until the server in the container is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
