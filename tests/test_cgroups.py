"""Resource limits: minirun.cgroups on its own (the real v1 driver of this host with plain
processes; the v2 driver's writes against a v2-shaped tree, and its join, kill, removal and view
on this host's real cgroup2 tree; the mount table), then real containers.

Every cgroup a test makes itself has an id starting with this run's prefix, and a container's
id is read from its --explain line, so the tests check only their own cgroups: other people's
tests may be making and removing cgroups under minirun/ at the same time.
"""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import read_line, wait_for_container

from minirun import cgroups, namespaces
from minirun.errors import RuntimeFailure

PREFIX = f"test-{uuid.uuid4().hex[:8]}"
MiB = 1024 * 1024


def new_id(what: str) -> str:
    return f"{PREFIX}-{what}-{uuid.uuid4().hex[:6]}"


def own_cgroups(pattern: str = f"{PREFIX}-*") -> list[Path]:
    """This test run's cgroups (or those matching `pattern`), in every hierarchy of the host."""
    return sorted(path for tree in cgroups._mounts().hierarchies()
                  for path in (tree / cgroups.PARENT).glob(pattern))


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    left = own_cgroups()
    cgroups.remove_stale(set(), dead_ids={path.name for path in left})   # after a failed test
    assert left == []


@pytest.fixture
def v1_host():
    if cgroups.host_uses_v2():
        pytest.skip("this host runs cgroup v2; the v1 tests need a v1 or hybrid host")


def start_in(cgroup, command: list[str]) -> subprocess.Popen:
    """Start `command` in `cgroup`: the forked child joins it before it execs, as in minirun."""
    return subprocess.Popen(command, preexec_fn=cgroup.join,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_in(cgroup, command: list[str]) -> subprocess.CompletedProcess:
    process = start_in(cgroup, command)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, out.decode(), err.decode())


def python(code: str) -> list[str]:
    return [sys.executable, "-S", "-c", code]


# --- Limits -----------------------------------------------------------------------------------

def test_limits_reject_cpu_quotas_the_kernel_cannot_enforce():
    with pytest.raises(RuntimeFailure, match="too small"):
        cgroups.Limits(cpus=0.001)
    with pytest.raises(RuntimeFailure, match="more than the"):
        cgroups.Limits(cpus=os.cpu_count() + 1)
    assert cgroups.Limits(memory=32 * MiB, cpus=0.01, pids=1).cpus == 0.01


# --- The real v1 driver on this host ----------------------------------------------------------

def test_create_writes_the_limits_and_remove_leaves_nothing(v1_host):
    cgroup = cgroups.create(new_id("limits"), cgroups.Limits(memory=32 * MiB, cpus=0.5, pids=20))
    paths = cgroup.paths
    assert (paths["memory"] / "memory.limit_in_bytes").read_text() == f"{32 * MiB}\n"
    assert (paths["cpu"] / "cpu.cfs_quota_us").read_text() == "50000\n"
    assert (paths["cpu"] / "cpu.cfs_period_us").read_text() == "100000\n"
    assert (paths["pids"] / "pids.max").read_text() == "20\n"
    # One directory in every hierarchy the host mounts, limits or not: here 9 v1 trees + cgroup2.
    assert own_cgroups() == sorted(cgroup.directories())
    assert [path.parent.parent for path in cgroup.directories()] == cgroups._mounts().hierarchies()
    cgroup.remove()
    cgroup.remove()                                     # idempotent
    assert own_cgroups() == []
    # Removed under its owner's feet (by a gc elsewhere): its usage reads as nothing, no error.
    assert cgroup.usage() == cgroups.Usage(None, None, False, 0, 0.0, 0)


def test_no_limits_still_makes_a_cgroup_to_count_usage(v1_host):
    cgroup = cgroups.create(new_id("nolimits"), cgroups.Limits())
    try:
        result = run_in(cgroup, python("x = b'a' * (8 << 20)"))
        assert result.returncode == 0, result.stderr
        usage = cgroup.usage()
        assert usage.peak_memory >= 8 * MiB
        assert usage.cpu_seconds > 0
        assert (cgroup.paths["pids"] / "pids.max").read_text() == "max\n"
    finally:
        cgroup.remove()


def run_under_32M(megabytes: int):
    """A Python process that allocates `megabytes` in a cgroup limited to 32M: its result and usage."""
    cgroup = cgroups.create(new_id("memory"), cgroups.Limits(memory=32 * MiB))
    try:
        return run_in(cgroup, python(f"x = b'a' * ({megabytes} << 20)")), cgroup.usage()
    finally:
        cgroup.remove()


def test_memory_hog_above_the_limit_is_oom_killed(v1_host):
    result, usage = run_under_32M(64)
    assert result.returncode == -signal.SIGKILL
    assert usage.oom_killed
    assert 16 * MiB < usage.peak_memory <= 32 * MiB


def test_process_below_the_memory_limit_runs(v1_host):
    result, usage = run_under_32M(8)
    assert result.returncode == 0, result.stderr
    assert not usage.oom_killed
    assert 8 * MiB <= usage.peak_memory <= 32 * MiB


FORK_UNTIL_REFUSED = """
import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            os.closerange(0, 3)         # let the test read the parent's output to its end
            time.sleep(120)
            os._exit(0)
        children += 1
except OSError as error:
    print(children, error.errno, flush=True)
"""


