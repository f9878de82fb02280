"""Faults: the runtime killed mid-run, an early Ctrl-C, a full store, a read-only or full state
directory, closed stdio. After each, everything minirun makes is counted again: it is what it
was before (at once, or after one `minirun gc` where the runtime had no chance to clean up),
and the exit status is the documented one.

What is counted, for the containers of this module's private store and state directories only
(other programs on the machine run containers too):
  host mounts that name the store or state directory; cgroup directories of our containers
  under every /sys/fs/cgroup/*/minirun; bundles and locks; records and names; scratch
  directories of the store; live processes of our containers.
"""
import os
import select
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


MARK = "3613"           # `sleep 3613`: a process of a container of this module, found by its argv


@pytest.fixture(scope="module")
def private_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults-store")


@pytest.fixture
def env(private_store, tmp_path) -> dict:
    (tmp_path / "state").mkdir()
    return {**os.environ, "MINIRUN_ROOT": str(private_store), "MINIRUN_STATE": str(tmp_path / "state")}


class Census:
    """Everything minirun may leave behind, for one store and state directory."""

    def __init__(self, env: dict):
        self.store, self.state = Path(env["MINIRUN_ROOT"]), Path(env["MINIRUN_STATE"])
        self.ids: set[str] = set()          # every container id seen in the store

    def take(self) -> dict:
        self.ids |= {name.removesuffix(".lock") for name in self._list(self.store / "containers")}
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        return {
            "mounts": sorted(" ".join(line.split()[2:]) for line in mountinfo
                             if str(self.store) in line or str(self.state) in line),
            "cgroups": sorted(str(path) for path in Path("/sys/fs/cgroup").glob("*/minirun/*")
                              if path.name in self.ids),
            "bundles": self._list(self.store / "containers"),
            "records": self._list(self.state),
            "scratch": self._list(self.store / "tmp"),
            "processes": self._marked_processes(),
        }

    @staticmethod
    def _list(directory: Path) -> list[str]:
        return sorted(os.listdir(directory)) if directory.is_dir() else []

    @staticmethod
    def _marked_processes() -> list[int]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if cmdline.read_bytes().split(b"\0")[:2] == [b"sleep", MARK.encode()]:
                    found.append(int(cmdline.parent.name))
            except OSError:
                pass
        return found


def minirun(env, *args, **popen):
    command = [sys.executable, "-m", "minirun", *args]
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def gc(env) -> None:
    result = minirun(env, "gc")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module", autouse=True)
def built_image(private_store):
    """The hello image, built once into the private store before anything is counted."""
    state = private_store.parent / "faults-state"
    state.mkdir(exist_ok=True)
    assert minirun({**os.environ, "MINIRUN_ROOT": str(private_store), "MINIRUN_STATE": str(state)},
                   "run", "hello", "true").returncode == 0


def wait_for_explain_line(process, step: str, timeout: float = 30.0) -> None:
    """Read --explain lines from the runtime's stderr until one of `step` comes."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                line = process.stderr.readline()
                if not line:
                    break
                if f"] {step:<12}" in line:
                    return
    raise AssertionError(f"no --explain line for step {step!r}")


# --- The runtime SIGKILLed in the middle of a run -------------------------------------------

@pytest.mark.parametrize("delay", [0, 0.002])
@pytest.mark.parametrize("step", ["image", "bundle", "cgroup", "unshare", "pivot_root", "exec"])
def test_a_runtime_killed_at_any_step_leaves_nothing_after_one_gc(env, step, delay):
    census = Census(env)
    before = census.take()
    process = minirun(env, "run", "--explain", "hello", "sh", "-c", f"echo ready; exec sleep {MARK}",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_explain_line(process, step)
        time.sleep(delay)
    finally:
        process.kill()                          # no cleanup of its own: gc's turn
        process.wait(timeout=10)
    census.take()                               # note the id of what it left
    gc(env)
    deadline = time.monotonic() + 10            # the container dies with its runtime (pdeathsig)
    while census.take() != before and time.monotonic() < deadline:
        time.sleep(0.05)
        gc(env)
    assert census.take() == before


def test_the_next_run_removes_what_a_killed_run_left(env):
    census = Census(env)
    before = census.take()
    process = minirun(env, "run", "--explain", "hello", "sh", "-c", f"exec sleep {MARK}",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_explain_line(process, "exec")
    process.kill()
    process.wait(timeout=10)
    assert census.take() != before
    time.sleep(0.2)                             # its PID 1 gets the parent-death SIGKILL
    assert minirun(env, "run", "hello", "true").returncode == 0
    after = census.take()
    assert after == before, {key: (before[key], after[key]) for key in before if before[key] != after[key]}


# --- An early Ctrl-C ---------------------------------------------------------------------------

def signal_state(pid: int) -> str:
    """How far the process is, told by what it does with SIGINT (proc(5), SigBlk and SigCgt):
    "default" (the interpreter has not installed its handler yet), "caught" (Python's handler:
    a KeyboardInterrupt could be raised), "held" (blocked: minirun's first step, see cli.py)."""
    try:
        fields = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith(("SigBlk", "SigCgt")))
    except OSError:
        return "gone"
    bit = 1 << (signal.SIGINT - 1)
    if int(fields["SigBlk"], 16) & bit:
        return "held"
    return "caught" if int(fields["SigCgt"], 16) & bit else "default"


