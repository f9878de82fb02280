"""Issue 10: the routes out of a container, tried from inside real ones, each expected BLOCKED.

Every route here got through on main before the protections (docs/security.md walks them in
order; tests/bench/security_table.py puts them beside runc). The probe is one static program,
tests/programs/escape_probe.c, that prints `ESCAPED ...` or `BLOCKED <ERRNO> <step>`.

Where minirun has an honest switch that turns a protection off, the same test runs the route
again with it and expects it to get through (or at least to be stopped elsewhere): that is the
test's own mutation check, proof that it can fail. `--security-opt seccomp=unconfined` turns off
the system-call filter; `--privileged` the capability cut, the device list and the masks. For
the descriptors, the cgroup placement, `--init` and the store there is no such switch (nobody
should be able to ask for them): their tests were checked by hand, on a tree with the protection
reverted, and say so where they stand.
"""
import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import read_line, wait_for_container
from image_helpers import build_static, hello_with
from minirun.image import Store

SOURCE = Path(__file__).parent / "programs" / "escape_probe.c"
UNCONFINED = ("--security-opt", "seccomp=unconfined")
NOBODY = 65534


# --- The probe, in an image, and how to run it -------------------------------------------------

@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory) -> Path:
    return build_static(SOURCE, tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def probe(store_root, probe_binary) -> str:
    return hello_with(Store(store_root), probe_binary, "escape-probe")


def outcome(result) -> str:
    """The probe's one line, with what minirun said if the probe did not run."""
    assert "Traceback" not in result.stderr, result.stderr
    return (result.stdout.strip() or f"(no output; exit {result.returncode}: {result.stderr.strip()})")


def run(minirun_env, *args, pass_fds=(), env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "minirun", *args], env=env or minirun_env,
                          capture_output=True, text=True, timeout=timeout, pass_fds=pass_fds)


@pytest.fixture
def host_dir(tmp_path):
    """A directory of the host, writable by anyone, and a descriptor of it to pass on (as a
    shell's `exec 9</dir` would): (directory, fd)."""
    directory = tmp_path / "host-dir"
    directory.mkdir()
    directory.chmod(0o777)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    yield directory, fd
    os.close(fd)


@contextlib.contextmanager
def running(env: dict, name: str, *args):
    """A container `name` running `minirun run --name name ARGS...` in the background, for as
    long as the block runs; yields its state record once PID 1 has started. Stopped with
    `minirun stop` (not by killing minirun), so that minirun removes its cgroup and bundle."""
    process = subprocess.Popen([sys.executable, "-m", "minirun", "run", "--name", name, *args],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, wait_for_container(env)
    finally:
        subprocess.run([sys.executable, "-m", "minirun", "stop", "-t", "0", name], env=env,
                       capture_output=True, timeout=60)
        process.communicate(timeout=60)


# --- 1. Descriptors: nothing of the host's beyond stdin, stdout and stderr ---------------------
# No switch turns this off. Mutation-checked by hand: with the closing of descriptors removed
# from the run/exec/init paths, each of these prints ESCAPED and the file appears in host_dir
# (as on main before the fix: `exec 9</; minirun run hello sh -c 'echo x > /proc/self/fd/9/tmp/x'`).

@pytest.mark.parametrize("flags", [(), ("-u", "nobody"), ("--init",)], ids=["root", "nobody", "init"])
def test_no_descriptor_of_the_host_reaches_the_container(minirun_env, probe, host_dir, flags):
    directory, fd = host_dir
    result = run(minirun_env, "run", *flags, probe, "escape_probe", "fds", pass_fds=(fd,))
    assert outcome(result) == "BLOCKED - no descriptor above 2"
    assert list(directory.iterdir()) == []


def test_no_descriptor_of_the_host_reaches_an_exec(minirun_env, probe, host_dir):
    directory, fd = host_dir
    with running(minirun_env, "fds", probe, "sleep", "60"):
        result = run(minirun_env, "exec", "fds", "escape_probe", "fds", pass_fds=(fd,))
    assert outcome(result) == "BLOCKED - no descriptor above 2"
    assert list(directory.iterdir()) == []


# --- 2. Devices: none of the host's, made or opened --------------------------------------------

@pytest.fixture
def loop_device(tmp_path):
    """A loop device of the host bound to a file that starts with a marker: (major, minor)."""
    backing = tmp_path / "disk"
    backing.write_bytes(b"MARKER-OF-THE-HOST-DISK" + bytes(65536))
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                            text=True, check=True).stdout.strip()
    yield os.major(os.stat(device).st_rdev), os.minor(os.stat(device).st_rdev)
    subprocess.run(["losetup", "--detach", device], check=True)


