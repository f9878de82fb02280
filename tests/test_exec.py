"""`minirun exec` joins a running container's namespaces and cgroup; `minirun stop` ends it."""
import os
import signal
import time

import pytest

from conftest import read_line, wait_for_container

SERVE = "echo from-pid-1 > /tmp/mark; sleep 60 & echo ready; wait"


@pytest.fixture
def web(start_minirun, minirun_env):
    """A running container named `web`, with a file written by its PID 1; stopped afterwards."""
    process = start_minirun("run", "--name", "web", "--hostname", "webhost", "-e", "ROLE=server",
                            "hello", "sh", "-c", SERVE)
    assert read_line(process) == "ready\n"
    yield process, wait_for_container(minirun_env)
    if process.poll() is None:
        os.kill(wait_for_container(minirun_env)["pid"], signal.SIGKILL)
        process.wait(timeout=20)


def test_exec_sees_the_containers_files_hostname_processes_and_env(minirun, web):
    assert minirun("exec", "web", "cat", "/tmp/mark").stdout == "from-pid-1\n"   # its writable layer
    assert minirun("exec", "web", "hostname").stdout == "webhost\n"               # its UTS namespace
    processes = minirun("exec", "web", "ps", "-o", "pid,comm").stdout.split("\n")[1:-1]
    assert [line.split() for line in processes][:2] == [["1", "sh"], ["2", "sleep"]]   # its PIDs
    assert "ROLE=server" in minirun("exec", "web", "env").stdout.splitlines()     # PID 1's env
    assert minirun("exec", "-e", "ROLE=probe", "web", "sh", "-c", "echo $ROLE").stdout == "probe\n"


def test_exec_joins_the_containers_cgroup_and_network(minirun, start_minirun, web):
    _, record = web
    cgroups = {line.split(":", 2)[2] for line in
               minirun("exec", "web", "cat", "/proc/self/cgroup").stdout.splitlines()}
    assert cgroups == {"/"}                                   # at the root of its cgroup namespace
    links = minirun("exec", "web", "ip", "-o", "link").stdout.splitlines()
    assert [line.split(":")[1].strip().split("@")[0] for line in links] == ["lo", "eth0"]
    # Seen from the host, the exec'd process is in the container's own cgroup, limits and all.
    marker = f"sleep 60.{os.getpid()}"
    process = start_minirun("exec", "web", "sh", "-c", f"echo ready; exec {marker}")
    assert read_line(process) == "ready\n"
    deadline = time.monotonic() + 20
    while not (found := [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == marker]):
        assert time.monotonic() < deadline, "the exec'd command never started"
        time.sleep(0.02)                                  # the shell is still exec'ing it
    host_pid = int(found[0])
    assert f"/minirun/{record['id']}" in open(f"/proc/{host_pid}/cgroup").read()
    process.kill()


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
    except OSError:
        return ""


def test_exec_exit_status_and_errors(minirun, web):
    assert minirun("exec", "web", "sh", "-c", "exit 3").returncode == 3
    missing = minirun("exec", "web", "no-such-command")
    assert missing.returncode == 127 and missing.stderr.count("\n") == 1
    unknown = minirun("exec", "no-such-container", "true")
    assert unknown.returncode == 125
    assert unknown.stderr == "minirun: no running container 'no-such-container': " \
                             "give a name or id from `minirun ps`\n"


def test_exec_keeps_the_containers_limits_on_privilege(minirun, web):
    assert minirun("exec", "web", "mount", "-t", "tmpfs", "none", "/mnt").returncode != 0
    assert minirun("exec", "-u", "nobody", "web", "id", "-u").stdout == "65534\n"


def test_exec_by_id_prefix(minirun, web):
    _, record = web
    assert minirun("exec", record["id"][:8], "hostname").stdout == "webhost\n"


def test_stop_sends_sigterm_first(start_minirun, minirun, minirun_env):
    process = start_minirun("run", "--name", "polite", "hello", "sh", "-c",
                            'trap "echo bye; exit 7" TERM; sleep 60 & echo ready; wait')
    assert read_line(process) == "ready\n"
    wait_for_container(minirun_env)
    assert minirun("stop", "polite").returncode == 0
    out, _ = process.communicate(timeout=20)
    assert out == "bye\n" and process.returncode == 7


def test_stop_kills_a_pid_1_that_ignores_sigterm(start_minirun, minirun, minirun_env):
    process = start_minirun("run", "--name", "stubborn", "hello", "sh", "-c", "sleep 60 & echo ready; wait")
    assert read_line(process) == "ready\n"
    wait_for_container(minirun_env)
    assert minirun("stop", "-t", "0.5", "stubborn").returncode == 0
    process.communicate(timeout=20)
    assert process.returncode == 128 + signal.SIGKILL
    assert os.listdir(minirun_env["MINIRUN_STATE"]) == []     # the runtime cleaned up after it