def test_pids_limit_refuses_forks_with_eagain_and_the_host_is_unaffected(v1_host):
    cgroup = cgroups.create(new_id("pids"), cgroups.Limits(pids=20))
    try:
        result = run_in(cgroup, python(FORK_UNTIL_REFUSED))
        children, error = map(int, result.stdout.split())
        # Its 19 children still sleep in the cgroup, holding the limit: the host forks freely.
        assert len(cgroups._pids_in(cgroup.paths["pids"])) == 19
        assert subprocess.run(["true"]).returncode == 0
        usage = cgroup.usage()
    finally:
        cgroup.remove()                                 # kills the 19 sleepers
    assert (children, error) == (19, errno.EAGAIN)      # 1 parent + 19 children = pids.max
    assert usage.pids_refused >= 1


def test_a_tenth_of_a_cpu_throttles_a_busy_loop(v1_host):
    # A tenth, not a half: throttling shows only if the loop gets its quota's worth of CPU in a
    # period, and on a machine busy with other tests it may get less than half a core.
    cgroup = cgroups.create(new_id("cpu"), cgroups.Limits(cpus=0.1))
    busy = start_in(cgroup, ["/bin/sh", "-c", "while :; do :; done"])
    try:
        stat = cgroup.paths["cpu"] / "cpu.stat"
        deadline = time.monotonic() + 30            # a bound on a hung test, not a measurement
        while cgroups._read_keyed(stat)["nr_throttled"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy.kill()
        busy.wait()
        counters, usage = cgroups._read_keyed(stat), cgroup.usage()    # final: nothing runs
    finally:
        busy.kill()
        cgroup.remove()
    # The loop wants every period whole; it got 10 ms of it and then had to wait, ...
    assert usage.throttled_periods == counters["nr_throttled"] >= 5
    assert usage.throttled_seconds > 0
    # ... and never more than its quota: 10 ms of CPU per period (plus one period of slack).
    assert usage.cpu_seconds <= 0.010 * (counters["nr_periods"] + 1)


def test_remove_kills_whatever_still_runs(v1_host):
    cgroup = cgroups.create(new_id("leftover"), cgroups.Limits())
    sleeper = start_in(cgroup, ["sleep", "300"])
    assert f"{cgroups.PARENT}/{cgroup.paths['memory'].name}" in \
        Path(f"/proc/{sleeper.pid}/cgroup").read_text()       # it joined before it exec'd
    cgroup.remove()
    assert sleeper.wait(timeout=10) == -signal.SIGKILL


def test_failed_create_leaves_nothing_and_never_touches_an_existing_cgroup(v1_host):
    taken = new_id("taken")
    first = cgroups.create(taken, cgroups.Limits(pids=5))
    try:
        with pytest.raises(RuntimeFailure, match="exists already"):
            cgroups.create(taken, cgroups.Limits(pids=7))
        assert all(path.is_dir() for path in first.paths.values())
        assert (first.paths["pids"] / "pids.max").read_text() == "5\n"
    finally:
        first.remove()

    # A limit the parser lets through but the kernel refuses: pids.max stops at 4194304.
    with pytest.raises(RuntimeFailure, match="cannot set the pids limit: writing 1000000000"):
        cgroups.create(new_id("refused"), cgroups.Limits(memory=32 * MiB, pids=10**9))
    assert own_cgroups() == []


def test_a_create_that_fails_last_leaves_nothing_in_any_hierarchy(v1_host, monkeypatch):
    # The device list is written last, after a directory in every hierarchy and the limits.
    monkeypatch.setattr(cgroups.devices, "v1_writes", lambda rules=None: [("devices.allow", "x 1:3 rwm")])
    with pytest.raises(RuntimeFailure, match=r"cannot restrict devices \(x 1:3 rwm\)"):
        cgroups.create(new_id("late"), cgroups.Limits(memory=32 * MiB, pids=10))
    assert own_cgroups() == []


def test_remove_stale(v1_host):
    live, dead, young, old, busy_old = (new_id(name) for name in
                                        ("live", "dead", "young", "old", "busyold"))
    made = {name: cgroups.create(name, cgroups.Limits()) for name in (live, dead, young, old,
                                                                      busy_old)}
    sleepers = {}
    for name in (live, dead, busy_old):
        sleepers[name] = start_in(made[name], ["sleep", "300"])
    an_hour_ago = time.time() - 3600
    for name in (old, busy_old, live, dead):
        for path in made[name].directories():
            os.utime(path, (an_hour_ago, an_hour_ago))
    try:
        cgroups.remove_stale({live}, dead_ids={dead})
        # (Not asserted on what it returns: a concurrent gc elsewhere may remove `old` first.)
        assert sleepers[dead].wait(timeout=10) == -signal.SIGKILL
        assert {p.name for p in own_cgroups()} == {live, young, busy_old}
        assert sleepers[live].poll() is None and sleepers[busy_old].poll() is None
    finally:
        for cgroup in made.values():
            cgroup.remove()


def test_mount_view_shows_the_container_its_own_tree_read_only(v1_host, tmp_path):
    """In a child: join the cgroup, unshare the cgroup and mount namespaces, mount the view."""
    cgroup = cgroups.create(new_id("view"), cgroups.Limits(memory=48 * MiB))
    view = tmp_path / "cgroup"
    view.mkdir()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # the child: report what it sees, as JSON
        try:
            cgroup.join()
            namespaces.unshare(namespaces.CLONE_NEWNS | namespaces.CLONE_NEWCGROUP)
            namespaces.mount(None, "/", None, namespaces.MS_REC | namespaces.MS_PRIVATE)
            cgroups.mount_view(str(view))
            seen = {"trees": sorted(os.listdir(view)),
                    "limit": (view / "memory" / "memory.limit_in_bytes").read_text(),
                    "proc_self_cgroup": Path("/proc/self/cgroup").read_text().splitlines()}
            for attempt in (lambda: (view / "memory" / "memory.limit_in_bytes").write_text("1"),
                            lambda: (view / "memory" / "child").mkdir(),
                            lambda: (view / "new").mkdir()):
                try:
                    attempt()
                    seen.setdefault("writable", True)
                except OSError as error:
                    seen.setdefault("errors", []).append(error.errno)
            os.write(report_write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    try:
        os.close(report_write)
        seen = json.loads(os.read(report_read, 65536))
        os.waitpid(pid, 0)
    finally:
        cgroup.remove()
    assert seen["trees"] == sorted(tree.name for tree in cgroups._mounts().hierarchies())
    assert seen["limit"] == f"{48 * MiB}\n"            # its own cgroup is the root it sees
    assert all(line.endswith(":/") for line in seen["proc_self_cgroup"])
    assert "writable" not in seen and seen["errors"] == [errno.EROFS] * 3


# --- Every hierarchy, and removal through cgroups made below ----------------------------------

def in_child_after_join(cgroup, look) -> dict:
    """Fork a child that joins `cgroup`, unshares the mount and cgroup namespaces, makes its
    mounts private and reports what look() returns, as JSON."""
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            cgroup.join()
            namespaces.unshare(namespaces.CLONE_NEWNS | namespaces.CLONE_NEWCGROUP)
            namespaces.mount(None, "/", None, namespaces.MS_REC | namespaces.MS_PRIVATE)
            os.write(report_write, json.dumps(look()).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    seen = json.loads(os.read(report_read, 1 << 20) or b"{}")
    os.close(report_read)
    os.waitpid(pid, 0)
    return seen


def test_a_fresh_writable_cgroup_mount_inside_reaches_only_the_container(v1_host, tmp_path):
    """What a container with CAP_SYS_ADMIN in a user namespace of its own could do: mount a new,
    writable cgroup filesystem of any hierarchy. Its root is the container's own cgroup, in
    every hierarchy: the host's cgroups (its freezer, its devices rules, process_api, other
    containers) cannot even be named."""
    cgroup = cgroups.create(new_id("fresh"), cgroups.Limits())
    mounts = cgroups._mounts()

    def look():
        seen = {}
        for tree in mounts.hierarchies():
            target = tmp_path / tree.name
            target.mkdir()
            fstype, names = ("cgroup2", None) if tree == mounts.unified else \
                ("cgroup", mounts.v1_options[tree])
            namespaces.mount(fstype, str(target), fstype, 0, names)     # writable
            seen[tree.name] = {"procs": (target / "cgroup.procs").read_text().split(),
                               "below": sorted(p.name for p in target.iterdir() if p.is_dir())}
        return seen

    try:
        seen = in_child_after_join(cgroup, look)
    finally:
        cgroup.remove()
    assert sorted(seen) == sorted(tree.name for tree in mounts.hierarchies())
    for tree, what in seen.items():
        assert len(what["procs"]) == 1, (tree, what)    # only the child: its cgroup is the root
        assert what["below"] == [], (tree, what)        # no minirun/, no process_api/


def make_below(directory: Path, *names: str) -> Path:
    """Make nested sub-cgroups below `directory`, as a nested runtime would; the deepest."""
    for name in names:
        directory = directory / name
        directory.mkdir()
        if (directory / "cpuset.cpus").exists():
            cgroups._inherit_cpuset(directory)
    return directory


def move_into(pid: int, directory: Path) -> None:
    (directory / "cgroup.procs").write_text(str(pid))


def test_remove_goes_depth_first_through_cgroups_made_below(v1_host):
    cgroup = cgroups.create(new_id("below"), cgroups.Limits(pids=10))
    sleeper = start_in(cgroup, ["sleep", "300"])
    made = []
    for directory in cgroup.directories():
        made.append(make_below(directory, "nested", "deeper"))
        move_into(sleeper.pid, made[-1])
        make_below(directory, "empty")
    assert all(f"/{cgroups.PARENT}/{cgroup.directories()[0].name}/nested/deeper\n" in line
               for line in Path(f"/proc/{sleeper.pid}/cgroup").read_text().splitlines(True))
    cgroup.remove()
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert own_cgroups() == []
    assert not any(path.exists() for path in made)


def test_gc_removes_a_dead_run_s_cgroups_with_what_was_made_below(v1_host):
    identifier = new_id("deadbelow")
    cgroup = cgroups.create(identifier, cgroups.Limits())
    sleeper = start_in(cgroup, ["sleep", "300"])
    for directory in cgroup.directories():
        move_into(sleeper.pid, make_below(directory, "x"))
    assert identifier in cgroups.remove_stale(set(), dead_ids={identifier})
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert own_cgroups() == []


def test_join_puts_the_process_in_its_own_cgroup_of_every_hierarchy(v1_host):
    cgroup = cgroups.create(new_id("every"), cgroups.Limits())
    sleeper = start_in(cgroup, ["sleep", "300"])
    try:
        lines = Path(f"/proc/{sleeper.pid}/cgroup").read_text().splitlines()
    finally:
        cgroup.remove()
    expected = f"/{cgroups.PARENT}/{cgroup.directories()[0].name}"
    assert len(lines) == len(cgroups._mounts().hierarchies())
    assert all(line.split(":", 2)[2] == expected for line in lines), lines


def cgroups_of_forked_child(cgroup, join: bool) -> list[str]:
    """/proc/self/cgroup as a child forked with cgroup.fork() reads it first thing, or after
    its join()."""
    report_read, report_write = os.pipe()
    pid = cgroup.fork()
    if pid == 0:
        try:
            if join:
                cgroup.join()
            os.write(report_write, Path("/proc/self/cgroup").read_bytes())
        finally:
            os._exit(0)
    os.close(report_write)
    try:
        return os.read(report_read, 1 << 16).decode().splitlines()
    finally:
        os.close(report_read)
        os.waitpid(pid, 0)


def born_and_joined(what: str) -> tuple[str, list[str], list[str]]:
    """A new cgroup's path below each tree's root, and /proc/self/cgroup of a child forked
    with cgroup.fork(): as it is born, and after its join()."""
    cgroup = cgroups.create(new_id(what), cgroups.Limits())
    try:
        if cgroup.unified is None:
            pytest.skip("no cgroup2 tree on this host")
        return (f"/{cgroups.PARENT}/{cgroup.unified.name}",
                cgroups_of_forked_child(cgroup, join=False),
                cgroups_of_forked_child(cgroup, join=True))
    finally:
        cgroup.remove()


def test_a_child_is_born_in_the_cgroup2_cgroup_and_joins_the_rest():
    """cgroup.fork(): clone3(CLONE_INTO_CGROUP) puts the child in the cgroup2 tree's cgroup
    before it runs a single step, so join() need not write cgroup.procs there (the slow write,
    see Cgroup.join); join() then puts it in the other hierarchies'."""
    expected, born, joined = born_and_joined("born")
    assert [line for line in born if line.startswith("0::")] == [f"0::{expected}"]
    assert all(line.split(":", 2)[2] == expected for line in joined), joined
    assert len(joined) == len(cgroups._mounts().hierarchies())


def test_where_clone3_cannot_the_child_is_forked_and_joins_by_writing(monkeypatch):
    """A kernel before 5.7, or a seccomp filter that makes clone3 fail with ENOSYS (as
    container engines' default filters do): a plain fork, and join() writes cgroup.procs."""
    def no_clone3(fd):
        raise OSError(errno.ENOSYS, "clone3: Function not implemented")
    monkeypatch.setattr(namespaces, "fork_into_cgroup", no_clone3)
    expected, born, joined = born_and_joined("noclone3")
    assert f"0::{expected}" not in born
    assert all(line.split(":", 2)[2] == expected for line in joined), joined


def test_cpuset_cgroups_get_their_parent_s_cpus_and_memory_nodes(v1_host):
    cgroup = cgroups.create(new_id("cpuset"), cgroups.Limits())
    try:
        root = cgroups._mounts().v1["cpuset"]
        for name in ("cpuset.cpus", "cpuset.mems"):
            assert (cgroup.paths["cpuset"] / name).read_text() == (root / name).read_text() != "\n"
    finally:
        cgroup.remove()


# --- The v2 driver, against a v2-shaped tree --------------------------------------------------

# The files the kernel makes in a new v2 cgroup whose parent enables memory, cpu and pids.
V2_FILES = {"cgroup.procs": "", "cgroup.kill": "", "cgroup.subtree_control": "",
            "cgroup.controllers": "", "memory.max": "max", "memory.swap.max": "max",
            "memory.peak": "0", "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            "cpu.max": "max 100000", "cpu.stat": "usage_usec 0\nnr_periods 0\n",
            "pids.max": "max", "pids.events": "max 0\n"}


def create_v2(root: Path, name: str, limits: cgroups.Limits) -> cgroups.CgroupV2:
    """The v2 driver's create on a pure v2 host whose cgroup2 tree is at `root`. (The device
    program needs a real cgroup2 directory: tests/test_devices.py and the v2 guest check it.)"""
    mounts = cgroups._Mounts(unified=root, v1={}, v1_options={})
    return cgroups.CgroupV2.create(name, limits, mounts, allow_all_devices=True)


@pytest.fixture
def v2_tree(tmp_path, monkeypatch):
    """A directory shaped like a cgroup2 root. mkdir in it acts like the kernel's (it makes the
    interface files) and so does rmdir (it takes them away), so the driver runs unchanged."""
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text("memory pids\n")      # systemd left out cpu
    real_make_dir, real_rmdir = cgroups._make_dir, os.rmdir

    def make_cgroup(path, exist_ok=False):
        real_make_dir(path, exist_ok)
        for name, content in V2_FILES.items():
            if not (path / name).exists():
                (path / name).write_text(content)

    def remove_cgroup(path):
        for name in V2_FILES:
            Path(path, name).unlink(missing_ok=True)
        real_rmdir(path)

    monkeypatch.setattr(cgroups, "_make_dir", make_cgroup)
    monkeypatch.setattr(os, "rmdir", remove_cgroup)
    return root


def test_v2_driver_enables_controllers_and_writes_limits(v2_tree):
    cgroup = create_v2(v2_tree, "c1", cgroups.Limits(memory=32 * MiB, cpus=0.5, pids=20))
    assert cgroup.path == v2_tree / "minirun" / "c1"
    assert (v2_tree / "cgroup.subtree_control").read_text() == "+cpu"    # only what was missing
    assert (v2_tree / "minirun" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (cgroup.path / "memory.max").read_text() == str(32 * MiB)
    assert (cgroup.path / "memory.swap.max").read_text() == "0"
    assert (cgroup.path / "cpu.max").read_text() == "50000 100000"
    assert (cgroup.path / "pids.max").read_text() == "20"
    cgroup.join()
    assert (cgroup.path / "cgroup.procs").read_text() == "0"      # "0": the writer itself


def test_v2_driver_without_limits_writes_none(v2_tree):
    cgroup = create_v2(v2_tree, "c2", cgroups.Limits())
    for name in ("memory.max", "memory.swap.max", "cpu.max", "pids.max"):
        assert (cgroup.path / name).read_text() == V2_FILES[name]


def test_v2_driver_reads_usage(v2_tree):
    cgroup = create_v2(v2_tree, "c3", cgroups.Limits(memory=32 * MiB))
    (cgroup.path / "memory.peak").write_text(f"{32 * MiB}\n")
    (cgroup.path / "memory.events").write_text("low 0\nhigh 0\nmax 77\noom 1\noom_kill 1\n")
    (cgroup.path / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n"
                                          "system_usec 500000\nnr_periods 30\n"
                                          "nr_throttled 25\nthrottled_usec 1250000\n")
    (cgroup.path / "pids.events").write_text("max 3\n")
    assert cgroup.usage() == cgroups.Usage(peak_memory=32 * MiB, cpu_seconds=1.5,
                                           oom_killed=True, throttled_periods=25,
                                           throttled_seconds=1.25, pids_refused=3)


def test_v2_driver_remove_kills_through_cgroup_kill_then_removes(v2_tree, monkeypatch):
    other = create_v2(v2_tree, "c3", cgroups.Limits())
    cgroup = create_v2(v2_tree, "c4", cgroups.Limits())
    (cgroup.path / "cgroup.procs").write_text("4242\n")     # a process is still in it
    writes = []
    real_write, real_rmdir = cgroups._write, os.rmdir

    def write(path, value, *rest, **named):
        writes.append((path.name, value))
        if path.name == "cgroup.kill":                  # as the kernel: all killed, and gone
            (path.parent / "cgroup.procs").write_text("")
        return real_write(path, value, *rest, **named)

    def rmdir(path):                                    # as the kernel: EBUSY while populated
        if Path(path, "cgroup.procs").is_file() and Path(path, "cgroup.procs").read_text():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        real_rmdir(path)
    monkeypatch.setattr(cgroups, "_write", write)
    monkeypatch.setattr(os, "rmdir", rmdir)
    cgroup.remove()
    cgroup.remove()                                     # the second time: nothing to do
    assert writes == [("cgroup.kill", 1)]
    assert not cgroup.path.exists()
    assert (v2_tree / "minirun").is_dir()               # the shared parent stays while in use
    other.remove()
    assert not (v2_tree / "minirun").exists()           # and goes with its last cgroup


def test_v2_create_makes_minirun_again_when_another_run_removed_it_meanwhile(v2_tree, monkeypatch):
    real_enable, lost = cgroups._enable_controllers, []

    def enable_then_lose_the_parent(cgroup, controllers):
        real_enable(cgroup, controllers)
        if cgroup.name == cgroups.PARENT and not lost:
            cgroups._remove_if_unused(cgroup)   # another minirun's last container just ended
            lost.append(cgroup)
    monkeypatch.setattr(cgroups, "_enable_controllers", enable_then_lose_the_parent)
    cgroup = create_v2(v2_tree, "c7", cgroups.Limits(memory=32 * MiB))
    assert lost and cgroup.path.is_dir()
    assert (v2_tree / "minirun" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"


def test_v2_driver_enables_only_what_the_kernel_offers(v2_tree):
    (v2_tree / "cgroup.controllers").write_text("cpuset io memory pids\n")   # no cpu
    with pytest.raises(RuntimeFailure, match="offers no cpu cgroup controller"):
        create_v2(v2_tree, "c6", cgroups.Limits(cpus=0.5))
    assert not (v2_tree / "minirun").exists()
    create_v2(v2_tree, "c6", cgroups.Limits(memory=32 * MiB))
    assert (v2_tree / "cgroup.subtree_control").read_text() == "memory pids\n"   # untouched
    assert (v2_tree / "minirun" / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_v2_driver_failure_leaves_nothing(v2_tree, monkeypatch):
    monkeypatch.delitem(V2_FILES, "pids.max")           # a kernel without the pids controller
    with pytest.raises(RuntimeFailure, match="cannot set the pids limit"):
        create_v2(v2_tree, "c5", cgroups.Limits(memory=32 * MiB, pids=20))
    assert not (v2_tree / "minirun" / "c5").exists()


# --- The v2 driver on this host's cgroup2 tree, which has no controllers but is a real kernel ---

@pytest.fixture
def real_v2_cgroup():
    """A CgroupV2 made by hand in this host's cgroup2 tree (under minirun/): with no controllers
    there, no limits can be written, but joining, killing, removing and mounting are real."""
    root = cgroups._mounts().unified
    if root is None:
        pytest.skip("no cgroup2 tree on this host")
    (root / cgroups.PARENT).mkdir(exist_ok=True)
    cgroup = cgroups.CgroupV2({}, root / cgroups.PARENT / new_id("v2"))
    cgroup.path.mkdir()
    yield cgroup
    cgroup.remove()


def test_v2_driver_joins_kills_and_removes_on_a_real_cgroup2_tree(real_v2_cgroup):
    sleeper = start_in(real_v2_cgroup, ["sleep", "300"])
    relative = real_v2_cgroup.path.relative_to(cgroups._mounts().unified)
    assert f"0::/{relative}\n" in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
    assert real_v2_cgroup.usage().cpu_seconds is not None      # cpu.stat is always there
    real_v2_cgroup.remove()                                     # through cgroup.kill
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert not real_v2_cgroup.path.exists()


def test_v2_view_in_a_cgroup_namespace(real_v2_cgroup, tmp_path):
    view = tmp_path / "cgroup"
    view.mkdir()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            cgroups.host_uses_v2 = lambda: True     # in this forked child only: take v2's path
            real_v2_cgroup.join()
            namespaces.unshare(namespaces.CLONE_NEWNS | namespaces.CLONE_NEWCGROUP)
            namespaces.mount(None, "/", None, namespaces.MS_REC | namespaces.MS_PRIVATE)
            cgroups.mount_view(str(view))
            seen = {"procs": (view / "cgroup.procs").read_text().split(),
                    "self": Path("/proc/self/cgroup").read_text(),
                    "children": sorted(p.name for p in view.iterdir() if p.is_dir())}
            try:
                (view / "escape").mkdir()
            except OSError as error:
                seen["mkdir"] = error.errno
            os.write(report_write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    seen = json.loads(os.read(report_read, 65536))
    os.waitpid(pid, 0)
    assert seen["procs"] == [str(pid)]                 # only itself: its cgroup is the root
    assert seen["self"].endswith("0::/\n")
    assert seen["children"] == [] and seen["mkdir"] == errno.EROFS


# --- Which version the host uses: read from the mount table -----------------------------------

KNOWN_CONTROLLERS = {"cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer",
                     "net_cls", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"}
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,xattr,memory,hugetlb
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 22 0:32 / /mnt/memory-again rw,relatime - cgroup cgroup rw,memory,hugetlb
"""
PURE_V2 = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
25 22 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
50 22 0:44 / /mnt/with\\040space rw - ext4 /dev/sdb1 rw
"""


def test_mountinfo_of_a_hybrid_host():
    mounts = cgroups.parse_mountinfo(HYBRID, KNOWN_CONTROLLERS)
    assert mounts.unified == Path("/sys/fs/cgroup/unified")
    tree = {name: Path("/sys/fs/cgroup") / name for name in
            ("cpu,cpuacct", "net_cls,net_prio", "cpuset", "memory", "pids", "systemd")}
    assert mounts.v1 == {"cpu": tree["cpu,cpuacct"], "cpuacct": tree["cpu,cpuacct"],
                         "net_cls": tree["net_cls,net_prio"], "net_prio": tree["net_cls,net_prio"],
                         "cpuset": tree["cpuset"], "memory": tree["memory"],
                         "hugetlb": tree["memory"], "pids": tree["pids"],
                         "name=systemd": tree["systemd"]}
    # Every tree, each with all its controllers (or its name) and none of its other options;
    # the memory tree mounted a second time counts once.
    assert mounts.v1_options == {tree["cpu,cpuacct"]: "cpu,cpuacct",
                                 tree["net_cls,net_prio"]: "net_cls,net_prio",
                                 tree["cpuset"]: "cpuset", tree["memory"]: "memory,hugetlb",
                                 tree["pids"]: "pids", tree["systemd"]: "name=systemd"}
    assert mounts.hierarchies() == [*tree.values(), Path("/sys/fs/cgroup/unified")]


def test_mountinfo_of_a_pure_v2_host():
    mounts = cgroups.parse_mountinfo(PURE_V2, KNOWN_CONTROLLERS)
    assert mounts.unified == Path("/sys/fs/cgroup")
    assert mounts.v1 == {} and mounts.v1_options == {}
    assert mounts.hierarchies() == [Path("/sys/fs/cgroup")]
    assert cgroups._unescape("/mnt/with\\040space") == "/mnt/with space"


# --- Real containers --------------------------------------------------------------------------

# Which file of its own cgroup a container reads, seen from inside, on this host.
PIDS_EVENTS = "/sys/fs/cgroup/pids.events" if cgroups.host_uses_v2() else "/sys/fs/cgroup/pids/pids.events"
CPU_STAT = "/sys/fs/cgroup/cpu.stat" if cgroups.host_uses_v2() else "/sys/fs/cgroup/cpu/cpu.stat"


def container_id(explained: str) -> str:
    """The container's id, from the first path with it that --explain prints (the bundle's)."""
    found = re.search(r"/([0-9a-f]{64})", explained)
    assert found, explained
    return found.group(1)


def assert_no_cgroup_left(identifier: str) -> None:
    assert own_cgroups(identifier) == []


def minirun_parents() -> list[Path]:
    """The `minirun` parent cgroups, in every hierarchy. (That none is left assumes no other
    minirun runs a container on this machine during the tests.)"""
    return sorted(tree / cgroups.PARENT for tree in cgroups._mounts().hierarchies()
                  if (tree / cgroups.PARENT).exists())


def leftover_parents() -> list[Path]:
    """`minirun` parents with no cgroup in them, which should have gone with their last one.
    (Another helper's container on this machine keeps its parents, rightly.)"""
    return [parent for parent in minirun_parents() if not cgroups._cgroups_below(parent)]


def stats(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("minirun: stats:"))


def hog(megabytes: int) -> str:
    """A shell that really holds `megabytes` of memory: the string in a variable."""
    return f'x=$(head -c {megabytes * 1000000} /dev/zero | tr "\\0" a); echo held ${{#x}}'


def test_memory_hog_above_the_limit_exits_137_with_the_oom_line(minirun):
    result = minirun("run", "--explain", "--memory", "32M", "hello", "sh", "-c", hog(64))
    assert result.returncode == 137, result.stderr
    assert "held" not in result.stdout
    assert "container ran out of memory at its limit of 32M" in result.stderr
    assert_no_cgroup_left(container_id(result.stderr))


def test_memory_use_below_the_limit_succeeds(minirun):
    result = minirun("run", "--stats", "--memory", "32M", "hello", "sh", "-c", hog(8))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "held 8000000\n"
    assert "out of memory" not in result.stderr
    peak = re.search(r"peak memory ([0-9.]+)M", stats(result.stderr))
    assert 8 <= float(peak.group(1)) <= 32


# PID 1 sets off a fork bomb with its only fork (any later one could be refused), waits until
# its cgroup counts a refused fork (with builtins only), and exits: the kernel then kills the
# rest of the PID namespace. The bomb stops at depth 8 (at most 2^9 processes) and the wait at
# 200000 reads, so that a broken limit fails the test instead of taking the machine down.
FORK_BOMB = f"""
bomb() {{ [ "$1" -lt 8 ] && {{ bomb $(($1 + 1)) | bomb $(($1 + 1)) & }}; }}
bomb 0 &
reads=0
while [ $reads -lt 200000 ] && read -r key refused < {PIDS_EVENTS} && [ "$refused" = 0 ]; do
    reads=$((reads + 1))
done
[ "$refused" != 0 ] && echo contained
exit 7
"""


def test_fork_bomb_is_contained_and_the_container_still_exits(minirun):
    result = minirun("run", "--explain", "--stats", "--pids-limit", "20", "hello",
                     "sh", "-c", FORK_BOMB)
    assert (result.returncode, result.stdout) == (7, "contained\n"), result.stderr
    assert re.search(r"\d+ forks refused by the pids limit", stats(result.stderr))
    assert_no_cgroup_left(container_id(result.stderr))


# A busy loop of shell builtins that stops once its own cgroup has been throttled 5 times
# (or after 500000 reads, seconds of CPU, should the limit be broken). On a machine busy with
# other work it may get less than half a core and take longer to get there.
THROTTLED_LOOP = f"""
throttled=0 reads=0
while [ "$throttled" -lt 5 ] && [ $reads -lt 500000 ]; do
    while read -r key value; do [ "$key" = nr_throttled ] && throttled=$value; done < {CPU_STAT}
    reads=$((reads + 1))
done
cat {CPU_STAT}
"""


def test_half_a_cpu_throttles_a_busy_loop_in_a_container(minirun):
    result = minirun("run", "--stats", "--cpus", "0.5", "hello", "sh", "-c", THROTTLED_LOOP)
    assert result.returncode == 0, result.stderr
    seen = dict(line.split() for line in result.stdout.splitlines())
    assert int(seen["nr_throttled"]) >= 5
    line = stats(result.stderr)
    throttled = int(re.search(r"throttled in (\d+) periods", line).group(1))
    cpu_seconds = float(re.search(r"CPU time ([0-9.]+)s", line).group(1))
    assert throttled >= 5
    # Never more than its quota: 50 ms of CPU in each 100 ms period it ran in (+1 of slack).
    periods = int(seen["nr_periods"]) + 1                 # the loop ran on after its last read
    assert cpu_seconds <= 0.050 * (periods + 1)


def test_container_sees_its_own_cgroup_as_root_read_only(minirun):
    script = ("cat /proc/self/cgroup; ls /sys/fs/cgroup; "
              "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
              "echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes; mkdir /sys/fs/cgroup/pids/x")
    if cgroups.host_uses_v2():
        pytest.skip("checks the v1 view; the v2 view is one cgroup2 mount")
    result = minirun("run", "--memory", "48M", "hello", "sh", "-c", script)
    lines = result.stdout.splitlines()
    cgroup_lines = [line for line in lines if re.match(r"\d+:", line)]
    assert cgroup_lines and all(line.endswith(":/") for line in cgroup_lines)
    trees = sorted(tree.name for tree in cgroups._mounts().hierarchies())
    assert lines[len(cgroup_lines):] == [*trees, str(48 * MiB)]
    assert result.stderr.count("Read-only file system") == 2
    assert result.returncode != 0


@pytest.mark.parametrize("command, status", [(["true"], 0), (["false"], 1),
                                             (["no-such-command"], 127)])
def test_no_cgroup_left_after_a_run(minirun, command, status):
    result = minirun("run", "--explain", "--memory", "32M", "hello", *command)
    assert result.returncode == status
    assert_no_cgroup_left(container_id(result.stderr))


# minirun with its own --pids-limit check moved out of the way: a limit that only the kernel
# refuses (pids.max stops at PID_MAX_LIMIT, which minirun checks first since it knows).
UNCHECKED_PIDS = """
import sys
from minirun import cli, units
units.PID_MAX_LIMIT = 10 ** 12
sys.argv = ["minirun", *sys.argv[1:]]
cli.main()
"""


def test_no_cgroup_left_when_the_kernel_refuses_a_limit(minirun, minirun_env):
    result = subprocess.run([sys.executable, "-c", UNCHECKED_PIDS, "run", "--explain",
                             "--pids-limit", "1000000000", "hello", "true"], env=minirun_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert "minirun: cannot set the pids limit: writing 1000000000 to" in result.stderr
    assert_no_cgroup_left(container_id(result.stderr))
    assert leftover_parents() == []
    assert os.listdir(minirun_env["MINIRUN_STATE"]) == []
    assert os.listdir(Path(minirun_env["MINIRUN_ROOT"]) / "containers") == []


def test_no_cgroup_left_after_ctrl_c(start_minirun):
    process = start_minirun("run", "--explain", "--init", "--pids-limit", "10", "hello",
                            "sh", "-c", "echo ready; exec sleep 60")
    assert read_line(process) == "ready\n"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert_no_cgroup_left(container_id(stderr))


def test_no_cgroup_left_after_minirun_is_killed_once_gc_runs(start_minirun, minirun_env, minirun):
    process = start_minirun("run", "--cpus", "0.5", "hello", "sh", "-c", "echo ready; exec sleep 60")
    assert read_line(process) == "ready\n"
    identifier = wait_for_container(minirun_env)["id"]
    assert own_cgroups(identifier)
    process.kill()                                        # no chance to clean up
    process.wait(timeout=10)
    result = minirun("gc")
    assert result.returncode == 0, result.stderr
    assert f"removed {identifier[:12]}" in result.stdout
    assert_no_cgroup_left(identifier)
    assert leftover_parents() == []


def test_the_minirun_parent_stays_while_a_container_runs_and_goes_with_the_last(start_minirun,
                                                                                minirun):
    first = start_minirun("run", "--init", "hello", "sh", "-c", "echo ready; exec sleep 60")
    assert read_line(first) == "ready\n"
    assert minirun("run", "hello", "true").returncode == 0
    assert minirun_parents() != []          # the first container's cgroups are still in it
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=20)
    assert first.returncode == 143
    assert leftover_parents() == []


@pytest.mark.parametrize("flag, value, message", [
    ("--memory", "lots", "invalid size 'lots'"),
    ("--memory", "-5M", "invalid size '-5M'"),
    ("--cpus", "0", "invalid CPU count '0'"),
    ("--cpus", "0.001", "too small"),
    ("--cpus", "999", "more than the"),
    ("--pids-limit", "0", "invalid pids limit '0'"),
    ("--pids-limit", "ten", "invalid pids limit 'ten'"),
])
def test_bad_limits_are_rejected_before_anything_is_made(minirun, minirun_env, flag, value,
                                                         message):
    result = minirun("run", flag, value, "hello", "true")
    assert result.returncode == 125
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert os.listdir(minirun_env["MINIRUN_STATE"]) == []
    assert not (Path(minirun_env["MINIRUN_ROOT"]) / "containers").exists() or \
        os.listdir(Path(minirun_env["MINIRUN_ROOT"]) / "containers") == []


def test_v2_root_with_processes_that_is_not_the_real_root_is_a_clear_error(v2_tree):
    # minirun in a container of its own (or a systemd unit): the cgroup2 mount's root is then an
    # ordinary cgroup, it holds processes, and it cannot hand controllers down (cgroup-v2.rst).
    (v2_tree / "cgroup.type").write_text("domain\n")          # only non-root cgroups have it
    (v2_tree / "cgroup.procs").write_text("1\n42\n")
    with pytest.raises(RuntimeFailure, match="allows controllers only in cgroups without processes"):
        create_v2(v2_tree, "c7", cgroups.Limits(memory=32 * MiB))


def test_v2_real_root_may_hold_processes(v2_tree):
    (v2_tree / "cgroup.procs").write_text("1\n42\n")         # the true root is exempt
    create_v2(v2_tree, "c8", cgroups.Limits(memory=32 * MiB)).remove()


# --- Real containers: every hierarchy, and cgroups made below theirs ---------------------------

def dirs_under_process_api(*names: str) -> list[str]:
    """Directories named `names` below any hierarchy's process_api (where this machine's shells
    run): a runtime that resolved a cgroup path against its own cgroup would make them there."""
    found = []
    for tree in cgroups._mounts().hierarchies():
        for directory, subdirs, _ in os.walk(tree / "process_api"):
            found += [os.path.join(directory, name) for name in subdirs if name in names]
    return found


def test_the_container_is_in_its_own_cgroup_of_every_hierarchy(start_minirun, minirun_env):
    script = ("cat /proc/self/cgroup; echo views $(ls -d /sys/fs/cgroup/freezer/*/ "
              "/sys/fs/cgroup/devices/*/ 2>/dev/null | wc -l); "
              "echo FROZEN > /sys/fs/cgroup/freezer/freezer.state; echo a > /sys/fs/cgroup/devices/devices.allow; "
              "echo ready; exec sleep 60")
    process = start_minirun("run", "--init", "hello", "sh", "-c", script)
    inside = [line.strip() for line in iter(process.stdout.readline, "ready\n")]
    record = wait_for_container(minirun_env)
    identifier = record["id"]
    on_the_host = Path(f"/proc/{record['pid']}/cgroup").read_text().splitlines()
    ours = Path("/proc/self/cgroup").read_text().splitlines()
    assert len(own_cgroups(identifier)) == len(cgroups._mounts().hierarchies())
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 143, stderr

    hierarchy = lambda line: line.split(":", 2)[:2]                 # "4", "memory"
    # Inside: / in every hierarchy the host has, so no host path can be named from there ...
    assert [hierarchy(line) for line in inside[:-1]] == [hierarchy(line) for line in ours]
    assert all(line.endswith(":/") for line in inside[:-1]), inside
    # ... because on the host, it is in minirun/<id> of every one of them.
    assert [line.split(":", 2)[2] for line in on_the_host] == \
        [f"/{cgroups.PARENT}/{identifier}"] * len(ours)
    # Its views of the freezer and devices trees hold no cgroup of the host, and are read-only.
    assert inside[-1] == "views 0"
    assert stderr.count("Read-only file system") == 2, stderr
    assert_no_cgroup_left(identifier)
    assert leftover_parents() == []
    assert dirs_under_process_api(identifier, cgroups.PARENT) == []


def test_cgroups_made_below_the_container_s_go_with_it(start_minirun, minirun_env):
    """As a nested runtime (or the container, with a cgroup filesystem of its own) would: cgroups
    below the container's, in every hierarchy, one of them holding its process."""
    process = start_minirun("run", "--init", "hello", "sh", "-c", "echo ready; exec sleep 60")
    assert read_line(process) == "ready\n"
    record = wait_for_container(minirun_env)
    identifier, pid1 = record["id"], record["pid"]
    sleeper = int(Path(f"/proc/{pid1}/task/{pid1}/children").read_text().split()[0])
    for directory in cgroups.of_container(identifier).directories():
        move_into(sleeper, make_below(directory, "nested", "deeper"))
        make_below(directory, "empty")
    # Its cgroup, nested, nested/deeper and empty, in each hierarchy.
    assert len(own_cgroups(f"{identifier}/**")) == 4 * len(cgroups._mounts().hierarchies())
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 143, stderr
    assert "cannot remove" not in stderr
    assert_no_cgroup_left(identifier)
    assert leftover_parents() == []
