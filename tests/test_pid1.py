"""PID 1 duties: signals reach the container, orphans are reaped, and PID 1's end is the end."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import read_line, wait_for_container

# `wait` returns as soon as a trapped signal arrives (POSIX, "Signals and Error Handling").
TRAP_AND_WAIT = ('for s in TERM INT HUP QUIT USR1 USR2; do trap "echo got $s; exit 42" $s; done; '
                 'sleep 60 & echo ready; wait')


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                                 signal.SIGUSR1, signal.SIGUSR2])
def test_signals_sent_to_minirun_reach_the_container(start_minirun, sig):
    process = start_minirun("run", "hello", "sh", "-c", TRAP_AND_WAIT)
    assert read_line(process) == "ready\n"
    process.send_signal(sig)
    out, err = process.communicate(timeout=20)
    assert out == f"got {sig.name[3:]}\n", err
    assert process.returncode == 42


def wait_for_pid1_to_be(minirun_env, command: str, pid_offset: int = 0) -> int:
    """Wait until the container's PID 1 (or, with pid_offset=1, its first child) runs `command`."""
    pid1 = wait_for_container(minirun_env)["pid"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            pid = pid1 if not pid_offset else int(open(f"/proc/{pid1}/task/{pid1}/children").read().split()[0])
            if open(f"/proc/{pid}/comm").read().strip() == command:
                return pid1
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"the container never ran {command}")


def test_sigint_kills_the_command_under_init_and_gives_130(start_minirun, minirun_env):
    process = start_minirun("run", "--init", "hello", "sleep", "60")
    wait_for_pid1_to_be(minirun_env, "sleep", pid_offset=1)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=20)
    assert process.returncode == 130


def test_pid_1_without_a_handler_ignores_sigint_as_in_docker(start_minirun, minirun_env):
    # The kernel protects a PID namespace's init from signals it has no handler for. Only
    # SIGKILL from outside the namespace gets through: 128 + 9.
    process = start_minirun("run", "hello", "sleep", "60")
    pid1 = wait_for_pid1_to_be(minirun_env, "sleep")
    process.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=1)
    os.kill(pid1, signal.SIGKILL)
    process.communicate(timeout=20)
    assert process.returncode == 137


def test_command_killed_by_a_signal_under_init_gives_128_plus_n(minirun):
    assert minirun("run", "--init", "hello", "sh", "-c", "kill -KILL $$").returncode == 137
    assert minirun("run", "--init", "hello", "sh", "-c", "kill -TERM $$").returncode == 143


