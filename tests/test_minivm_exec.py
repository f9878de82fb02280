"""`minivm exec` streams, real guests under TCG: the command's output reaches the client while it
runs, stdout and stderr apart and every byte as it was, in bounded memory at every hop (an output
four times the guest's RAM), and a client that goes mid-stream leaves the agent free.

One detached VM serves the module (a boot costs seconds under TCG): 128M of RAM, and a host
directory shared at /shared, the one way the test can signal a command while it runs (the agent
runs one command at a time, so another exec would wait behind it). At the end, the VM is removed
and nothing of it is left. minivm/agent.py and minivm/relay.c describe the protocol.
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import BOOT_TIMEOUT, leftovers
from minivm import agent

pytestmark = pytest.mark.vm

GUARD = 120         # seconds: not a measure, only how long a broken exec may hang the test
MIB = 1024 * 1024


class VM:
    def __init__(self, env: dict, shared: Path):
        self.env, self.shared = env, shared

    def minivm(self, *args, **popen):
        return subprocess.Popen([sys.executable, "-m", "minivm", *args], env=self.env, **popen)

    def exec(self, *command, text=True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "minivm", "exec", "vm", *command],
                                env=self.env, capture_output=True, text=text, timeout=GUARD)
        assert b"Traceback" not in (result.stderr if not text else result.stderr.encode())
        return result

    def processes(self) -> str:
        """The guest's processes, as its busybox ps lists them."""
        listed = self.exec("ps", "-o", "args")
        assert listed.returncode == 0, listed.stderr
        return listed.stdout


