"""Nothing stays behind: no host mount, no bundle directory, no state record, after any kind of end."""
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import read_line, wait_for_container


def host_mounts() -> list[str]:
    """The host's mount table, without the per-mount IDs that differ between reads."""
    return sorted(" ".join(line.split()[2:]) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def leftovers(env: dict) -> dict:
    containers = Path(env["MINIRUN_ROOT"]) / "containers"
    return {"bundles": sorted(os.listdir(containers)) if containers.exists() else [],  # and locks
            "records": sorted(os.listdir(env["MINIRUN_STATE"])),
            # what minirun or Python's tempfile would name (other programs share /tmp)
            "tmp": sorted(name for name in os.listdir("/tmp") if name.startswith(("tmp", "minirun")))}


@pytest.fixture
def nothing_left(minirun_env):
    """Counts mounts, bundles, records and /tmp entries before the test and after it."""
    before_mounts, before = host_mounts(), leftovers(minirun_env)
    yield
    assert host_mounts() == before_mounts
    assert leftovers(minirun_env) == before


@pytest.mark.parametrize("command, status", [
    (["true"], 0),
    (["sh", "-c", "echo data > /tmp/file; mkdir -p /var/x; exit 3"], 3),
    (["no-such-command"], 127),
    (["/etc/passwd"], 126),
])
def test_normal_and_failing_runs_leave_nothing(minirun, nothing_left, command, status):
    assert minirun("run", "hello", *command).returncode == status


def test_setup_failure_leaves_nothing(minirun, nothing_left):
    # -w onto a file: the container's own setup fails after the overlay and /proc were mounted.
    result = minirun("run", "-w", "/etc/passwd", "hello", "true")
    assert result.returncode == 125 and result.stderr.startswith("minirun: setting up the container failed")


def test_mounts_stay_inside_while_the_container_runs(start_minirun, minirun, nothing_left):
    before = host_mounts()
    process = start_minirun("run", "hello", "sh", "-c", "sleep 60 & echo ready; wait")
    assert read_line(process) == "ready\n"
    assert host_mounts() == before              # overlay, proc, dev, sys: none visible to the host
    process.send_signal(signal.SIGKILL)         # the harshest end of the runtime itself
    process.wait(timeout=10)
    time.sleep(0.1)                             # let the parent-death signal end the container
    assert minirun("gc").returncode == 0        # removes its bundle and record


def test_interrupted_runs_leave_nothing(start_minirun, minirun_env, nothing_left):
    process = start_minirun("run", "--init", "hello", "sh", "-c", "sleep 60 & echo ready; wait")
    assert read_line(process) == "ready\n"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=20)
    assert process.returncode == 130


@pytest.mark.parametrize("cleaner", [("run", "hello", "true"), ("gc",)])
def test_a_killed_runtime_is_cleaned_up_by_the_next_run(start_minirun, minirun, minirun_env, cleaner):
    before = leftovers(minirun_env)
    process = start_minirun("run", "--name", "doomed", "hello", "sh", "-c", "sleep 60 & echo ready; wait")
    assert read_line(process) == "ready\n"
    record = wait_for_container(minirun_env)
    process.kill()                              # SIGKILL: minirun gets no chance to clean up
    process.wait(timeout=10)
    left = leftovers(minirun_env)
    assert len(left["bundles"]) == len(before["bundles"]) + 2          # the bundle and its lock
    assert len(left["records"]) >= len(before["records"]) + 2          # the record and its name
    assert cgroup_dirs(record["id"])
    time.sleep(0.1)                             # let the parent-death signal end the container
    assert minirun(*cleaner).returncode == 0
    assert leftovers(minirun_env) == before
    assert not cgroup_dirs(record["id"])
    assert minirun("run", "--name", "doomed", "hello", "true").returncode == 0   # free again


def cgroup_dirs(container_id: str) -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/minirun/{container_id}"))


def test_gc_removes_half_written_records_of_dead_runtimes_only(minirun, minirun_env):
    import subprocess
    from minirun.state import temporary_name
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = Path(minirun_env["MINIRUN_STATE"])
    (state / f".{'a' * 64}.json.{dead.pid}-1.0badf00d").write_text("{")
    live = temporary_name(f"{'b' * 64}.json")                           # this process's
    (state / live).write_text("{")
    assert minirun("gc").returncode == 0
    assert os.listdir(state) == [live]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    # Every record, pid file and minivm cache entry is written by state.write_atomically.
    from minirun import state
    record = tmp_path / "record.json"
    state.write_atomically(record, b"old", mode=0o600)
    old_umask = os.umask(0o077)                 # the mode is the one asked for, whatever umask
    try:
        state.write_atomically(tmp_path / "pid", b"42")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "pid").stat().st_mode & 0o777 == 0o644
    assert record.stat().st_mode & 0o777 == 0o600

    def full_disk(source, target):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "rename", full_disk)
    with pytest.raises(OSError):
        state.write_atomically(record, b"new")
    assert record.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["pid", "record.json"]


