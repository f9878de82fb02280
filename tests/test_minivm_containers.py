"""Containers inside a VM: `minirun run` with limits, whole, on a pure cgroup v2 host.

This host is hybrid (its controllers live on cgroup v1), so `minirun run --memory/--cpus/
--pids-limit` goes through the v1 driver here. A minivm guest is a v2 host of its own, and since
its root is the image's layers stacked by overlayfs (with the overlay module loaded), minirun
itself can run in it: this test makes an image of this Python, minirun's source, click and
python-prctl (and busybox, for the built-in image `hello` that minirun builds in the guest), boots
it, and has the program below run three containers with limits in the guest: one that the OOM
killer ends, one refused a fork by its pids limit, one throttled by its CPU quota. It reports one
line each, checked from the host.
"""
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import click
import prctl
import pytest

from conftest import leftovers, minivm, with_store
from test_cgroups_v2_guest import copy_as_named, copy_stdlib, shared_libraries
from test_minivm_images import import_image

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parent.parent
# Runs in the guest, as root on its own v2 host, with minirun's source on PYTHONPATH.
PROGRAM = r"""
import os, subprocess, sys

def minirun(*args):
    return subprocess.run([sys.executable, "-S", "-m", "minirun", "run", "--network", "none", *args],
                          capture_output=True, text=True)

# The guest's root is an overlay, and overlayfs refuses another overlay as its upper directory
# (EINVAL): minirun's store, where each container's upper directory is made, goes on a tmpfs,
# as Docker-in-Docker puts /var/lib/docker on a volume.
os.makedirs("/var/lib/minirun", exist_ok=True)
subprocess.run(["/bin/busybox", "mount", "-t", "tmpfs", "store", "/var/lib/minirun"], check=True)

mounts = {line.split()[1]: line.split()[2] for line in open("/proc/mounts")}
controllers = open("/sys/fs/cgroup/cgroup.controllers").read().split()
print(f"cgroup: {mounts['/sys/fs/cgroup']} with every controller: {' '.join(controllers)}")

# A 64 MB buffer under a 16 MB limit: the kernel's OOM killer ends dd, minirun says so.
run = minirun("--memory", "16M", "hello", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
oom = "ran out of memory at its limit of 16M" in run.stderr
print(f"memory: exit {run.returncode}, oom_kill {int(oom)}")

# Four processes at most: the shell and three sleeps; the fourth sleep is refused, and the shell
# (busybox's) gives up with status 2.
run = minirun("--pids-limit", "4", "--stats", "hello", "sh", "-c",
              "for i in 1 2 3 4; do sleep 2 & done 2>/dev/null; wait")
refused = [part for part in run.stderr.split(", ") if "forks refused" in part]
print(f"pids: exit {run.returncode}, {refused[0].strip() if refused else run.stderr}")


# A busy loop for a second under a fifth of a CPU: the quota throttles it, cpu.stat counts it.
run = minirun("--cpus", "0.2", "--stats", "hello", "sh", "-c",
              "end=$(($(date +%s) + 2)); while [ $(date +%s) -lt $end ]; do :; done")
throttled = [part.strip() for part in run.stderr.split(", ") if "throttled" in part]
print(f"cpu: exit {run.returncode}, {throttled[0] if throttled else run.stderr}")

left = os.path.exists("/sys/fs/cgroup/minirun") or \
    (os.path.isdir("/run/minirun") and os.listdir("/run/minirun"))
print("left: " + ("something" if left else "no minirun cgroup, no container"))
"""


@pytest.fixture(scope="module")
def minirun_image(tmp_path_factory):
    """A store holding image `pyminirun`: Python, minirun and its two dependencies, busybox."""
    work = tmp_path_factory.mktemp("pyminirun")
    rootfs, store = work / "rootfs", work / "store"
    python = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])
    prctl_extension = Path(prctl._prctl.__file__)
    copy_as_named(python, rootfs)
    needed = shared_libraries(python) | shared_libraries(prctl_extension)
    for extension in (stdlib / "lib-dynload").glob("*.so"):
        needed |= shared_libraries(extension)
    for library in needed:
        copy_as_named(library, rootfs)
    copy_stdlib(stdlib, rootfs / stdlib.relative_to("/"))
    packages = rootfs / "opt/py"
    packages.mkdir(parents=True)
    for source in (REPO / "minirun", REPO / "images", Path(click.__file__).parent):
        shutil.copytree(source, packages / source.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(prctl.__file__, packages)
    shutil.copy2(prctl_extension, packages)
    (packages / "nested_limits.py").write_text(PROGRAM)
    (rootfs / "bin").mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")        # what `hello` is built from
    import_image(rootfs, "pyminirun", str(store))
    shutil.rmtree(rootfs)
    return store, python


def test_minirun_limits_hold_whole_in_a_v2_guest(guest, minirun_image):
    store, python = minirun_image
    result = minivm(with_store(guest, store), "-e", "PYTHONPATH=/opt/py", "pyminirun",
                    str(python), "-S", "/opt/py/nested_limits.py")
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["cgroup"] == "cgroup2 with every controller: cpuset cpu io memory hugetlb pids " \
                              "rdma misc", report
    assert lines["memory"] == "exit 137, oom_kill 1", report                 # --memory 16M
    assert lines["pids"] == "exit 2, 1 forks refused by the pids limit", report  # --pids-limit 4
    assert lines["cpu"].startswith("exit 0, throttled in "), report          # --cpus 0.2
    assert lines["left"] == "no minirun cgroup, no container", report
    assert leftovers(guest) == ([], [])