def test_a_host_block_device_cannot_be_read(minirun_env, probe, loop_device):
    major, minor = map(str, loop_device)
    result = run(minirun_env, "run", probe, "escape_probe", "device", "b", major, minor, "r")
    assert outcome(result).startswith("BLOCKED EPERM"), outcome(result)
    # Mutation check: --privileged has no device list (and all capabilities): the disk is read.
    result = run(minirun_env, "run", "--privileged", probe, "escape_probe", "device", "b", major, minor, "r")
    assert outcome(result).startswith("ESCAPED") and "MARKER-OF-THE-HOST-DISK" in result.stdout


def test_the_host_kernel_log_cannot_be_written(minirun_env, probe):
    token = f"minirun-escape-test-{os.urandom(6).hex()}"
    result = run(minirun_env, "run", probe, "escape_probe", "device", "c", "1", "11", "w", token)
    assert outcome(result).startswith("BLOCKED EPERM"), outcome(result)
    assert token not in host_kernel_log()
    result = run(minirun_env, "run", "--privileged", probe, "escape_probe", "device", "c", "1", "11", "w", token)
    assert outcome(result).startswith("ESCAPED")     # the write went through
    # (Whether the line then shows in dmesg is up to the kernel's rate limit on /dev/kmsg
    # writers, printk.devkmsg=ratelimit, which other writers on the machine share.)


def host_kernel_log() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("device", [("c", "10", "232", "rw"), ("c", "10", "237", "rw"),
                                    ("c", "5", "1", "w"), ("c", "4", "1", "w")],
                         ids=["kvm", "loop-control", "console", "tty1"])
def test_host_character_devices_cannot_be_opened(minirun_env, probe, device):
    result = run(minirun_env, "run", probe, "escape_probe", "device", *device)
    assert outcome(result).startswith("BLOCKED EPERM"), outcome(result)
    result = run(minirun_env, "run", "--privileged", probe, "escape_probe", "device", *device)
    assert outcome(result).startswith("ESCAPED"), outcome(result)


def test_the_allowed_devices_still_work(minirun, probe):
    # The control: the list lets through what every program needs.
    result = minirun("run", probe, "sh", "-c", "head -c 4 /dev/zero | wc -c; echo x > /dev/null; "
                     "head -c 4 /dev/urandom | wc -c")
    assert result.stdout.split() == ["4", "4"] and result.returncode == 0, result.stderr


# --- 3. cgroups: the container's own, in every hierarchy ---------------------------------------
# No switch turns the placement off. Mutation-checked by hand: with the container joined to its
# cgroup only in memory, cpu, cpuacct and pids (main before the fix), the first test lists the
# other hierarchies as "/" and the second prints "ESCAPED mounted the host's root ...".

def test_the_container_is_in_its_own_cgroup_in_every_hierarchy(minirun_env, probe):
    with running(minirun_env, "placed", probe, "sleep", "60") as (_, record):
        lines = Path(f"/proc/{record['pid']}/cgroup").read_text().splitlines()
    left_in_the_host_root = [line for line in lines if line.split(":", 2)[2] == "/"]
    assert left_in_the_host_root == [], lines
    assert all(record["id"] in line for line in lines), lines


@pytest.mark.parametrize("hierarchy", ["freezer", "cgroup2"])
def test_a_new_cgroup_namespace_sees_only_the_containers_own_cgroup(minirun, probe, hierarchy):
    # Seccomp off, so that unshare(CLONE_NEWUSER) is allowed and the placement alone is tested.
    result = minirun("run", *UNCONFINED, probe, "escape_probe", "cgroupfs", hierarchy)
    assert "its root is the container's own cgroup" in outcome(result), outcome(result)
    result = minirun("run", probe, "escape_probe", "cgroupfs", hierarchy)
    assert outcome(result).startswith("BLOCKED EPERM unshare"), outcome(result)


def test_the_container_cannot_rewrite_its_own_limits(minirun, probe):
    result = minirun("run", "--memory", "64M", probe, "escape_probe", "cgroup-limit")
    assert outcome(result).startswith("BLOCKED EPERM unshare"), outcome(result)
    # Mutation check: without the filter a new user namespace is root over a new cgroupfs
    # mount of the container's own cgroup, and writes its memory limit (back, unchanged).
    result = minirun("run", "--memory", "64M", *UNCONFINED, probe, "escape_probe", "cgroup-limit")
    assert not outcome(result).startswith("BLOCKED EPERM unshare"), outcome(result)


