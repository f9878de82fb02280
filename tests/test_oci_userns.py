"""User namespaces in an OCI bundle (linux.uidMappings/gidMappings): the container's root is
uid 0 inside and host uid 100000 outside, and what that root cannot do on the host's files.
Bundles are written here and driven as an engine drives them (test_oci.py's Engine)."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from test_oci import base_config, cgroups_named, engine, rootfs, wait_until  # noqa: F401

HOST_ID = 100000                # the container's 0..65535 are the host's 100000..165535
MAPPING = [{"containerID": 0, "hostID": HOST_ID, "size": 65536}]


def userns_config(args: list[str], *volumes: tuple[Path, str]) -> dict:
    config = base_config(args)
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"].update(uidMappings=[dict(item) for item in MAPPING],
                           gidMappings=[dict(item) for item in MAPPING])
    config["root"]["readonly"] = False      # the root's owner is host root: still unwritable
    for source, destination in volumes:
        config["mounts"].append({"destination": destination, "type": "bind",
                                 "source": str(source), "options": ["rbind", "rw"]})
    return config


@pytest.fixture
def reachable(engine, rootfs):      # noqa: F811
    """The engine, with its bundles and their root in a directory the container's root may
    pass through (0711, as engines make their storage for user namespaces): pytest's own
    temporary directories are 0700, closed to host uid 100000."""
    top = Path(tempfile.mkdtemp(prefix="minirun-userns-"))
    os.chmod(top, 0o711)
    shutil.copytree(rootfs, top / "rootfs", symlinks=True)
    engine.tmp, engine.rootfs = top, top / "rootfs"
    yield engine
    for container_id in engine.made:
        engine("delete", "--force", container_id)
    shutil.rmtree(top)


@pytest.fixture
def volumes(reachable):
    """Two host directories for the container: `mine`, owned by the container's root (host
    uid 100000, as an engine chowns a volume for a user namespace), and `hosts`, the host
    root's, mode 0755. Their mount points exist in the root already: the container's root
    could not make them there (the root belongs to host root)."""
    mine, hosts = reachable.tmp / "mine", reachable.tmp / "hosts"
    mine.mkdir()
    os.chown(mine, HOST_ID, HOST_ID)
    hosts.mkdir(mode=0o755)
    (hosts / "secret").write_text("host root's\n")
    os.chmod(hosts / "secret", 0o600)
    for name in ("mine", "hosts"):
        (reachable.rootfs / name).mkdir()
    return mine, hosts


def processes_of(uid: int) -> list[int]:
    """Host PIDs running as host user `uid` (the container's root, outside). Not zombies: an
    ended container's process waits there for its new parent, the host's init (the engine's
    subreaper, with podman), to reap it."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{entry}/status").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields and fields["Uid"].split()[0] == str(uid) \
                and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def test_root_inside_is_an_unprivileged_user_outside(reachable, volumes):
    engine, (mine, hosts) = reachable, volumes      # noqa: F811
    script = """
        cat /proc/self/uid_map /proc/self/gid_map
        echo "id $(id -u) $(id -g)"
        echo "pid $$ sees $(ls /proc | grep -c '^[0-9]') processes"
        echo "root dir owner $(stat -c %u:%g /)"
        touch /mine/made && echo made
        touch /hosts/planted 2>/dev/null || echo "write in hosts refused"
        cat /hosts/secret 2>/dev/null || echo "read of secret refused"
        mknod /mine/kmsg c 1 11 2>/dev/null || echo "mknod refused"
        echo hi > /dev/null && head -c 4 /dev/zero | wc -c
    """
    output = engine.run_to_end("u1", userns_config(["sh", "-c", script],
                                                   (mine, "/mine"), (hosts, "/hosts")))
    lines = output.splitlines()
    # The map the runtime wrote, as the kernel shows it from inside: "0 100000 65536".
    assert lines[0].split() == ["0", str(HOST_ID), "65536"], output
    assert lines[1].split() == ["0", str(HOST_ID), "65536"], output
    assert lines[2] == "id 0 0"
    assert lines[3].startswith("pid 1 sees ") and lines[3] != "pid 1 sees 0 processes"
    # The root belongs to host root, who is not mapped: it shows as the overflow ID.
    assert lines[4] == "root dir owner 65534:65534"
    assert lines[5:] == ["made", "write in hosts refused", "read of secret refused",
                         "mknod refused", "4"]
    made = os.stat(mine / "made")
    assert (made.st_uid, made.st_gid) == (HOST_ID, HOST_ID)
    assert not (hosts / "planted").exists() and not (mine / "kmsg").exists()