def _zombies_in(container_pid: int) -> int:
    """Zombie processes whose parent is the container's PID 1, seen from the host."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == container_pid:
                count += 1
    return count


@pytest.mark.parametrize("init, zombies", [(False, 1), (True, 0)])
def test_orphans_are_reaped_by_init(start_minirun, minirun_env, init, zombies):
    # The subshell exits at once, so its `sleep` is orphaned and re-parented to PID 1. Then the
    # command execs `sleep`, which never calls wait(): as PID 1 it leaves the orphan a zombie;
    # with --init, init is PID 1 and reaps it.
    flags = ["--init"] if init else []
    process = start_minirun("run", *flags, "hello", "sh", "-c",
                            "(sleep 0.2 &); echo ready; exec sleep 30")
    assert read_line(process) == "ready\n"
    pid1 = wait_for_container(minirun_env)["pid"]
    time.sleep(0.6)                                       # the orphan has exited by now
    assert _zombies_in(pid1) == zombies
    process.send_signal(signal.SIGTERM)
    if not init:
        os.kill(pid1, signal.SIGKILL)
    process.communicate(timeout=20)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in open(f"/proc/{entry}/cmdline").read().replace("\0", " "):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_everything_dies_with_pid_1(minirun):
    marker = f"sleep 4242.{os.getpid()}"                  # a command line found nowhere else
    result = minirun("run", "hello", "sh", "-c", f"{marker} & {marker} & sleep 0.2; exit 5")
    assert result.returncode == 5
    assert _processes_with(marker) == []


def test_container_dies_when_minirun_is_killed(start_minirun, minirun, minirun_env):
    # The parent-death signal: a killed runtime does not leave a container running.
    marker = f"sleep 4243.{os.getpid()}"
    process = start_minirun("run", "hello", "sh", "-c", f"echo ready; exec {marker}")
    assert read_line(process) == "ready\n"
    assert _processes_with(marker)
    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []
    assert minirun("gc").returncode == 0        # its bundle, record and cgroup (tested elsewhere)


def _wait_gone(marker: str) -> list[int]:
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _processes_with(marker)


def test_a_container_of_a_non_root_user_dies_with_its_killed_runtime(start_minirun, minirun):
    # Switching to the image's user clears the parent-death signal (prctl(2)); minirun arms it
    # again after the switch. Without that, this container would outlive its runtime unseen.
    marker = f"sleep 4244.{os.getpid()}"
    process = start_minirun("run", "-u", "nobody", "hello", "sh", "-c", f"echo ready; exec {marker}")
    assert read_line(process) == "ready\n"
    assert _processes_with(marker)
    process.kill()
    process.wait(timeout=10)
    assert _wait_gone(marker) == []
    assert minirun("gc").returncode == 0


def test_a_command_exec_d_as_another_user_dies_with_its_killed_exec(start_minirun, minirun,
                                                                     minirun_env):
    process = start_minirun("run", "--name", "host4exec", "hello", "sleep", "60")
    wait_for_container(minirun_env)
    marker = f"sleep 4245.{os.getpid()}"
    joined = start_minirun("exec", "-u", "nobody", "host4exec", "sh", "-c", f"echo ready; exec {marker}")
    assert read_line(joined) == "ready\n"
    joined.kill()
    joined.wait(timeout=10)
    assert _wait_gone(marker) == []
    assert minirun("stop", "-t", "0", "host4exec").returncode == 0
    process.communicate(timeout=20)


# --- --init: a small static program, and nothing of the host -----------------------------------

def test_init_is_the_containers_own_program_with_the_containers_environment(start_minirun, minirun,
                                                                           minirun_env):
    process = start_minirun("run", "--init", "--name", "initial", "-e", "MARK=inside", "hello",
                            "sh", "-c", "echo ready; sleep 60")
    assert read_line(process) == "ready\n"
    pid1 = wait_for_container(minirun_env)["pid"]
    # Seen from the host (root may look): an executable inside the container, a command line
    # that names the container's command, and the container's environment, not minirun's.
    assert os.readlink(f"/proc/{pid1}/exe") == "/dev/init"
    assert open(f"/proc/{pid1}/cmdline").read().split("\0")[:3] == ["/dev/init", "--", "sh"]
    environ = dict(item.split("=", 1) for item in open(f"/proc/{pid1}/environ").read().split("\0") if item)
    assert environ["MARK"] == "inside" and "MINIRUN_STATE" not in environ
    assert sorted(os.listdir(f"/proc/{pid1}/fd")) == ["0", "1", "2"]
    # From inside: PID 1 is not dumpable, so no process of the container may read its
    # environment or attach to it, root or not.
    inside = minirun("exec", "initial", "sh", "-c", "cat /proc/1/environ; echo status=$?")
    assert "Permission denied" in inside.stderr and "status=1" in inside.stdout
    # `exec` starts from the container's environment, not the host's.
    seen = minirun("exec", "initial", "env").stdout
    assert "MARK=inside" in seen and "MINIRUN_STATE" not in seen
    assert minirun("stop", "initial").returncode == 0
    assert process.wait(timeout=20) == 143          # init passed SIGTERM on; sh died of it


def test_a_command_init_cannot_run_is_one_line(minirun):
    result = minirun("run", "--init", "hello", "no-such-command")
    assert result.returncode == 127
    assert result.stderr.startswith("minirun: 'no-such-command' not found in the container")
    assert minirun("run", "--init", "hello", "/etc/passwd").returncode == 126


# --- The reader of the container's output goes away --------------------------------------------

@pytest.mark.parametrize("flags, command", [
    ([], "yes"),
    ([], "sh -c 'while :; do echo x; done'"),      # its writes fail; as PID 1 it never dies of it
    (["--init"], "yes"),
])
def test_a_pipeline_whose_reader_exits_ends_with_141(minirun_env, flags, command):
    # As on the host, where `yes | head -1` ends `yes` with SIGPIPE: 128 + 13.
    pipeline = f"{sys.executable} -m minirun run {' '.join(flags)} hello {command} | head -1; " \
               "echo status=${PIPESTATUS[0]}"
    result = subprocess.run(["bash", "-c", pipeline], env=minirun_env, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "status=141", result.stderr
    assert "Traceback" not in result.stderr
