"""What a killed import or a full disk could leave in the store: scratch directories whose owner
is gone are removed by `minirun gc`, every `minirun run` and the next import (an owner is a PID
and its start time, so a reused PID fools nothing); a full filesystem, in bytes or in inodes, is
one line and exit 125, and leaves nothing."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image_helpers import oci_layout, tar_of
from minirun import image, state
from minirun.errors import RuntimeFailure

SKELETON = {"lock", "layers", "images", "tmp"}       # what a store holds before any image


def cli(root: Path, *args, state_dir=None, **popen):
    env = dict(os.environ, MINIRUN_ROOT=str(root),
               MINIRUN_STATE=str(state_dir or root.parent / "state"))
    command = [sys.executable, "-m", "minirun", *args]
    if popen:
        return subprocess.Popen(command, env=env, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


# What to kill, and the sign in tmp/ that it is half-way through its work.
VICTIMS = {
    # importing /usr/share (680M, 54,000 files here) takes seconds
    "import": (["import", "/usr/share", "big"], "*/1/*"),
    # building the built-in image takes about half a second: busybox, then 400 links
    "build": (["run", "hello", "true"], "*/layer/bin/busybox"),
}


def killed(root: Path, victim: str) -> Path:
    """Start `minirun` on the victim's work, SIGKILL it half-way, and return the scratch
    directory that the kill left."""
    args, sign = VICTIMS[victim]
    working = cli(root, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while not ((root / "tmp").is_dir() and list((root / "tmp").glob(sign))):
            assert working.poll() is None, f"the {victim} ended before it could be killed"
            assert time.monotonic() < deadline, f"the {victim} did not start in time"
            time.sleep(0.002)
    finally:
        working.send_signal(signal.SIGKILL)
        working.wait()
    (left,) = (root / "tmp").iterdir()
    return left


@pytest.mark.parametrize("victim, cleaner", [
    ("import", ["gc"]), ("import", ["run", "hello", "true"]), ("import", ["import", "LAYOUT", "app"]),
    ("build", ["gc"]),
])
def test_a_killed_import_or_build_leaves_scratch_that_is_removed(tmp_path, victim, cleaner):
    root = tmp_path / "store"
    left = killed(root, victim)
    assert left.is_dir() and any(left.iterdir())               # the leftover is real
    layout = oci_layout(tmp_path / "layout", [tar_of([("a", "file")])])
    done = cli(root, *[str(layout) if arg == "LAYOUT" else arg for arg in cleaner])
    assert done.returncode == 0, done.stderr
    assert not left.exists()
    assert os.listdir(root / "tmp") == []
    assert not (root / "layers").exists() or all(len(layer.name) == 64
                                                  for layer in (root / "layers").iterdir())


def test_the_owner_of_scratch_is_a_pid_and_its_start_time(store):
    mine = store.scratch_dir()                                 # ours: in progress
    start = state.start_time(os.getpid())
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = {
        "reused": f"{os.getpid()}-{start + 1}-abcd",           # our PID, another process's start
        "dead": f"{dead.pid}-{start}-abcd",
        "junk": "not-a-scratch-name",
    }
    for name in stale.values():
        (store.tmp_dir / name).mkdir()
    (store.tmp_dir / f"{dead.pid}-{start}-record").write_text("{}")   # a half-written record
    removed = store.remove_stale_scratch()
    assert sorted(removed) == sorted([*stale.values(), f"{dead.pid}-{start}-record"])
    assert os.listdir(store.tmp_dir) == [mine.name]


def test_no_scratch_space_is_cheap_to_check(store):
    assert store.remove_stale_scratch() == []                  # tmp/ missing: one failed listdir


# -- a full store --------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of the given options at tmp_path/fs (unmounted at the end)."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / "fs"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point
    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def assert_full_and_clean(done, root: Path, what: str):
    assert done.returncode == 125
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"minirun: {what}: the filesystem of the image store {root} is "
                                  "full (No space left on device): free space or inodes there")
    assert not root.exists() or set(os.listdir(root)) <= SKELETON
    for part in ("layers", "images", "tmp"):
        assert not (root / part).exists() or os.listdir(root / part) == []


@pytest.mark.parametrize("options, layer", [
    ("size=1M,nr_inodes=1000", [("big", "file", os.urandom(2 << 20))]),
    ("size=64M,nr_inodes=50", [(f"f{n}", "file", b"x") for n in range(100)]),
], ids=["bytes", "inodes"])
def test_a_full_store_during_import(small_fs, tmp_path, options, layer):
    root = small_fs(options) / "store"
    layout = oci_layout(tmp_path / "layout", [tar_of(layer)])
    done = cli(root, "import", str(layout), "app", state_dir=tmp_path / "state")
    assert_full_and_clean(done, root, f"cannot import {layout}")


@pytest.mark.parametrize("options", ["size=1M,nr_inodes=1000", "size=64M,nr_inodes=50"],
                         ids=["bytes", "inodes"])
def test_a_full_store_during_the_builtin_build(small_fs, tmp_path, options):
    root = small_fs(options) / "store"
    done = cli(root, "run", "hello", "true", state_dir=tmp_path / "state")
    assert_full_and_clean(done, root, "cannot build the built-in image 'hello'")
    assert not (tmp_path / "state").exists() or os.listdir(tmp_path / "state") == []


def test_a_record_that_cannot_be_written_takes_its_new_layers_with_it(store, tmp_path, monkeypatch):
    """The layers are renamed into layers/ first, then the record is written: if that fails
    (a disk full at just that moment), the layers no record names must not stay."""
    layout = oci_layout(tmp_path / "one", [tar_of([("a", "file")])])
    store.import_image(str(layout), "kept")
    kept = set(os.listdir(store.layers_dir))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(image.Store, "_save_image", full)
    layout = oci_layout(tmp_path / "two", [tar_of([("a", "file")]), tar_of([("b", "file")])])
    with pytest.raises(RuntimeFailure, match="is full .No space left on device."):
        store.import_image(str(layout), "lost")
    assert set(os.listdir(store.layers_dir)) == kept and os.listdir(store.tmp_dir) == []