def test_lifecycle_and_exec_in_a_user_namespace(reachable, tmp_path):
    engine = reachable      # noqa: F811
    config = userns_config(["sh", "-c", "echo started; trap 'echo bye; exit 0' TERM; "
                                        "while :; do sleep 0.05; done"])
    created = engine.create("u2", engine.bundle(config), "--pid-file", str(tmp_path / "pid"))
    assert created.returncode == 0, created.stderr
    state = json.loads(engine("state", "u2").stdout)
    pid = int((tmp_path / "pid").read_text())
    assert (state["status"], state["pid"]) == ("created", pid)
    # Seen from the host: the process is host user 100000, in a user namespace of its own
    # that owns its PID namespace; it is in its cgroup.
    assert f"Uid:\t{HOST_ID}\t{HOST_ID}" in Path(f"/proc/{pid}/status").read_text()
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(HOST_ID), "65536"]
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    assert "/minirun/u2" in Path(f"/proc/{pid}/cgroup").read_text()
    assert engine("start", "u2").returncode == 0
    wait_until(lambda: engine.output("u2") == "started\n")
    assert engine.status("u2") == "running"
    (tmp_path / "process.json").write_text(json.dumps({
        "args": ["sh", "-c", "id -u; readlink /proc/self/ns/user; cat /proc/self/uid_map"],
        "cwd": "/", "env": ["PATH=/bin:/usr/bin"], "user": {"uid": 0, "gid": 0}}))
    executed = engine("exec", "--process", str(tmp_path / "process.json"), "u2")
    assert executed.returncode == 0, executed.stderr
    assert executed.stdout.split() == ["0", os.readlink(f"/proc/{pid}/ns/user"), "0",
                                       str(HOST_ID), "65536"]
    assert engine("kill", "u2", "TERM").returncode == 0
    wait_until(lambda: engine.status("u2") == "stopped")
    assert engine.output("u2") == "started\nbye\n"
    assert engine("delete", "u2").returncode == 0
    assert engine("state", "u2").returncode == 125
    assert processes_of(HOST_ID) == []


def test_joining_a_user_namespace_by_path(reachable):
    engine = reachable      # noqa: F811
    first = userns_config(["sleep", "60"])
    assert engine.create("u3", engine.bundle(first, "u3")).returncode == 0
    pid = json.loads(engine("state", "u3").stdout)["pid"]
    # A second container in the first one's user namespace: no mappings of its own (the
    # namespace has them), new namespaces of every other kind, owned by that user namespace.
    second = base_config(["sh", "-c", "id -u; readlink /proc/self/ns/user; cat /proc/self/uid_map;"
                                      " ls /proc/1/exe >/dev/null && echo proc"])
    second["root"]["readonly"] = False
    second["linux"]["namespaces"].append({"type": "user", "path": f"/proc/{pid}/ns/user"})
    output = engine.run_to_end("u4", second)
    assert output.split() == ["0", os.readlink(f"/proc/{pid}/ns/user"), "0", str(HOST_ID),
                              "65536", "proc"]
    assert engine("delete", "--force", "u3").returncode == 0


def _without_user_namespace(config):
    config["linux"]["namespaces"].remove({"type": "user"})


@pytest.mark.parametrize("change, named", [
    (_without_user_namespace, "linux.uidMappings without a user namespace"),
    (lambda c: c["linux"].pop("gidMappings"), "linux.gidMappings is missing"),
    (lambda c: c["linux"].update(uidMappings=[]), "linux.uidMappings is missing or empty"),
    (lambda c: c["linux"]["uidMappings"].append({"containerID": 100, "hostID": 300000,
                                                 "size": 10}),
     "linux.uidMappings[1] overlaps linux.uidMappings[0] on the container side"),
    (lambda c: c["linux"].update(gidMappings=MAPPING + [
        {"containerID": 70000, "hostID": HOST_ID + 5, "size": 1}]),
     "linux.gidMappings[1] overlaps linux.gidMappings[0] on the host side"),
    (lambda c: c["linux"].update(uidMappings=[{"containerID": 0, "hostID": HOST_ID, "size": 0}]),
     "linux.uidMappings[0] needs"),
    (lambda c: c["linux"].update(uidMappings=[{"containerID": 0, "hostID": 2**32 - 5,
                                               "size": 10}]),
     "linux.uidMappings[0] runs past the last ID"),
    (lambda c: c["process"]["user"].update(uid=70000), "linux.uidMappings does not map uid 70000"),
    (lambda c: c["linux"].update(gidMappings=[{"containerID": 1, "hostID": HOST_ID, "size": 9}]),
     "linux.gidMappings does not map gid 0 (the container's root"),
    (lambda c: c["linux"]["uidMappings"][0].update(hostID="many"),
     "linux.uidMappings[0].hostID must be int"),
    (lambda c: c["linux"]["namespaces"][-1].update(path="/proc/self/ns/user"),
     "linux.uidMappings with a user namespace path"),
])
def test_bad_mappings_are_refused_in_one_line(reachable, change, named):
    engine = reachable      # noqa: F811
    config = userns_config(["true"])
    change(config)
    before = processes_of(HOST_ID)
    result = engine.create("bad", engine.bundle(config))
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
    engine.made.remove("bad")
    assert engine("state", "bad").returncode == 125
    assert os.listdir(engine.env["MINIRUN_STATE"]) == []
    assert processes_of(HOST_ID) == before
    assert cgroups_named("bad") == []


def test_a_root_the_container_cannot_reach_is_refused(engine):     # noqa: F811
    # pytest's temporary directories are 0700: host uid 100000 may not pass.
    result = engine.create("closed", engine.bundle(userns_config(["true"])))
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1, result.stderr
    assert "may not pass through" in result.stderr and "chmod o+x" in result.stderr
    engine.made.remove("closed")
    assert cgroups_named("closed") == []


def test_a_failure_inside_the_user_namespace_leaves_nothing(reachable):
    engine = reachable      # noqa: F811
    # A mount point missing from the root: the container's root may not make it there
    # (the root is host root's), so create fails after both forks, in the child's child.
    config = userns_config(["true"])
    config["mounts"].append({"destination": "/no-such-dir", "type": "tmpfs", "source": "tmpfs"})
    result = engine.create("late", engine.bundle(config))
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "Permission denied" in result.stderr, result.stderr
    engine.made.remove("late")
    assert os.listdir(engine.env["MINIRUN_STATE"]) == []
    assert cgroups_named("late") == []
    assert processes_of(HOST_ID) == []
