"""podman drives minirun: `podman --runtime minirun run ...`, with podman's own storage in a
private directory of this module (--root, --runroot, --tmpdir), removed at the end.

On these hosts podman runs only with --network none (otherwise it builds a CNI bridge and
firewall chains) and with ulimits within the host's hard limits (see /work/shared/HOST.md)."""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

PODMAN = shutil.which("podman")
pytestmark = pytest.mark.skipif(PODMAN is None, reason="podman is not installed (setup.sh)")
RUN = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def podman(tmp_path_factory, store_root):
    """`podman(*args)`: podman with private storage, its runtime this worktree's minirun
    (through a small script that logs each call, so a test can see what podman asked)."""
    home = tmp_path_factory.mktemp("podman")
    runtime = home / "minirun-runtime"
    runtime.write_text(f"""#!/bin/sh
echo "$@" >> {home}/calls.log
export PYTHONPATH={os.pathsep.join(sys.path)} MINIRUN_STATE={home}/state MINIRUN_ROOT={store_root}
exec {sys.executable} -m minirun "$@"
""")
    runtime.chmod(0o755)
    base = [PODMAN, "--root", str(home / "root"), "--runroot", str(home / "runroot"),
            "--tmpdir", str(home / "tmp"), "--cgroup-manager", "cgroupfs",
            "--events-backend", "none", "--runtime", str(runtime)]

    def podman(*args, **options):
        options.setdefault("capture_output", True)
        return subprocess.run([*base, *args], text=True, timeout=120, **options)
    podman.base, podman.home = base, home

    from minirun.image import Store
    subprocess.run([sys.executable, "-m", "minirun", "images"], capture_output=True, check=True,
                   env={**os.environ, "MINIRUN_ROOT": str(store_root)})
    layer = Store(store_root).get("hello").layers[0]
    subprocess.run(["tar", "-C", str(layer), "-cf", str(home / "hello.tar"), "."], check=True)
    assert podman("import", str(home / "hello.tar"), "hello").returncode == 0
    yield podman
    podman("rm", "--all", "--force", "--time", "0")
    podman("rmi", "--all", "--force")
    podman("system", "reset", "--force")      # this storage only: --root/--runroot are ours
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(home) in line]
    assert not list((home / "state" / "oci").glob("*")) if (home / "state" / "oci").exists() else True
    assert not list(Path("/sys/fs/cgroup/memory").glob("libpod_parent/libpod-*"))
    shutil.rmtree(home, ignore_errors=True)


def calls(podman) -> list[str]:
    log = podman.home / "calls.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_podman_runs_a_command_through_minirun(podman):
    (podman.home / "calls.log").unlink(missing_ok=True)
    result = podman("run", "--rm", *RUN, "hello", "sh", "-c",
                    "echo hello from $(hostname); grep CapBnd /proc/self/status; exit 3")
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("hello from ") and lines[1] == "CapBnd:\t00000000800405fb"
    assert calls(podman)[:2] == ["create", "start"] and calls(podman)[-1] == "delete"


def test_podman_limits_reach_the_cgroup(podman):
    result = podman("run", "--rm", *RUN, "-m", "64m", "--cpus", "0.5", "--pids-limit", "50",
                    "hello", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                    "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
                    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/pids/pids.max")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(64 << 20), str(128 << 20), "50000", "50"]  # swap: podman's 2x


def test_podman_runs_an_interactive_shell_on_a_pty(podman):
    master, slave = os.openpty()

    def controlling_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    process = subprocess.Popen([*podman.base, "run", "--rm", "-it", *RUN, "hello", "sh"],
                               stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                               preexec_fn=controlling_terminal)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 60
    while b"# " not in output and time.monotonic() < deadline:     # the shell's prompt
        output += os.read(master, 1024)
    os.write(master, b"tty; exit 7\n")
    while True:
        try:
            chunk = os.read(master, 1024)
        except OSError:             # EIO: podman closed its side
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=60) == 7
    assert b"/dev/pts/0" in output


