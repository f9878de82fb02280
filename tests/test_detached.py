"""Detached containers: `run -d` under a supervisor, then logs, ps -a, stop, wait, rm, inspect;
a killed supervisor, and gc. Every test counts what is left: bundles, records, cgroups."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from minirun import supervisor

# Traps TERM, so that `stop` ends it with a status of its own choosing (7), not a SIGKILL.
SERVER = ["sh", "-c", "trap 'echo bye; exit 7' TERM; echo out; echo err >&2; "
                      "while :; do sleep 0.1; done"]


def cgroups_of(container_id: str) -> list[Path]:
    return [path for path in Path("/sys/fs/cgroup").glob(f"*/minirun/{container_id}")]


def leftovers(env: dict) -> dict:
    containers = Path(env["MINIRUN_ROOT"]) / "containers"
    state = Path(env["MINIRUN_STATE"])
    return {"bundles": sorted(os.listdir(containers)) if containers.exists() else [],
            "records": sorted(p.name for p in state.glob("*"))}     # supervised/ too


@pytest.fixture
def nothing_left(minirun_env):
    before = leftovers(minirun_env)
    yield
    assert leftovers(minirun_env) == before


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def supervised_record(env, container_id) -> dict:
    return json.loads((Path(env["MINIRUN_STATE"]) / "supervised" / container_id / "record.json").read_text())


def test_detached_lifecycle_end_to_end(minirun, minirun_env, nothing_left):
    started = minirun("run", "-d", "--name", "web", "hello", *SERVER)
    assert started.returncode == 0, started.stderr
    container_id = started.stdout.strip()
    assert len(container_id) == 64 and started.stderr == ""
    # `run -d` has returned; the container runs on, under its supervisor.
    wait_until(lambda: minirun("logs", "web").stdout == "out\n")
    logs = minirun("logs", "web")
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")       # kept apart
    row = minirun("ps").stdout.splitlines()[1].split()
    assert row[:3] == [container_id[:12], "web", "hello"] and "Up" in row
    assert cgroups_of(container_id)
    assert minirun("stop", "web").returncode == 0
    assert minirun("wait", "web").stdout == "7\n"
    assert "Exited (7)" in minirun("ps", "-a").stdout
    assert minirun("ps").stdout.splitlines()[1:] == []             # not running any more
    assert minirun("logs", "web").stdout == "out\nbye\n"
    assert minirun("inspect", "web").returncode == 0
    assert json.loads(minirun("inspect", "web").stdout)["state"] == \
        {"status": "exited", "pid": 0, "exit_code": 7, "detached": True}
    assert cgroups_of(container_id) == []                # the runtime removed it at the exit
    assert minirun("rm", "web").stdout == f"{container_id[:12]}\n"
    assert minirun("ps", "-a").stdout.splitlines()[1:] == []
    assert minirun("logs", "web").returncode == 125


def test_the_supervisor_left_the_callers_session(minirun, minirun_env, nothing_left):
    container_id = minirun("run", "-d", "hello", "sleep", "60").stdout.strip()
    pid = supervised_record(minirun_env, container_id)["supervisor_pid"]
    # setsid'd in a session of its own, and not its leader (the second fork), so it can never
    # take a controlling terminal again.
    assert os.getsid(pid) not in (pid, os.getsid(0))
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] != str(os.getpid())
    assert minirun("rm", "-f", container_id[:12]).returncode == 0


def test_inspect_shows_pid_limits_mounts_and_network(minirun, minirun_env, nothing_left):
    container_id = minirun("run", "-d", "-m", "64M", "--pids-limit", "50", "--name", "lim",
                           "hello", "sleep", "60").stdout.strip()
    described = json.loads(minirun("inspect", "lim").stdout)
    assert described["id"] == container_id and described["state"]["status"] == "running"
    assert Path(f"/proc/{described['state']['pid']}/cmdline").read_bytes() == b"sleep\x0060\x00"
    assert described["limits"] == {"memory": 64 * 1024 ** 2, "pids": 50}
    assert "/ overlay overlay" in described["mounts"] and "/proc proc proc" in described["mounts"]
    assert described["network"] == ["lo", "eth0"]                # the default: --network bridge
    assert minirun("rm", "lim").returncode == 125                  # running: -f needed
    assert minirun("rm", "-f", "lim").returncode == 0
    assert cgroups_of(container_id) == []


def test_logs_are_bounded_and_keep_the_end(minirun, minirun_env, nothing_left):
    # About 2.9 MB of numbered lines: more than the two files of LOG_LIMIT each can hold.
    container_id = minirun("run", "-d", "--name", "chatty", "hello", "seq", "1", "400000").stdout.strip()
    assert minirun("wait", "chatty").stdout == "0\n"
    home = Path(minirun_env["MINIRUN_STATE"]) / "supervised" / container_id
    sizes = [path.stat().st_size for path in home.glob("stdout.log*")]
    assert len(sizes) == 2 and all(size <= supervisor.LOG_LIMIT for size in sizes)
    out = minirun("logs", "chatty").stdout
    assert out.endswith("\n399999\n400000\n") and len(out) == sum(sizes)
    assert minirun("rm", "chatty").returncode == 0


def test_logs_follow_until_the_container_exits(minirun, nothing_left):
    minirun("run", "-d", "--name", "ticker", "hello", "sh", "-c",
            "for i in 1 2 3; do echo $i; sleep 0.3; done")
    assert minirun("logs", "-f", "ticker").stdout == "1\n2\n3\n"
    assert minirun("rm", "ticker").returncode == 0


def test_rm_flag_leaves_nothing_once_it_exits(minirun, nothing_left):
    assert minirun("run", "-d", "--rm", "--name", "gone", "hello", "sh", "-c", "exit 4").returncode == 0
    assert minirun("wait", "gone").stdout in ("4\n", "")    # gone already: nothing to wait for


def test_a_container_that_cannot_start_fails_run_d_and_leaves_nothing(minirun, nothing_left):
    result = minirun("run", "-d", "--name", "bad", "hello", "no-such-command")
    assert result.returncode == 127 and result.stdout == ""
    assert result.stderr.startswith("minirun: 'no-such-command' not found in the container")
    assert minirun("ps", "-a").stdout.splitlines()[1:] == []


def test_names_of_exited_containers_stay_taken(minirun, nothing_left):
    minirun("run", "-d", "--name", "once", "hello", "true")
    assert minirun("wait", "once").stdout == "0\n"
    again = minirun("run", "-d", "--name", "once", "hello", "true")
    assert again.returncode == 125 and "in use" in again.stderr
    assert minirun("rm", "once").returncode == 0


# -- `minirun start`: an exited container again, on the writable layer it kept ------------------

# First life: writes /kept, exits 3. Second life: finds it, prints it, runs until TERM (5).
TWO_LIVES = ["sh", "-c", "if [ -e /kept ]; then cat /kept; trap 'exit 5' TERM; "
                         "while :; do sleep 0.1; done; fi; echo first > /kept; echo made; exit 3"]


def everything_of(env: dict, container_id: str) -> dict:
    """What a container may hold on the host: its bundle (and lock) in the store, its records,
    its cgroups, host mounts that name the store, veths."""
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if env["MINIRUN_ROOT"] in line]
    veths = sorted(name for name in os.listdir("/sys/class/net") if name.startswith("veth"))
    return {**leftovers(env), "cgroups": bool(cgroups_of(container_id)), "mounts": mounts,
            "veths": veths}


def test_start_runs_an_exited_container_again_on_its_own_writable_layer(minirun, minirun_env):
    before = everything_of(minirun_env, "-")
    container_id = minirun("run", "-d", "--network", "none", "--name", "twice", "hello",
                           *TWO_LIVES).stdout.strip()
    assert minirun("wait", "twice").stdout == "3\n"
    # Exited, its writable layer kept in the store (not its mounts or cgroup: those went).
    layer = Path(minirun_env["MINIRUN_ROOT"]) / "containers" / container_id
    assert (layer / "upper" / "kept").read_text() == "first\n"
    assert cgroups_of(container_id) == [] and "Exited (3)" in minirun("ps", "-a").stdout
    started = minirun("start", "twice")
    assert (started.returncode, started.stdout, started.stderr) == (0, "twice\n", "")
    # The second life reads what the first wrote; its output goes on after the first's.
    wait_until(lambda: minirun("logs", "twice").stdout == "made\nfirst\n")
    row = minirun("ps").stdout.splitlines()[1].split()
    assert row[:2] == [container_id[:12], "twice"] and "Up" in row
    assert cgroups_of(container_id)
    assert minirun("stop", "twice").returncode == 0
    assert minirun("wait", "twice").stdout == "5\n"                 # the new exit code
    assert "Exited (5)" in minirun("ps", "-a").stdout
    assert minirun("rm", "twice").returncode == 0
    assert everything_of(minirun_env, container_id) == before


def test_rm_flag_keeps_no_writable_layer(minirun, minirun_env, nothing_left):
    container_id = minirun("run", "-d", "--rm", "--network", "none", "hello", "sh", "-c",
                           "echo x > /kept; sleep 0.3").stdout.strip()
    minirun("wait", container_id[:12])
    wait_until(lambda: not (Path(minirun_env["MINIRUN_ROOT"]) / "containers" /
                            f"{container_id}.lock").exists())
    assert not (Path(minirun_env["MINIRUN_ROOT"]) / "containers" / container_id).exists()
    assert minirun("start", container_id[:12]).returncode == 125


def test_start_of_a_running_or_unknown_container(minirun, minirun_env, nothing_left):
    container_id = minirun("run", "-d", "--network", "none", "--name", "busy", "hello",
                           *SERVER).stdout.strip()
    try:
        supervisor_pid = supervised_record(minirun_env, container_id)["supervisor_pid"]
        again = minirun("start", "busy")        # as `docker start`: nothing to do, and 0
        assert (again.returncode, again.stdout, again.stderr) == (0, "busy\n", "")
        assert supervised_record(minirun_env, container_id)["supervisor_pid"] == supervisor_pid
        unknown = minirun("start", "nosuch")
        assert (unknown.returncode, unknown.stdout) == (125, "")
        assert unknown.stderr == "minirun: no container 'nosuch': give a name or id from " \
                                 "`minirun ps -a`\n"
    finally:
        minirun("rm", "-f", "busy")


def test_gc_keeps_a_kept_layer_and_removes_an_orphaned_one(minirun, minirun_env):
    before = everything_of(minirun_env, "-")
    container_id = minirun("run", "-d", "--network", "none", "--name", "kept", "hello",
                           *TWO_LIVES).stdout.strip()
    assert minirun("wait", "kept").stdout == "3\n"
    layer = Path(minirun_env["MINIRUN_ROOT"]) / "containers" / container_id
    assert minirun("gc").stdout == ""                   # its record keeps it: not garbage
    minirun("run", "--rm", "--network", "none", "hello", "true")    # nor for a run's quick pass
    assert (layer / "upper" / "kept").exists()
    # Its second life, with its supervisor SIGKILLed: the runtime ends the container and lets
    # go of the layer; gc removes the dead supervisor's directory, and with it the layer.
    assert minirun("start", "kept").returncode == 0
    wait_until(lambda: minirun("logs", "kept").stdout == "made\nfirst\n")
    os.kill(supervised_record(minirun_env, container_id)["supervisor_pid"], signal.SIGKILL)
    wait_until(lambda: "Dead" in minirun("ps", "-a").stdout and not cgroups_of(container_id))
    wait_until(lambda: minirun("gc").returncode == 0 and everything_of(minirun_env, container_id) == before)
    # A kept layer whose record went some other way (removed by hand): garbage too.
    container_id = minirun("run", "-d", "--network", "none", "hello", "true").stdout.strip()
    minirun("wait", container_id[:12])
    layer = Path(minirun_env["MINIRUN_ROOT"]) / "containers" / container_id
    assert layer.is_dir()
    supervisor.remove_directory(Path(minirun_env["MINIRUN_STATE"]) / "supervised" / container_id)
    assert minirun("gc").stdout == f"removed {container_id[:12]}\n"
    assert everything_of(minirun_env, container_id) == before


def test_an_interactive_shell_on_a_pty_waits_for_input_and_takes_exec(minirun, nothing_left):
    container_id = minirun("run", "-dit", "--name", "shell", "hello", "sh").stdout.strip()
    time.sleep(0.5)
    assert minirun("ps").stdout.count(container_id[:12]) == 1     # stdin not at its end
    assert minirun("exec", "shell", "sh", "-c", "tty < /proc/1/fd/0").stdout == "/dev/pts/0\n"
    assert minirun("rm", "-f", "shell").returncode == 0


@pytest.mark.parametrize("victims", [("supervisor",), ("supervisor", "runtime")])
def test_a_killed_supervisor_leaves_nothing_gc_does_not_remove(minirun, minirun_env, nothing_left,
                                                               victims):
    container_id = minirun("run", "-d", "--name", "victim", "hello", "sleep", "60").stdout.strip()
    pids = {"supervisor": supervised_record(minirun_env, container_id)["supervisor_pid"],
            "runtime": json.loads((Path(minirun_env["MINIRUN_STATE"]) / f"{container_id}.json")
                                  .read_text())["runtime_pid"]}
    for victim in victims:
        os.kill(pids[victim], signal.SIGKILL)
    # Without its supervisor, the runtime's output has no reader: it ends the container; killed
    # too, the parent-death signal ends it. Either way the container is gone...
    wait_until(lambda: "Dead" in minirun("ps", "-a").stdout)
    # ...and `gc` removes what is left: the supervisor's directory, and the bundle and cgroup
    # of a killed runtime.
    wait_until(lambda: minirun("gc").returncode == 0 and not cgroups_of(container_id)
               and minirun("ps", "-a").stdout.splitlines()[1:] == [])


def test_stop_wait_rm_of_several_go_on_past_a_bad_name(minirun, nothing_left):
    """As `docker stop a nosuch b`: each bad name is one line on stderr, the names after it
    are still acted on, and the status at the end says that something failed (125)."""
    ids = [minirun("run", "-d", "--name", name, "hello", *SERVER).stdout.strip()[:12]
           for name in ("first", "second")]
    for name in ("first", "second"):
        wait_until(lambda: minirun("logs", name).stdout == "out\n")
    try:
        for command, out, unknown in ((["stop"], ids, "running container"),
                                      (["wait"], ["7", "7"], "container"),
                                      (["rm"], ids, "container")):
            result = minirun(*command, "first", "nosuch", "second", "nothing")
            assert (result.returncode, result.stdout.split()) == (125, out), result.stderr
            listing = "`minirun ps`" if command == ["stop"] else "`minirun ps -a`"
            assert result.stderr == "".join(f"minirun: no {unknown} {name!r}: give a name "
                                            f"or id from {listing}\n"
                                            for name in ("nosuch", "nothing"))
        assert minirun("ps", "-a").stdout.splitlines()[1:] == []
    finally:                        # a failing test leaves no container running
        for container_id in ids:
            minirun("rm", "-f", container_id)


def test_kill_finds_a_detached_container_by_name_or_id_as_docker_kill(minirun, nothing_left):
    """`minirun kill` is the OCI command, and also `docker kill`'s: a container of `minirun
    ps` by name (the signal given: TERM, which the server traps, exiting 7) or by a prefix of
    its id (the default: KILL, 137)."""
    ids = [minirun("run", "-d", "--name", name, "hello", *SERVER).stdout.strip()
           for name in ("web", "db")]
    try:
        for name in ("web", "db"):
            wait_until(lambda: minirun("logs", name).stdout == "out\n")
        killed = minirun("kill", "web", "TERM")
        assert (killed.returncode, killed.stderr) == (0, "")
        assert minirun("wait", "web").stdout == "7\n"
        assert minirun("kill", ids[1][:8]).returncode == 0
        assert minirun("wait", "db").stdout == "137\n"
        unknown = minirun("kill", "web")                    # exited: nothing to signal
        assert unknown.returncode == 125
        assert unknown.stderr == "minirun: no container 'web': give an OCI container's id, " \
                                 "or a name or id from `minirun ps`\n"
    finally:
        for container_id in ids:
            minirun("rm", "-f", container_id)


def test_kill_never_signals_a_pid_that_is_not_the_containers(minirun, minirun_env):
    """A record whose PID 1 is now another process (its start time differs: the PID was
    reused) names no running container: kill refuses, and that process lives on."""
    from minirun import state
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        me = os.getpid()
        record = state.ContainerRecord(
            id="f" * 64, name="ghost", image="hello", command=["sleep"], runtime_pid=me,
            runtime_start=state.start_time(me), pid=bystander.pid,
            pid_start=state.start_time(bystander.pid) + 1)     # not when it started
        Path(minirun_env["MINIRUN_STATE"], f"{record.id}.json").write_text(
            json.dumps(record._asdict()))
        result = minirun("kill", "ghost")
        assert result.returncode == 125 and "no container 'ghost'" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("link", ["/etc/hosts", "/etc"])
def test_start_follows_no_link_the_first_life_left_in_etc(minirun, minirun_env, tmp_path, link):
    """/etc/hosts, /etc/hostname and /etc/resolv.conf are written into the kept layer by the
    host, before the second life starts: a link the first life made there to a host path
    must not become a write to the host's file."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hosts").write_text("the host's\n")
    target = victim / "hosts" if link == "/etc/hosts" else victim
    before = everything_of(minirun_env, "-")
    container_id = minirun("run", "-d", "--network", "none", "--name", "linker", "hello", "sh",
                           "-c", f"rm -rf {link} && ln -s {target} {link}").stdout.strip()
    assert minirun("wait", "linker").stdout == "0\n"
    started = minirun("start", "linker")
    assert (victim / "hosts").read_text() == "the host's\n"
    assert sorted(os.listdir(victim)) == ["hosts"]
    if link == "/etc/hosts":        # replaced in the layer, not written through
        assert started.returncode == 0, started.stderr
        minirun("wait", "linker")
    else:                           # /etc is no directory: refused, in one line, still exited
        assert started.returncode == 125 and started.stderr.count("\n") == 1
        assert "is not a directory" in started.stderr
        assert "Exited" in minirun("ps", "-a").stdout
    assert minirun("rm", "linker").returncode == 0
    assert everything_of(minirun_env, container_id) == before