# --- 4. System calls: a seccomp filter ---------------------------------------------------------

def seccomp_mode(result) -> str:
    assert result.returncode == 0, result.stderr
    return next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("Seccomp:"))


def test_the_container_runs_under_a_seccomp_filter(minirun, probe):
    for flags in ((), ("-u", "nobody"), ("--init",)):
        result = minirun("run", *flags, probe, "cat", "/proc/self/status")
        assert seccomp_mode(result) == "2", (flags, result.stdout, result.stderr)
    assert seccomp_mode(minirun("run", *UNCONFINED, probe, "cat", "/proc/self/status")) == "0"
    assert seccomp_mode(minirun("run", "--privileged", probe, "cat", "/proc/self/status")) == "0"


def test_an_exec_runs_under_the_seccomp_filter(minirun, minirun_env, probe):
    with running(minirun_env, "filtered", probe, "sleep", "60"):
        assert seccomp_mode(minirun("exec", "filtered", "cat", "/proc/self/status")) == "2"
        assert outcome(minirun("exec", "filtered", "escape_probe", "userns")).startswith("BLOCKED EPERM")


@pytest.mark.parametrize("route", ["userns", "perf", "userfaultfd", "io_uring"])
def test_system_calls_a_container_has_no_use_for_are_refused(minirun, probe, route):
    result = minirun("run", probe, "escape_probe", route)
    assert outcome(result).startswith("BLOCKED EPERM"), outcome(result)
    result = minirun("run", *UNCONFINED, probe, "escape_probe", route)
    assert outcome(result).startswith("ESCAPED"), outcome(result)


def test_bpf_is_refused(minirun, probe):
    # Capabilities refuse it too (no CAP_BPF or CAP_SYS_ADMIN, and the host's
    # unprivileged_bpf_disabled): so no mutation check by seccomp alone. --privileged has both.
    result = minirun("run", probe, "escape_probe", "bpf")
    assert outcome(result).startswith("BLOCKED EPERM"), outcome(result)
    result = minirun("run", "--privileged", probe, "escape_probe", "bpf")
    assert outcome(result).startswith("ESCAPED"), outcome(result)