@pytest.fixture(scope="module")
def vm(guest):
    home, env = guest
    top = Path(tempfile.mkdtemp(prefix="mx-", dir="/tmp"))     # short: sockets' paths fit
    env = {**env, "MINIVM_STATE": str(top / "state")}
    shared = top / "shared"
    shared.mkdir()
    booted = subprocess.run([sys.executable, "-m", "minivm", "boot", "-d", "--network", "none",
                             "--memory", "128M", "-v", f"{shared}:/shared", "--name", "vm",
                             "hello", "sleep", "1000000"],
                            env=env, capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    assert booted.returncode == 0, booted.stderr
    try:
        yield VM(env, shared)
    finally:
        removed = subprocess.run([sys.executable, "-m", "minivm", "rm", "-f", "vm"], env=env,
                                 capture_output=True, text=True, timeout=BOOT_TIMEOUT)
        for record in (top / "state").glob("*/record.json"):     # if rm failed: kill it
            try:
                os.kill(json.loads(record.read_text())["supervisor_pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(top)
        assert removed.returncode == 0, removed.stderr
        assert leftovers(guest) == ([], [])


def readable(stream, what: str) -> None:
    """Wait until `stream` (unbuffered, or not read yet) has something to read, or fail."""
    assert select.select([stream], [], [], GUARD)[0], f"no {what} from the exec in {GUARD} s"


def test_output_comes_while_the_command_runs(vm):
    # The command prints, then waits for a file that the test makes only once it has read the
    # first line: a reply sent at the end could never be read in time.
    command = vm.minivm("exec", "vm", "sh", "-c", "echo first; while [ ! -e /shared/go ]; "
                        "do sleep 0.1; done; echo second >&2; echo third",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        readable(command.stdout, "first line")
        assert command.stdout.readline() == b"first\n"
        assert command.poll() is None                   # the command still waits
        (vm.shared / "go").touch()
        assert command.communicate(timeout=GUARD) == (b"third\n", b"second\n")
        assert command.returncode == 0
    finally:
        (vm.shared / "go").touch()
        command.kill()
        command.wait()
        (vm.shared / "go").unlink()


def test_stdout_and_stderr_stay_apart_with_every_byte_value(vm):
    every_byte = bytes(range(256)) * 4096                       # 1 MiB: many frames
    noise = os.urandom(300_000) + b"\nx 0\no 5\n"               # frame-like bytes too
    (vm.shared / "every").write_bytes(every_byte)
    (vm.shared / "noise").write_bytes(noise)
    try:
        result = vm.exec("sh", "-c", "for i in 1 2 3; do cat /shared/every; "
                         "cat /shared/noise >&2; done; exit 42", text=False)
    finally:
        (vm.shared / "every").unlink()
        (vm.shared / "noise").unlink()
    assert result.stdout == every_byte * 3
    assert result.stderr == noise * 3
    assert result.returncode == 42


def peak_memory(pid: int) -> int | None:
    """A process's peak resident memory since its exec, in bytes (VmHWM, proc(5)); None once
    it has exited (a zombie has no memory to show). (Not wait4's ru_maxrss: that also counts
    the moments between fork and exec, when the child of a long pytest run still maps all of
    pytest's memory.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def supervisor_peak_memory(vm) -> int:
    record = json.loads(next(Path(vm.env["MINIVM_STATE"]).glob("*/record.json")).read_text())
    return peak_memory(record["supervisor_pid"])


def test_an_output_four_times_the_guest_s_ram_streams_whole_in_bounded_memory(vm):
    # 512 MiB of zeroes from a guest of 128 MiB (dd: busybox head copies in small pieces, about
    # ten times slower under TCG), counted as it comes; then the command's own status.
    size = 512 * MIB
    before = supervisor_peak_memory(vm)
    command = vm.minivm("exec", "vm", "sh", "-c",
                        f"dd if=/dev/zero bs=65536 count={size // 65536}; exit 7",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = client_peak = 0
    while True:
        readable(command.stdout, "output")
        chunk = os.read(command.stdout.fileno(), MIB)
        if not chunk:
            break
        assert chunk.count(0) == len(chunk)
        received += len(chunk)
        client_peak = peak_memory(command.pid) or client_peak      # until it has exited
    command.wait()
    errors = command.stderr.read()
    assert (received, command.returncode) == (size, 7), errors
    assert b"8192+0 records out" in errors
    # Each hop held a frame or so, not the output: the supervisor and the client grew by a few
    # MiB at most (a whole output kept would be 512).
    assert supervisor_peak_memory(vm) - before < 16 * MIB
    assert client_peak < 64 * MIB
    assert vm.exec("true").returncode == 0


@pytest.mark.parametrize("how, command, marker", [
    ("killed", "echo started; exec yes exec-marker", "yes exec-marker"),    # while it writes
    ("killed", "echo started; exec sleep 987654", "sleep 987654"),      # while it is quiet
    ("| head -1", "yes exec-marker", "yes exec-marker"),
], ids=["killed-writing", "killed-quiet", "head"])
def test_a_client_that_goes_mid_stream_leaves_the_agent_free(vm, how, command, marker):
    if how == "| head -1":
        # A closed pipe on the client's stdout: 141, as a shell reports SIGPIPE, and the guest's
        # command, which would write forever, is stopped.
        piped = subprocess.run(f"{sys.executable} -m minivm exec vm sh -c '{command}' | head -1; "
                               "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                               env=vm.env, capture_output=True, text=True, timeout=GUARD)
        assert (piped.stdout, piped.stderr) == ("exec-marker\n141\n", "")
    else:
        client = vm.minivm("exec", "vm", "sh", "-c", command,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        readable(client.stdout, "output")
        assert client.stdout.readline() == b"started\n"     # the command runs, its output flows
        client.kill()
        client.communicate()
    # The next exec runs (the guest's relay was told, and the supervisor read the rest), and
    # the command that lost its client is gone with it.
    assert marker not in vm.processes()


def test_one_command_at_a_time_and_one_whose_client_gave_up_waiting_is_not_run(vm):
    first = vm.minivm("exec", "vm", "sh", "-c", "echo holding; "
                      "while [ ! -e /shared/go ]; do sleep 0.1; done",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        readable(first.stdout, "first line")
        assert first.stdout.readline() == b"holding\n"
        # A second request waits for its turn; its client goes before the turn comes, having
        # sent the whole request. The supervisor drops it (agent.Relay sees the end of file);
        # had it been sent, the hang-up would kill it before it started (relay.c): the test
        # fails only with both undone.
        with socket.socket(socket.AF_UNIX) as second:
            second.connect(str(next(Path(vm.env["MINIVM_STATE"]).glob("*/exec.sock"))))
            second.sendall(agent.request(["touch", "/shared/second-ran"]))
        (vm.shared / "go").touch()
        assert first.communicate(timeout=GUARD) == (b"", b"") and first.returncode == 0
    finally:
        (vm.shared / "go").touch()
        first.kill()
        first.wait()
        (vm.shared / "go").unlink()
    assert vm.exec("ls", "/shared").stdout == ""                # the second never ran


def test_a_command_missing_or_not_executable_is_127_or_126_with_one_line(vm):
    missing = vm.exec("/no/such/program")
    assert missing.returncode == 127 and missing.stdout == ""
    assert missing.stderr.startswith("minivm: '/no/such/program' not found in the VM (PATH=")
    directory = vm.exec("/etc")
    assert (directory.returncode, directory.stdout, directory.stderr) == \
        (126, "", "minivm: '/etc' cannot be executed in the VM: Permission denied\n")