@pytest.mark.parametrize("delay", [0, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_an_early_ctrl_c_is_130_and_leaves_nothing(env, delay):
    census = Census(env)
    before = census.take()
    process = minirun(env, "run", "--init", "hello", "sleep", MARK,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    state = signal_state(process.pid)           # once held, it stays held until the end
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    if state == "held":
        # Before the container exists, the run stops between two steps; after, the signal is
        # passed on, and with --init the command dies of it: 130 either way.
        assert process.returncode == 130
        assert stderr in ("", "minirun: interrupted by SIGINT before the container started\n")
    elif state == "default":
        # The interpreter is still starting: the kernel ends it by SIGINT's default action,
        # which is what a shell reports as 130.
        assert process.returncode == -signal.SIGINT and stderr == ""
    else:
        # Python runs its own start-up (site, runpy) before minirun's first line: the one
        # moment a KeyboardInterrupt still ends it, with the interpreter's traceback (and
        # status 1 if runpy was still looking for the module). Nothing of minirun's exists yet.
        assert process.returncode in (1, 130, -signal.SIGINT)
    assert census.take() == before              # at once: no gc needed


def test_a_ctrl_c_while_minirun_imports_waits_for_a_step_boundary(env, tmp_path):
    # A stand-in for click that says when its import begins and then takes a second: the
    # Ctrl-C lands in the middle of minirun's imports, where it once raised KeyboardInterrupt.
    stub = tmp_path / "slow-import"
    stub.mkdir()
    (stub / "click.py").write_text(
        "import os, sys, time\n"
        "os.write(int(os.environ['IMPORTING_FD']), b'.')\n"
        "time.sleep(1)\n"
        "sys.path.remove(os.path.dirname(__file__))\n"
        "del sys.modules['click']\n"
        "import click\n")
    importing_read, importing_write = os.pipe()
    env = {**env, "PYTHONPATH": f"{stub}:{env.get('PYTHONPATH', '')}",
           "IMPORTING_FD": str(importing_write)}
    census = Census(env)
    before = census.take()
    process = minirun(env, "run", "hello", "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      pass_fds=[importing_write])
    os.close(importing_write)
    assert os.read(importing_read, 1) == b"."
    os.close(importing_read)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr == "minirun: interrupted by SIGINT before the container started\n"
    assert census.take() == before


def test_minirun_holds_from_its_first_line_the_signals_a_run_passes_on():
    # cli.py lists them itself, to start without ctypes: the two lists must agree.
    check = ("import minirun.cli, minirun.signals\n"
             "assert minirun.cli.HELD_AT_START == set(minirun.signals.FORWARDED)\n")
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0


# --- Storage that fails ---------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount tmpfs file systems of a given size and inode count; unmount them at the end."""
    mounted = []

    def mount(name: str, size: str, inodes: int) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs",
                        str(directory)], check=True)
        mounted.append(directory)
        return directory
    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", str(directory)], check=True)


def fill_inodes(directory: Path) -> list[Path]:
    """Use up every free inode of the file system at `directory`; return the files made."""
    made = []
    while True:
        path = directory / f"filler{len(made)}"
        try:
            path.touch()
        except OSError:
            return made
        made.append(path)


@pytest.mark.parametrize("free_inodes", [0, 1, 2, 3, 4])
def test_a_store_out_of_inodes_is_one_line_and_leaves_nothing(env, small_tmpfs, free_inodes):
    # The bundle takes five inodes (the lock, the bundle, upper, work, merged): each count below
    # that stops it at another step.
    store = small_tmpfs("store", "32m", 1000)
    env["MINIRUN_ROOT"] = str(store)
    assert minirun(env, "run", "hello", "true").returncode == 0      # the image, built in it
    census = Census(env)
    fillers = fill_inodes(store)
    for filler in fillers[len(fillers) - free_inodes:]:
        filler.unlink()
    before = census.take()
    result = minirun(env, "run", "hello", "true")
    assert result.returncode == 125
    assert result.stderr == f"minirun: cannot make the container's directory in {store}/containers: " \
                            "No space left on device; free space (or inodes) there, or point " \
                            "MINIRUN_ROOT at another store\n"
    assert census.take() == before


def test_a_store_out_of_space_is_one_line_and_leaves_nothing(env, small_tmpfs):
    store = small_tmpfs("store", "32m", 1000)
    env["MINIRUN_ROOT"] = str(store)
    assert minirun(env, "run", "hello", "true").returncode == 0
    census = Census(env)
    with open(store / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    before = census.take()
    result = minirun(env, "run", "hello", "true")
    assert result.returncode == 125
    assert "No space left on device" in result.stderr and result.stderr.count("\n") == 1
    assert census.take() == before


@pytest.mark.parametrize("inodes", [1, 2])   # the record fails; the record fits, its name does not
def test_a_full_state_directory_is_one_line_and_leaves_nothing(env, small_tmpfs, inodes):
    env["MINIRUN_STATE"] = str(small_tmpfs("state-full", "64k", inodes + 1))   # + the root dir
    census = Census(env)
    before = census.take()
    result = minirun(env, "run", "--memory", "64M", "hello", "true")
    assert result.returncode == 125
    assert result.stderr == f"minirun: cannot record the container in {env['MINIRUN_STATE']}: " \
                            "No space left on device; point MINIRUN_STATE at a writable " \
                            "directory with free space\n"
    assert census.take() == before


def test_a_read_only_state_directory_is_one_line_and_leaves_nothing(env, tmp_path):
    state = tmp_path / "read-only"
    state.mkdir()
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        for where in (state, state / "below"):          # the directory, or one to make there
            env["MINIRUN_STATE"] = str(where)
            census = Census(env)
            before = census.take()
            result = minirun(env, "run", "hello", "true")
            assert result.returncode == 125
            assert result.stderr == f"minirun: cannot record the container in {where}: " \
                                    "Read-only file system; point MINIRUN_STATE at a writable " \
                                    "directory with free space\n"
            assert census.take() == before
    finally:
        subprocess.run(["umount", str(state)], check=True)


# --- Closed stdio -----------------------------------------------------------------------------

@pytest.mark.parametrize("closing", [">&-", "2>&-", "<&-", ">&- 2>&- <&-"])
@pytest.mark.parametrize("flags", [[], ["--init"], ["-t"]])
def test_closed_stdio_keeps_the_commands_status(env, closing, flags):
    # Closed by the caller, 0, 1 and 2 are reopened on /dev/null before minirun opens any file,
    # so no record, lock or pipe takes their numbers, and the command's status comes back. The
    # command finds all three open too (a redirection from a closed one fails, and so would &&).
    census = Census(env)
    before = census.take()
    command = " ".join([sys.executable, "-m", "minirun", "run", *flags, "hello", "sh", "-c",
                        "'true <&0 && echo out && echo err >&2 && exit 7'", closing])
    result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 7, result.stderr
    assert "Traceback" not in result.stderr
    assert census.take() == before


# --- Run by a user other than root, and in closed pipelines ------------------------------------

@pytest.mark.parametrize("step", ["security", "exec"])
def test_a_runtime_killed_while_its_container_runs_as_another_user_leaves_nothing(env, step):
    # A change of user clears the parent-death signal; minirun arms it again after the switch
    # (spawn._give_up_privileges). Without that, this container would outlive its runtime.
    census = Census(env)
    before = census.take()
    process = minirun(env, "run", "--explain", "-u", "nobody", "hello", "sh", "-c",
                      f"exec sleep {MARK}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_explain_line(process, step)
    finally:
        process.kill()
        process.wait(timeout=10)
    census.take()
    deadline = time.monotonic() + 10
    while census.take() != before and time.monotonic() < deadline:
        time.sleep(0.05)
        gc(env)
    assert census.take() == before


@pytest.mark.parametrize("flags", [[], ["--init"], ["-u", "nobody"]])
def test_a_pipeline_whose_reader_goes_away_ends_with_141_and_leaves_nothing(env, flags):
    census = Census(env)
    before = census.take()
    command = " ".join([sys.executable, "-m", "minirun", "run", *flags, "hello", "yes"])
    result = subprocess.run(["bash", "-c", f"{command} | head -1; echo ${{PIPESTATUS[0]}}"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["y", "141"], result.stderr
    assert census.take() == before


@pytest.mark.parametrize("delay", [0.02, 0.04, 0.07, 0.1])
def test_a_ctrl_c_before_run_d_prints_the_id_is_130_and_leaves_nothing(env, delay):
    """`run -d` holds its signals from its first line, as a foreground run does; a Ctrl-C
    before it has printed the container's id ends it: 130, the supervisor and its container
    gone, no id on stdout. (It used to be swallowed: 0, and the container left running.)"""
    census = Census(env)
    before = census.take()
    process = minirun(env, "run", "-d", "--init", "hello", "sleep", MARK,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    state = signal_state(process.pid)
    printed = select.select([process.stdout], [], [], 0)[0]    # the id, or its end (EOF)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    if printed:                         # the Ctrl-C came too late: the container runs on
        assert process.returncode == 0 and len(stdout.strip()) == 64
        assert minirun(env, "rm", "-f", stdout.strip()).returncode == 0
        pytest.skip("the Ctrl-C came after `run -d` had printed the id")
    assert stdout == ""
    if state == "held":
        assert process.returncode == 130
        assert stderr == "minirun: interrupted by SIGINT before `run -d` returned: the " \
                         "container was stopped and removed\n"
    else:
        assert process.returncode in (1, 130, -signal.SIGINT)
    assert census.take() == before