@pytest.fixture
def key_of_host_root():
    """A key in the host root's user keyring (@u of uid 0, one for the whole machine):
    add_key(2), removed again with keyctl(KEYCTL_UNLINK)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    description = f"minirun-escape-test-{os.urandom(6).hex()}".encode()
    key = libc.syscall(248, b"user", description, b"secret", 6, -4)     # add_key, @u
    if key < 0:
        pytest.fail(f"add_key: {os.strerror(ctypes.get_errno())}")
    yield description.decode()
    libc.syscall(250, 9, ctypes.c_long(key), -4)                          # keyctl(UNLINK, key, @u)


def test_the_host_roots_keyring_cannot_be_read(minirun, probe, key_of_host_root):
    result = minirun("run", probe, "escape_probe", "keyring")
    assert outcome(result).startswith("BLOCKED EPERM keyctl"), outcome(result)
    result = minirun("run", *UNCONFINED, probe, "escape_probe", "keyring")
    assert outcome(result).startswith("ESCAPED") and key_of_host_root in result.stdout, outcome(result)


# --- Capabilities and masks: what --privileged, --cap-add and --cap-drop change ---------------

def capabilities(result, field="CapEff") -> int:
    assert result.returncode == 0, result.stderr
    return int(next(line.split()[1] for line in result.stdout.splitlines()
                    if line.startswith(field + ":")), 16)


DOCKER_DEFAULT = 0xa80425fb     # moby's fourteen: chown ... setfcap (capabilities(7) numbers)
CAP_SYS_ADMIN, CAP_NET_RAW, CAP_MKNOD = 21, 13, 27


def test_capabilities_are_dockers_default_and_can_be_changed(minirun, probe):
    status = lambda *flags: minirun("run", *flags, probe, "cat", "/proc/self/status")
    assert capabilities(status()) == DOCKER_DEFAULT
    assert capabilities(status(), "CapBnd") == DOCKER_DEFAULT
    assert capabilities(status("--cap-drop", "ALL")) == 0
    assert capabilities(status("--cap-drop", "NET_RAW")) == DOCKER_DEFAULT & ~(1 << CAP_NET_RAW)
    assert capabilities(status("--cap-add", "SYS_ADMIN")) == DOCKER_DEFAULT | 1 << CAP_SYS_ADMIN
    # --privileged keeps every capability minirun itself has (its caller's bounding set).
    own = capabilities(subprocess.CompletedProcess([], 0, Path("/proc/self/status").read_text()), "CapBnd")
    assert capabilities(status("--privileged"), "CapBnd") == own


def test_without_cap_mknod_no_device_can_be_made(minirun, probe):
    result = minirun("run", "--cap-drop", "MKNOD", probe, "escape_probe", "device", "c", "1", "3", "r")
    assert outcome(result).startswith("BLOCKED EPERM mknod"), outcome(result)
    result = minirun("run", probe, "escape_probe", "device", "c", "1", "3", "r")    # /dev/null: allowed
    assert outcome(result).startswith("ESCAPED opened c 1:3"), outcome(result)


def test_privileged_says_so_on_stderr(minirun, probe):
    result = minirun("run", "--privileged", probe, "true")
    assert result.returncode == 0 and "privileged" in result.stderr.lower(), result.stderr


def mounts_of(result) -> dict[str, str]:
    """Mount point -> its options, from /proc/self/mountinfo (proc(5)); the last one wins."""
    assert result.returncode == 0, result.stderr
    mounts = {}
    for line in result.stdout.splitlines():
        fields = line.split(" - ")[0].split()
        mounts[fields[4]] = fields[5]
    return mounts


def test_host_paths_are_masked_and_read_only_unless_privileged(minirun, probe):
    masked = [path for path in ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/sys/firmware")
              if os.path.exists(path)]
    mounts = mounts_of(minirun("run", probe, "cat", "/proc/self/mountinfo"))
    assert all(path in mounts for path in masked), mounts
    assert "ro" in mounts["/proc/sys"].split(","), mounts
    mounts = mounts_of(minirun("run", "--privileged", probe, "cat", "/proc/self/mountinfo"))
    assert not any(path in mounts for path in masked), mounts
    assert "/proc/sys" not in mounts, mounts


# --- 5. The store: closed to the host's users --------------------------------------------------
# No switch reopens it. Mutation-checked by hand: with `chmod 755` on the store root (main
# before the fix), the set-user-ID copy runs as euid 0 for nobody, and nobody lists the layers.

@pytest.fixture
def open_parent():
    """A directory any host user may pass through, for a store that must keep them out itself
    (pytest's own temporary directories are 0700, which would hide any mistake)."""
    parent = Path(tempfile.mkdtemp(prefix="minirun-escape-"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent)


def as_nobody(*command) -> subprocess.CompletedProcess:
    return subprocess.run(command, user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True)


def test_the_store_is_closed_to_host_users(minirun_env, open_parent):
    env = {**minirun_env, "MINIRUN_ROOT": str(open_parent / "store")}
    assert run(minirun_env, "run", "hello", "true", env=env).returncode == 0
    root = open_parent / "store"
    assert root.stat().st_mode & 0o077 == 0, oct(root.stat().st_mode)
    listing = as_nobody(sys.executable, "-c", f"import os; print(os.listdir({str(root / 'layers')!r}))")
    assert listing.returncode != 0 and "PermissionError" in listing.stderr, listing.stdout


def test_a_setuid_file_made_in_a_container_is_no_way_up_for_a_host_user(
        minirun_env, open_parent, probe_binary):
    env = {**minirun_env, "MINIRUN_ROOT": str(open_parent / "store")}
    assert run(minirun_env, "run", "hello", "true", env=env).returncode == 0   # minirun makes the store
    image = hello_with(Store(open_parent / "store"), probe_binary, "escape-probe")
    plant = "cp /usr/local/bin/escape_probe /tmp/suid && chmod 4755 /tmp/suid && echo ready && exec sleep 60"
    with running(env, "planter", image, "sh", "-c", plant) as (planter, _):
        assert read_line(planter) == "ready\n"
        planted = list((open_parent / "store").glob("containers/*/upper/tmp/suid"))
        assert planted and planted[0].stat().st_mode & 0o4000     # it is there, set-user-ID root
        try:
            ran = as_nobody(str(planted[0]), "ids").stdout
        except PermissionError as error:                        # execve(2): EACCES on the path
            ran = str(error)
    assert "euid=0" not in ran, ran


# --- 6. --init: an init of the container's own, not the host's Python --------------------------
# No switch brings the old init back. Mutation-checked by hand: with --init run as the forked
# Python process (main before the fix), all four print ESCAPED (the host's PID namespace held
# as fd 7, ptrace allowed, /proc/1/exe the host's python3.11, the host's environment).

SECRET = "MINIRUN_ESCAPE_TEST_HOST_ONLY"


@pytest.mark.parametrize("route", ["pid1-fds", "ptrace1", "exe1"])
def test_the_init_gives_nothing_of_the_host_away(minirun_env, probe, route):
    result = run(minirun_env, "run", "--init", probe, "escape_probe", route,
                 env={**minirun_env, SECRET: "1"})
    assert outcome(result).startswith("BLOCKED"), outcome(result)


def test_the_init_has_the_containers_environment_not_the_hosts(minirun_env, probe):
    result = run(minirun_env, "run", "--init", probe, "escape_probe", "environ1", SECRET,
                 env={**minirun_env, SECRET: "1"})
    assert outcome(result).startswith("BLOCKED"), outcome(result)


def test_an_exec_into_an_init_container_gets_the_containers_environment(minirun_env, probe):
    env = {**minirun_env, SECRET: "1"}
    with running(env, "initenv", "--init", "-e", "CONTAINER_VAR=yes", probe, "sleep", "60"):
        result = run(minirun_env, "exec", "initenv", "env")
    assert "CONTAINER_VAR=yes" in result.stdout, result.stdout + result.stderr
    assert SECRET not in result.stdout, result.stdout


# --- 8. A process on its way in: the runtime's, until its exec ---------------------------------
# `minirun exec`'s child is born in the container's namespaces and drops its privileges before
# its execve: meanwhile it is the runtime's Python, with the host caller's environment, the
# host's interpreter as its exe and the runtime's descriptors. The handshake is deterministic:
# a test-only wrapper (HELD, run as minirun's __main__) holds the child at a given point, here
# the worst one, after its capabilities are cut to the container's (so that the
# container's root may ptrace it if it is dumpable) and before its descriptors are closed and
# its filter installed, reports its PID in the container, and waits for the test's byte.
# Mutation-checked: with spawn.fork's not_dumpable() removed, every route prints ESCAPED.

HELD = """
import os, sys
from minirun import security
ready, release, at = int(sys.argv.pop(1)), int(sys.argv.pop(1)), sys.argv.pop(1)
original, first = getattr(security, at), [True]
def held(*args):
    if os.getppid() == 0 and first:     # in the container's PID namespace (its parent, outside,
        first.clear()                   # reads as 0), the first time
        os.write(ready, b"%d\\n" % os.getpid())
        os.read(release, 1)
    return original(*args)
setattr(security, at, held)
from minirun.cli import main
main()
"""


@contextlib.contextmanager
def held_exec(env: dict, *args, at: str = "close_inherited_descriptors"):
    """`minirun exec ARGS...` held where its child, in the container's PID namespace, first
    calls security.`at`: yields (its PID inside the container, the Popen); leaving the block
    lets it go on and waits for it."""
    ready_read, ready_write = os.pipe()
    release_read, release_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", HELD, str(ready_write), str(release_read), at, "exec", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        pass_fds=(ready_write, release_read))
    os.close(ready_write)
    os.close(release_read)
    try:
        with os.fdopen(ready_read) as ready:
            line = ready.readline()
        assert line, process.communicate(timeout=60)
        yield int(line), process
    finally:
        os.write(release_write, b"x")
        os.close(release_write)
        process.wait(timeout=60)


def test_a_process_on_its_way_in_gives_nothing_of_the_host_away(minirun_env, probe):
    env = {**minirun_env, SECRET: "1"}
    with running(env, "watched", probe, "sleep", "60"):
        with held_exec(env, "watched", "escape_probe", "dumpable") as (pid, entering):
            result = run(minirun_env, "exec", "watched", "escape_probe", "peek", str(pid))
            lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
            assert set(lines) == {"environ", "exe", "fds", "ptrace"}, outcome(result)
            assert all(line.startswith("BLOCKED") for line in lines.values()), result.stdout
        out, err = entering.communicate(timeout=60)
    # Once exec'd, the command is an ordinary process again (execve(2) resets the flag).
    assert out.strip() == "dumpable=1", out + err
    assert entering.returncode == 0, err


# Not dumpable is no protection from a container given CAP_SYS_PTRACE: what matters is where the
# process is while it is visible. An intermediate process joins the container's cgroup and
# namespaces first and clones it there (spawn.fork, by_intermediate), as runc's nsexec does,
# so the exec is held at its very first step in the container's PID namespace (arming its
# parent-death signal, before even reading `go`). Mutation-checked: with the PID namespace
# joined by the runtime and the rest by the child (main before this), mnt, uts, ipc, net and
# cgroup all read OTHER: the host's, open to the container's ptrace.

def test_a_process_on_its_way_in_is_born_inside_the_container(minirun_env, probe):
    with running(minirun_env, "traced", "--cap-add", "SYS_PTRACE", probe, "sleep", "60"):
        with held_exec(minirun_env, "traced", "true", at="die_with_parent") as (pid, entering):
            result = run(minirun_env, "exec", "traced", "escape_probe", "where", str(pid))
            lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
            assert set(lines) == {"mnt", "uts", "ipc", "net", "cgroup", "pid", "cgroup-of"}, \
                outcome(result)
            assert all(line.startswith("same ") for line in lines.values()), result.stdout
        entering.communicate(timeout=60)
    assert entering.returncode == 0


# --- 9. Symbolic links in the image steer no mount out of the root ------------------------------
# Mount targets are resolved on the host's side, before pivot_root: each link is followed as if
# the root were / (rootfs.inside_root, as runc's filepath-securejoin). Mutation-checked: with
# the old refusal back, the first three fail ("goes through a symbolic link"); with the links
# followed by the host's kernel instead (the target joined, unresolved), the volume for /data
# lands in the host's own /etc.

@pytest.fixture(scope="module")
def linked(store_root) -> str:
    """`hello` plus links: /var/run -> ../run (as Debian's), /data -> /etc (an absolute path,
    the host's own if followed from the host), /up -> ../../../.. (out, if it could), /loop."""
    import hashlib
    store = Store(store_root)
    hello = store.get("hello")
    tree = store.scratch_dir()
    (tree / "var").mkdir()
    (tree / "var/run").symlink_to("../run")
    (tree / "data").symlink_to("/etc")
    (tree / "up").symlink_to("../../../../tmp")
    (tree / "loop").symlink_to("loop")
    layer = store.commit_layer(tree, hashlib.sha256(b"links: var/run data up loop").hexdigest())
    store.save_image("linked", [path.name for path in hello.layers] + [layer], hello.config)
    return "linked"


@pytest.mark.parametrize("target, inside", [("/var/run/app", "/run/app"),
                                            ("/data/NAME", "/etc/NAME"),
                                            ("/up/NAME", "/tmp/NAME")],
                         ids=["relative", "absolute-host-etc", "dotdot"])
def test_a_volume_through_a_link_lands_inside_the_root(minirun_env, linked, tmp_path, target, inside):
    name = f"minirun-test-{os.getpid()}-{tmp_path.name}"
    target, inside = target.replace("NAME", name), inside.replace("NAME", name)
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "marker").write_text("from the volume\n")
    result = run(minirun_env, "run", "--rm", "-v", f"{volume}:{target}", linked,
                 "cat", f"{inside}/marker")
    assert (result.returncode, result.stdout) == (0, "from the volume\n"), result.stderr
    assert not os.path.lexists(f"/etc/{name}") and not os.path.lexists(f"/tmp/{name}")


def test_a_link_loop_is_one_line(minirun_env, linked, tmp_path):
    result = run(minirun_env, "run", "--rm", "-v", f"{tmp_path}:/loop/app", linked, "true")
    assert result.returncode == 125 and result.stderr.count("\n") == 1, result.stderr
    assert "too many levels of symbolic links" in result.stderr


# --- 7. An image name is a name, never a path --------------------------------------------------

@pytest.mark.parametrize("name", ["../images/hello", "./hello", "hello/../hello"])
def test_an_image_name_is_not_a_path(minirun, minirun_env, store_root, name):
    containers = store_root / "containers"
    before = sorted(os.listdir(containers)) if containers.is_dir() else []
    result = minirun("run", name, "true")
    assert result.returncode == 125, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and name in result.stderr, result.stderr
    assert "Hello" not in result.stdout
    assert (sorted(os.listdir(containers)) if containers.is_dir() else []) == before
    assert list(Path(minirun_env["MINIRUN_STATE"]).iterdir()) == []