def test_podman_detached_with_logs_stop_and_rm(podman):
    started = podman("run", "-d", *RUN, "hello", "sh", "-c",
                     "trap 'echo bye; exit 5' TERM; echo started; while :; do sleep 0.1; done")
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    deadline = time.monotonic() + 30
    while podman("logs", container).stdout != "started\n" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert podman("logs", container).stdout == "started\n"
    state = json.loads(podman("inspect", container).stdout)[0]["State"]
    assert state["Status"] == "running" and state["Pid"] > 0
    assert Path(f"/proc/{state['Pid']}/cgroup").read_text().count("/libpod_parent/libpod-") >= 1
    assert podman("stop", container).returncode == 0
    state = json.loads(podman("inspect", container).stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 5)
    assert podman("logs", container).stdout == "started\nbye\n"
    assert podman("rm", container).returncode == 0
    assert not list(Path("/sys/fs/cgroup/memory").glob(f"libpod_parent/libpod-{container}"))


def test_podman_exec_in_a_running_container(podman):
    container = podman("run", "-d", *RUN, "hello", "sleep", "60").stdout.strip()
    try:
        result = podman("exec", container, "sh", "-c", "echo pid $$; cat /proc/1/cmdline; exit 4")
        assert result.returncode == 4, result.stderr
        assert result.stdout == "pid 2\nsleep\x0060\x00"          # in the container's PID namespace
        assert "exec" in calls(podman)
    finally:
        podman("rm", "--force", "--time", "0", container)


def test_podman_maps_the_containers_root_to_a_host_uid(podman):
    """--uidmap/--gidmap reach minirun as the bundle's uidMappings and gidMappings
    (minirun/userns.py): the container's root is host uid 100000, seen from both sides."""
    container = podman("run", "-d", *RUN, "--uidmap", "0:100000:65536",
                       "--gidmap", "0:100000:65536", "hello", "sh", "-c",
                       "cat /proc/self/uid_map /proc/self/gid_map; id -u; sleep 60")
    assert container.returncode == 0, container.stderr
    container = container.stdout.strip()
    try:
        state = json.loads(podman("inspect", container).stdout)[0]["State"]
        host_ids = [line.split()[1:3] for line in
                    Path(f"/proc/{state['Pid']}/status").read_text().splitlines()
                    if line.startswith(("Uid:", "Gid:"))]
        assert host_ids == [["100000", "100000"], ["100000", "100000"]]
        deadline = time.monotonic() + 30
        while podman("logs", container).stdout.count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [line.split() for line in podman("logs", container).stdout.splitlines()] == \
            [["0", "100000", "65536"], ["0", "100000", "65536"], ["0"]]
    finally:
        podman("rm", "--force", "--time", "0", container)


def own_bounding_set() -> str:
    return next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("CapBnd:"))


def test_podman_privileged_run_and_exec_keep_every_capability(podman):
    """--privileged asks for every capability this kernel knows, CAP_CHECKPOINT_RESTORE (40)
    among them, which python-prctl's list lacks: minirun's own table (security.CAPABILITY_NAMES)
    takes them all, and the container gets all the runtime has (this host's root lacks
    CAP_SYS_RESOURCE). Mutation-checked: with python-prctl's list back, both are refused."""
    result = podman("run", "--rm", *RUN, "--privileged", "hello", "grep", "CapBnd", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["CapBnd:", own_bounding_set()]
    assert int(own_bounding_set(), 16) >> 40 & 1
    container = podman("run", "-d", *RUN, "hello", "sleep", "60").stdout.strip()
    try:
        result = podman("exec", "--privileged", container, "grep", "CapEff", "/proc/self/status")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["CapEff:", own_bounding_set()]
    finally:
        podman("rm", "--force", "--time", "0", container)


def test_podman_read_only_gets_writable_run_and_tmp(podman):
    """podman --read-only mounts tmpfs on /run, /tmp and /var/tmp with crun's "tmpcopyup"
    (rootfs.copy_up): before, mount(2) got it as tmpfs data and failed, EINVAL."""
    result = podman("run", "--rm", *RUN, "--read-only", "hello", "sh", "-c",
                    "touch /run/a /tmp/b /var/tmp/c && echo writable; "
                    "touch /etc/x 2>/dev/null || echo read-only")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "writable\nread-only\n"
