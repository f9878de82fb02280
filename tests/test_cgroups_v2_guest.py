"""The cgroup v2 driver proven on a real v2 kernel: inside a minivm guest.

This host is hybrid (its controllers live on v1), so here the v2 driver only meets a v2-shaped
tree of plain files (test_cgroups.py). A minivm guest is a whole v2 host of its own: its init
mounts cgroup2 with every controller in it. So this test makes an image of this Python (the
interpreter, the libraries it links, its standard library as compiled bytecode) plus minirun's
cgroups and devices modules, imports it into a private store, boots it, and runs
tests/programs/cgroup_v2_check.py in the guest: the same driver code, the kernel's own cgroup
files, limits the kernel really enforces. (The image has no busybox and no shell: it also
shows that minivm's guest init needs nothing from the image.)
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import BOOT_TIMEOUT, leftovers, minivm, with_store

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "tests/programs/cgroup_v2_check.py"
# Parts of the standard library the check never imports: tests, GUIs, build files.
NOT_NEEDED = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
              "distutils", "site-packages", "dist-packages", "__pycache__"}


def shared_libraries(binary: Path) -> set[Path]:
    """What the dynamic loader maps for `binary`, the loader itself included (ld.so(8))."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    return {Path(word) for line in out.splitlines() for word in line.split() if word.startswith("/")}


def copy_as_named(path: Path, root: Path) -> None:
    """Copy the file behind `path` to the same path under `root` (a symlink's target, as a file)."""
    target = root / path.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path.resolve(), target)


def copy_stdlib(stdlib: Path, target: Path) -> None:
    """The standard library as compiled bytecode: each module's cached .pyc, renamed foo.pyc and
    put where foo.py was, which Python imports without its source and without comparing the
    source's mtime (the initramfs gives every file mtime 0). A module with no cache goes as .py."""
    for directory, subdirs, files in os.walk(stdlib):
        subdirs[:] = [name for name in subdirs if name not in NOT_NEEDED and not name.startswith("config-")]
        out = target / Path(directory).relative_to(stdlib)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            source = Path(directory, name)
            cached = Path(importlib.util.cache_from_source(str(source))) if name.endswith(".py") else None
            if cached and cached.exists():
                shutil.copy2(cached, out / (name + "c"))
            elif not name.endswith(".pyc"):
                shutil.copy2(source, out / name)


@pytest.fixture(scope="module")
def python_image(tmp_path_factory):
    """A store holding image `pyguest`: this Python, minirun's cgroups module and the check."""
    work = tmp_path_factory.mktemp("pyguest")
    rootfs, store = work / "rootfs", work / "store"
    python = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])
    copy_as_named(python, rootfs)
    for library in shared_libraries(python) | {library for extension in (stdlib / "lib-dynload").glob("*.so")
                                               for library in shared_libraries(extension)}:
        copy_as_named(library, rootfs)
    copy_stdlib(stdlib, rootfs / stdlib.relative_to("/"))
    package = rootfs / "opt/check/minirun"
    package.mkdir(parents=True)
    for module in ("__init__", "cgroups", "devices", "namespaces", "errors"):
        shutil.copy2(REPO / "minirun" / f"{module}.py", package)
    shutil.copy2(CHECK, rootfs / "opt/check")
    env = dict(os.environ, MINIRUN_ROOT=str(store))
    subprocess.run([sys.executable, "-m", "minirun", "import", str(rootfs), "pyguest"],
                   env=env, check=True, capture_output=True)
    shutil.rmtree(rootfs)
    return store, python


def test_the_v2_driver_limits_counts_and_removes_on_a_real_v2_kernel(guest, python_image):
    store, python = python_image
    result = minivm(with_store(guest, store), "--memory", "512M", "--timeout", str(BOOT_TIMEOUT), "pyguest",
                    str(python), "-S", f"/opt/check/{CHECK.name}")
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    for check in ("driver: v2", "memory: 8M ran, 64M OOM-killed at 32M", "pids: 19 children, then EAGAIN",
                  "pids: 19 leftover children killed", "cpu: throttled", "view: / in /proc/self/cgroup",
                  "devices: made kmsg and loop0 nodes refused (EPERM) by the BPF program",
                  "gc: a dead run's cgroup", "nothing left: /sys/fs/cgroup/minirun went with its last cgroup"):
        assert f"ok {check}" in result.stdout, report
    assert leftovers(guest) == ([], [])
