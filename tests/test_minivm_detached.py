"""Detached VMs, real guests under TCG: `minivm boot -d`, then ps, logs, exec, qmp, stop, rm, gc.

Each test has a state directory of its own ($MINIVM_STATE, short: its sockets' paths must fit
unix(7)'s 107 bytes) and counts, at the end, the QEMU processes booted from this session's
kernel link, the files in its TMPDIR, and everything under the state directory: a detached VM
leaves nothing once it is removed (`rm`, `--rm`, or `gc` after its supervisor was killed).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BOOT_TIMEOUT, leftovers

pytestmark = pytest.mark.vm


@pytest.fixture
def vms(guest):
    """Run `minivm ARGS...` with this test's state directory: (run, state, guest)."""
    state = Path(tempfile.mkdtemp(prefix="mv-", dir="/tmp")) / "state"
    home, env = guest
    env = {**env, "MINIVM_STATE": str(state)}

    def run(*args, timeout=BOOT_TIMEOUT):
        result = subprocess.run([sys.executable, "-m", "minivm", *args], env=env,
                                capture_output=True, text=True, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr
        return result
    yield run, state
    for record in state.glob("*/record.json"):      # a failed test must not leave VMs running
        pid = json.loads(record.read_text())["supervisor_pid"]
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(state.parent, ignore_errors=True)


def record_of(state: Path, name: str) -> dict:
    for path in state.glob("*/record.json"):
        record = json.loads(path.read_text())
        if record["name"] == name:
            return record
    raise AssertionError(f"no record of {name}")


def until(check, what: str, timeout: float = BOOT_TIMEOUT):
    """Poll `check` until it returns something true (returned), or fail saying `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (its descriptors come and go as Python starts)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            pass
    return False


def status_of(run, name: str) -> str:
    rows = [line for line in run("ps", "-a").stdout.splitlines()[1:] if line.split()[1] == name]
    assert len(rows) == 1, rows
    return re.search(r"  (Up(?: \(Paused\))?|Booting|Exited \(\d+\) \d+s ago|Dead \(.*?\))  ",
                     rows[0]).group(1)


def nothing_left(guest, state: Path) -> tuple:
    """(QEMU processes, TMPDIR files, what is under the state directory)."""
    qemus, temps = leftovers(guest)
    return qemus, temps, sorted(str(path.relative_to(state)) for path in state.rglob("*")) \
        if state.exists() else []


def one_line_125(result) -> bool:
    return result.returncode == 125 and result.stderr.count("\n") == 1 and \
        result.stderr.startswith("minivm: ")


def test_a_detached_vm_outlives_boot_and_is_driven_by_logs_ps_exec_qmp_rm(vms, guest):
    run, state = vms
    # The app writes to both streams, then waits for a file that only `exec` can make: so the
    # exec'd command is in the app's own root, and the app's exit code is its own choice.
    booted = run("boot", "-d", "--network", "none", "--name", "job", "hello", "sh", "-c",
                 "echo working; echo a warning >&2; "
                 "while [ ! -e /tmp/go ]; do sleep 0.1; done; echo done; exit 3")
    assert booted.returncode == 0, booted.stderr
    assert re.fullmatch(r"[0-9a-f]{16}\n", booted.stdout)
    vm_id = booted.stdout.strip()
    home = state / vm_id
    assert oct(home.stat().st_mode & 0o777) == "0o700" and oct(state.stat().st_mode & 0o777) == \
        "0o700"
    # `boot -d` has returned; the VM runs on, QEMU a child of the supervisor.
    record = record_of(state, "job")
    assert len(leftovers(guest)[0]) == 1
    assert int(Path(f"/proc/{record['qemu_pid']}/stat").read_text().rsplit(")", 1)[1].split()[1]) \
        == record["supervisor_pid"]
    assert status_of(run, "job") == "Up"
    assert "job" in run("ps").stdout                    # running: listed without -a too

    logs = until(lambda: (result := run("logs", "job")).stdout and result.stderr and result,
                 "the app's output on both streams", timeout=60)
    assert (logs.stdout, logs.stderr) == ("working\n", "a warning\n")       # kept apart

    status = run("qmp", "job", "query-status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "running"
    human = run("qmp", "job", "human-monitor-command", '{"command-line": "info status"}')
    assert human.stdout == "VM status: running\n", human.stderr       # HMP's text, as text
    # Paused (QMP stop): ps and inspect say so, as `docker ps` does, from the STOP event the
    # supervisor follows; no one in the guest would answer an exec: refused, not left hanging.
    assert run("qmp", "job", "stop").returncode == 0
    until(lambda: status_of(run, "job") == "Up (Paused)", "ps to show the pause", timeout=30)
    assert "job" in run("ps").stdout                    # paused is still running: no -a needed
    assert json.loads(run("inspect", "job").stdout)["state"] == "Up (Paused)"
    assert json.loads(run("qmp", "job", "query-status").stdout)["status"] == "paused"
    paused = run("exec", "job", "true")
    assert one_line_125(paused) and "the VM is paused" in paused.stderr, paused.stderr
    assert run("qmp", "job", "cont").returncode == 0    # resumed (the RESUME event): Up again
    until(lambda: status_of(run, "job") == "Up", "ps to show the resume", timeout=30)
    assert json.loads(run("inspect", "job").stdout)["state"] == "Up"

    executed = run("exec", "job", "sh", "-c", "echo from exec; echo to stderr >&2; exit 3")
    assert (executed.returncode, executed.stdout, executed.stderr) == \
        (3, "from exec\n", "to stderr\n")
    assert run("exec", "job", "/no/such/program").returncode == 127
    _, env = guest
    piped = subprocess.run(f"{sys.executable} -m minivm exec job seq 100000 | head -1; "
                           "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", text=True,
                           env={**env, "MINIVM_STATE": str(state)}, capture_output=True)
    assert (piped.stdout, piped.stderr) == ("1\n141\n", ""), piped.stderr   # as `| head -1`

    # logs -f follows until the VM has exited: it shows what came after it started.
    follow = subprocess.Popen([sys.executable, "-m", "minivm", "logs", "-f", "job"], text=True,
                              env={**env, "MINIVM_STATE": str(state)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    waiting = subprocess.Popen([sys.executable, "-m", "minivm", "wait", "job"], text=True,
                               env={**env, "MINIVM_STATE": str(state)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(run("inspect", "job").stdout)["state"] == "Up"
    released = run("exec", "job", "touch", "/tmp/go")
    # The app ends on it, and the guest powers off: the reply may be lost on the way, as a
    # `docker exec` that ends a container's PID 1 may end with it.
    assert released.returncode == 0 or released.stderr == \
        "minivm: the VM stopped before the command ended\n", released.stderr
    assert follow.communicate(timeout=BOOT_TIMEOUT) == ("working\ndone\n", "a warning\n")
    assert waiting.communicate(timeout=BOOT_TIMEOUT) == ("3\n", "")     # wait: the app's code
    until(lambda: status_of(run, "job").startswith("Exited (3)"), "the app's exit")
    assert run("ps").stdout.count("\n") == 1            # only the header: no VM runs
    assert nothing_left(guest, state)[0] == []          # QEMU is gone with the app
    assert sorted(path.name for path in home.iterdir()) == [
        "lock", "minivm.log", "record.json", "stderr.log", "stdout.log"]   # sockets gone too

    # An exited VM is still there for logs and ps -a, but not for exec or qmp.
    assert run("logs", "job").stdout == "working\ndone\n"
    inspected = json.loads(run("inspect", "job").stdout)
    assert (inspected["exit_code"], inspected["qmp_socket"], inspected["directory"]) == \
        (3, None, str(home)) and inspected["state"].startswith("Exited (3)")
    for command in (["exec", "job", "true"], ["qmp", "job", "query-status"]):
        refused = run(*command)
        assert one_line_125(refused) and "not running (Exited (3)" in refused.stderr, \
            refused.stderr
    assert run("rm", "job").stdout == "job\n"
    assert nothing_left(guest, state) == ([], [], [])
    assert state.is_dir()                   # the state root stays: it may be the user's own


def test_stop_presses_the_power_button_and_pulls_the_plug_after_the_grace_period(vms, guest):
    """A guest whose app ends on SIGTERM shuts down on the button: the guest init turned the
    ACPI press into SIGTERM (143 is the app's own status). One that ignores SIGTERM is
    switched off with QMP quit after -t: 137, as `docker stop` ends in SIGKILL."""
    run, state = vms
    home, env = guest
    boots = [subprocess.Popen([sys.executable, "-m", "minivm", "boot", "-d", "--network", "none",
                               "--name", name, "hello", *command],
                              env={**env, "MINIVM_STATE": str(state)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, command in (("polite", ["sleep", "1000"]),
                                   ("deaf", ["sh", "-c", "trap '' TERM; sleep 1000"]))]
    for boot in boots:
        out, err = boot.communicate(timeout=BOOT_TIMEOUT)
        assert boot.returncode == 0, err
    assert len(leftovers(guest)[0]) == 2

    # The grace period is far longer than the guest needs: the button alone ends "polite".
    # A bad name among several is one line, and the next name is still stopped (as Docker).
    stopped = run("stop", "-t", "30", "nosuch", "polite")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (
        125, "polite\n", "minivm: no VM 'nosuch': give a name or id from `minivm ps -a`\n")
    assert status_of(run, "polite").startswith("Exited (143)")
    assert status_of(run, "deaf") == "Up"                  # the other one is not touched

    stopped = run("stop", "-t", "1", "deaf")
    assert (stopped.returncode, stopped.stdout) == (0, "deaf\n"), stopped.stderr
    assert status_of(run, "deaf").startswith("Exited (137)")
    log = (state / record_of(state, "deaf")["id"] / "minivm.log").read_text()
    assert "the VM was switched off (QMP quit) before its app ended" in log

    for command, out in (("wait", "143\n137\n"), ("rm", "polite\ndeaf\n")):
        result = run(command, "polite", "nosuch", "deaf")
        assert (result.returncode, result.stdout, result.stderr) == (
            125, out, "minivm: no VM 'nosuch': give a name or id from `minivm ps -a`\n")
    assert nothing_left(guest, state) == ([], [], [])


def test_a_killed_supervisor_takes_qemu_with_it_and_gc_removes_its_record(vms, guest):
    run, state = vms
    home, env = guest
    boots = [subprocess.Popen([sys.executable, "-m", "minivm", "boot", "-d", "--network", "none",
                               *flags, "hello", *command], env={**env, "MINIVM_STATE": str(state)},
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for flags, command in ((["--name", "victim"], ["sleep", "1000"]),
                                    (["--name", "brief", "--rm"], ["sleep", "1000"]),
                                    (["--name", "forced"], ["sleep", "1000"]))]
    for boot in boots:
        out, err = boot.communicate(timeout=BOOT_TIMEOUT)
        assert boot.returncode == 0, err
    # --rm: once its app has ended, nothing of "brief" stays; a `wait` begun before still
    # gets its exit code, which the supervisor left in the lock file it had open.
    waiting = subprocess.Popen([sys.executable, "-m", "minivm", "wait", "brief"], text=True,
                               env={**env, "MINIVM_STATE": str(state)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    until(lambda: holds_open(waiting.pid, state / record_of(state, "brief")["id"] / "lock"),
          "wait to open the lock")
    assert run("stop", "brief").returncode == 0     # the power button: SIGTERM to the app
    assert waiting.communicate(timeout=BOOT_TIMEOUT) == ("143\n", "")
    until(lambda: not any(json.loads(path.read_text())["name"] == "brief"
                          for path in state.glob("*/record.json")), "brief's removal",
          timeout=60)

    # rm of a running VM: refused, unless -f, which switches it off first (QMP quit).
    refused = run("rm", "forced")
    assert one_line_125(refused) and "VM forced is running" in refused.stderr, refused.stderr
    forced = record_of(state, "forced")
    assert run("rm", "-f", "forced").stdout == "forced\n"
    assert not (state / forced["id"]).exists() and not Path(f"/proc/{forced['qemu_pid']}").exists()

    record = record_of(state, "victim")
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    until(lambda: not Path(f"/proc/{record['qemu_pid']}").exists(), "QEMU to die (PDEATHSIG)",
          timeout=30)
    assert leftovers(guest)[0] == []
    assert status_of(run, "victim") == "Dead (supervisor killed: `minivm gc`)"
    assert run("exec", "victim", "true").returncode == 125
    orphan = run("wait", "victim")
    assert one_line_125(orphan) and "ended without an exit status" in orphan.stderr, orphan.stderr
    (state / "junk").touch()                # not a VM's: gc leaves it alone, and says nothing
    collected = run("gc")
    assert collected.returncode == 0 and \
        f"removed {record['id'][:12]}" in collected.stdout.splitlines(), collected.stderr
    (state / "junk").unlink()
    assert nothing_left(guest, state) == ([], [], [])
    assert run("ps", "-a").stdout.count("\n") == 1


@pytest.mark.parametrize("command, message", [
    (["logs", "nosuch"], "no VM 'nosuch': give a name or id from `minivm ps -a`"),
    (["stop", "nosuch"], "no VM 'nosuch'"),
    (["rm", "nosuch"], "no VM 'nosuch'"),
    (["wait", "nosuch"], "no VM 'nosuch'"),
    (["inspect", "nosuch"], "no VM 'nosuch'"),
    (["exec", "nosuch", "true"], "no VM 'nosuch'"),
    (["qmp", "nosuch", "query-status"], "no VM 'nosuch'"),
    (["qmp", "nosuch", "query-status", "{not json"], "ARGUMENTS is not JSON"),
    (["qmp", "nosuch", "query-status", "[1]"], "ARGUMENTS must be a JSON object"),
    (["boot", "-d", "--network", "none", "no-such-image"], "no-such-image"),
    (["boot", "-d", "-it", "hello"], "-d with -i/-t"),
    (["boot", "--rm", "hello"], "--rm is for a detached VM: add -d"),
])
def test_bad_input_is_one_line_125_and_leaves_nothing(vms, guest, command, message):
    run, state = vms
    result = run(*command)
    assert one_line_125(result) and message in result.stderr, result.stderr
    assert result.stdout == ""
    assert nothing_left(guest, state) == ([], [], [])
