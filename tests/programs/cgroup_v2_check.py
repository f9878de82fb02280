"""Runs inside a minivm guest (tests/test_cgroups_v2_guest.py): minirun's cgroup v2 driver on a
real v2 kernel, with every limit enforced by that kernel. One "ok ..." line per check; any
failure is a traceback and exit status 1.

Each container is played by a forked child that joins the cgroup first, as minirun's does.
"""
import errno
import os
import signal
import stat
import sys
import time
import traceback

from minirun import cgroups, namespaces

MiB = 1 << 20
PARENT = f"/sys/fs/cgroup/{cgroups.PARENT}"


def in_child(cgroup: cgroups.Cgroup, body) -> int:
    """Fork; the child joins `cgroup`, runs body() and exits with what it returns. The wait status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            cgroup.join()
            code = body()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def touch_memory(size: int) -> int:
    block = bytearray(size)
    for offset in range(0, size, 4096):     # make every page real
        block[offset] = 1
    return 0


def check_the_driver_chose_v2():
    assert cgroups.host_uses_v2()
    print("ok driver: v2, controllers", open("/sys/fs/cgroup/cgroup.controllers").read().strip())


def check_memory_limit():
    cgroup = cgroups.create("memory", cgroups.Limits(memory=32 * MiB))
    assert open(f"{cgroup}/memory.max").read().strip() == str(32 * MiB)
    status = in_child(cgroup, lambda: touch_memory(8 * MiB))
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert not cgroup.usage().oom_killed
    status = in_child(cgroup, lambda: touch_memory(64 * MiB))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    usage = cgroup.usage()
    assert usage.oom_killed, usage
    assert usage.peak_memory and usage.peak_memory <= 32 * MiB, usage
    cgroup.remove()
    assert not os.path.exists(str(cgroup))
    print(f"ok memory: 8M ran, 64M OOM-killed at 32M (peak {usage.peak_memory // MiB}M)")


def check_pids_limit():
    cgroup = cgroups.create("pids", cgroups.Limits(pids=20))

    def fork_until_refused() -> int:
        for forked in range(100):
            try:
                if os.fork() == 0:
                    time.sleep(600)         # stays in the cgroup: remove() must kill it
                    os._exit(0)
            except BlockingIOError:         # EAGAIN: pids.max reached
                print(f"ok pids: {forked} children, then EAGAIN", flush=True)
                return 0
        return 1

    status = in_child(cgroup, fork_until_refused)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert len(open(f"{cgroup}/cgroup.procs").read().split()) == 19   # the sleepers, still there
    assert cgroup.usage().pids_refused >= 1
    cgroup.remove()                         # through cgroup.kill, then rmdir
    assert not os.path.exists(str(cgroup))
    print("ok pids: 19 leftover children killed, cgroup removed")


def check_cpu_limit():
    cgroup = cgroups.create("cpu", cgroups.Limits(cpus=0.5))
    assert open(f"{cgroup}/cpu.max").read().split() == ["50000", "100000"]

    def spin() -> int:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        return 0

    assert os.waitstatus_to_exitcode(in_child(cgroup, spin)) == 0
    usage = cgroup.usage()
    assert usage.throttled_periods >= 1, usage
    cgroup.remove()
    print(f"ok cpu: throttled in {usage.throttled_periods} periods, "
          f"{usage.cpu_seconds:.2f} s of CPU in 1 s")


def check_the_container_sees_only_its_own_tree():
    cgroup = cgroups.create("view", cgroups.Limits(memory=48 * MiB))
    view = "/tmp/cgroup-view"
    os.makedirs(view, exist_ok=True)

    def look() -> int:
        namespaces.unshare(namespaces.CLONE_NEWCGROUP | namespaces.CLONE_NEWNS)
        namespaces.mount(None, "/", None, namespaces.MS_REC | namespaces.MS_PRIVATE)
        cgroups.mount_view(view)
        assert open("/proc/self/cgroup").read() == "0::/\n"
        assert open(f"{view}/cgroup.procs").read().split() == [str(os.getpid())]
        assert open(f"{view}/memory.max").read().strip() == str(48 * MiB)
        try:
            os.mkdir(f"{view}/escape")
            return 1
        except OSError as error:
            assert error.errno == errno.EROFS, error
        return 0

    assert os.waitstatus_to_exitcode(in_child(cgroup, look)) == 0
    cgroup.remove()
    print("ok view: / in /proc/self/cgroup, its own limits, read-only")


def check_devices():
    """The device allow-list: on v2, a BPF program that create() attached to the cgroup."""
    cgroup = cgroups.create("devices", cgroups.Limits())
    nodes = {"null": (stat.S_IFCHR, 1, 3), "kmsg": (stat.S_IFCHR, 1, 11),
             "loop0": (stat.S_IFBLK, 7, 0)}
    os.makedirs("/tmp/nodes", exist_ok=True)
    for name, (kind, major, minor) in nodes.items():
        os.mknod(f"/tmp/nodes/{name}", 0o600 | kind, os.makedev(major, minor))

    def try_opening() -> int:
        seen = {}
        for name in nodes:
            try:
                os.close(os.open(f"/tmp/nodes/{name}", os.O_RDONLY | os.O_NONBLOCK))
                seen[name] = "opened"
            except OSError as error:
                seen[name] = errno.errorcode[error.errno]
        assert seen == {"null": "opened", "kmsg": "EPERM", "loop0": "EPERM"}, seen
        return 0

    assert os.waitstatus_to_exitcode(in_child(cgroup, try_opening)) == 0
    os.close(os.open("/tmp/nodes/kmsg", os.O_RDONLY | os.O_NONBLOCK))    # outside, it opens
    cgroup.remove()
    print("ok devices: made kmsg and loop0 nodes refused (EPERM) by the BPF program, null opens")


def check_stale_cgroups_are_collected():
    cgroup = cgroups.create("stale", cgroups.Limits())
    pid = os.fork()
    if pid == 0:
        cgroup.join()
        time.sleep(600)
        os._exit(0)
    while str(pid) not in open(f"{cgroup}/cgroup.procs").read().split():
        time.sleep(0.01)
    assert cgroups.remove_stale(live_ids=set(), dead_ids={"stale"}) == ["stale"]
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    print("ok gc: a dead run's cgroup and its process removed")


if __name__ == "__main__":
    check_the_driver_chose_v2()
    check_memory_limit()
    check_pids_limit()
    check_cpu_limit()
    check_the_container_sees_only_its_own_tree()
    check_devices()
    check_stale_cgroups_are_collected()
    assert not os.path.exists(PARENT), os.listdir(PARENT)
    print(f"ok nothing left: {PARENT} went with its last cgroup")