def test_a_record_whose_pid_was_reused_is_stale(minirun, minirun_env):
    # A killed runtime's PID may be handed to another process: the PID alone would make the
    # record look alive forever. Its start time tells the new process from the old.
    from minirun import state
    record = state.ContainerRecord(id="c" * 64, name="ghost", image="hello", command=["true"],
                                   runtime_pid=os.getpid(),
                                   runtime_start=state.start_time(os.getpid()) - 1)
    os.environ["MINIRUN_STATE"], saved = minirun_env["MINIRUN_STATE"], os.environ.get("MINIRUN_STATE")
    try:
        state.save(record)
        assert not state.is_alive(record)
        assert minirun("stop", "ghost").returncode == 125          # never signals a stranger
        assert minirun("gc").returncode == 0
        assert os.listdir(minirun_env["MINIRUN_STATE"]) == []
    finally:
        if saved is None:
            del os.environ["MINIRUN_STATE"]
        else:
            os.environ["MINIRUN_STATE"] = saved


def test_a_lock_removed_between_open_and_flock_is_made_again(tmp_path, monkeypatch):
    # gc removes a lock file it could take; a new run may have opened that file just before:
    # its flock then holds a file gone from the directory, which would prove nothing.
    import fcntl
    from minirun import state
    path = tmp_path / "c.lock"
    real_flock, interrupted = fcntl.flock, []

    def a_gc_comes_first(fd, operation):
        if not interrupted:
            interrupted.append(fd)
            taken = state.take_if_free(path)        # the lock is free: gc takes it, removes it
            assert taken is not None
            path.unlink()
            os.close(taken)
        real_flock(fd, operation)

    monkeypatch.setattr(state.fcntl, "flock", a_gc_comes_first)
    held = state.hold_for_life(path)
    monkeypatch.undo()
    assert interrupted and os.fstat(held).st_ino == os.stat(path).st_ino
    assert state.take_if_free(path) is None          # held, by the file in the directory
    os.close(held)
    assert state.take_if_free(path) is not None      # and free once its holder is gone


def test_gc_from_another_state_directory_finds_a_dead_runs_bundle_and_record(
        start_minirun, minirun, minirun_env, tmp_path):
    # One store, two state directories (as the tests run): the lock beside each bundle says
    # whether its minirun lives, and where its record is, whichever directory that is.
    before = leftovers(minirun_env)
    process = start_minirun("run", "hello", "sh", "-c", "echo ready; exec sleep 60")
    assert read_line(process) == "ready\n"
    record = wait_for_container(minirun_env)
    process.kill()
    process.wait(timeout=10)
    time.sleep(0.1)
    other = {**minirun_env, "MINIRUN_STATE": str(tmp_path / "other-state")}
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "minirun", "gc"], env=other,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and f"removed {record['id'][:12]}" in result.stdout
    assert leftovers(minirun_env) == before
    assert not cgroup_dirs(record["id"])


def test_gc_takes_only_free_locks(minirun, minirun_env):
    from minirun import state
    containers = Path(minirun_env["MINIRUN_ROOT"]) / "containers"
    containers.mkdir(exist_ok=True)
    before = leftovers(minirun_env)
    alive, dead, unlocked = "a" * 64, "d" * 64, "e" * 64
    for container_id in (alive, dead, unlocked):
        (containers / container_id / "upper").mkdir(parents=True)
    held = state.hold_for_life(containers / f"{alive}.lock")         # a living owner: us
    os.close(state.hold_for_life(containers / f"{dead}.lock"))       # an owner gone
    try:
        result = minirun("gc")
        assert result.returncode == 0
        assert result.stdout.split() == ["removed", dead[:12], "removed", unlocked[:12]]
        assert sorted(leftovers(minirun_env)["bundles"]) == sorted(before["bundles"] + [alive, f"{alive}.lock"])
    finally:
        import shutil
        shutil.rmtree(containers / alive)
        (containers / f"{alive}.lock").unlink()
        os.close(held)


def test_a_bundle_is_removed_whole_and_never_through_its_links(tmp_path):
    """What a container may leave in its writable layer: deep trees, directories it made
    unreadable, and links to the host's directories, whose contents must not go with it."""
    from minirun import rootfs
    outside = tmp_path / "host"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("the host's")
    bundle = rootfs.Bundle(tmp_path / "bundle")
    deep = bundle.upper / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "file").write_text("x")
    (bundle.upper / "a" / "to-host").symlink_to(outside / "keep")
    (bundle.upper / "a" / "dangling").symlink_to("/no/such/place")
    (bundle.work / "work").mkdir(parents=True)
    (bundle.work / "work" / "file").write_text("x")
    (bundle.work / "work").chmod(0)                  # as overlayfs leaves its work/work
    rootfs.remove_bundle(bundle)
    assert not bundle.path.exists()
    assert (outside / "keep" / "file").read_text() == "the host's"
