"""The OCI runtime interface, driven as an engine drives it: a bundle written here, then
create, state, start, state, kill, state, delete; each config.json field checked from inside
the container; what minirun does not do, refused in one line, leaving nothing."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")


def base_config(args: list[str]) -> dict:
    """What `runc spec` writes (runc 1.1), with `args` as the process: a reference bundle."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "TERM=xterm"],
                    "cwd": "/", "capabilities": {"bounding": caps, "effective": caps,
                                                 "permitted": caps, "ambient": caps},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}],
        "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]},
                  "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
                  "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list",
                                  "/sys/firmware"],
                  "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                    "/proc/sysrq-trigger"]}}


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory, store_root) -> Path:
    """The hello image's root, copied: a bundle's root belongs to the bundle."""
    from minirun.image import Store
    env = {**os.environ, "MINIRUN_ROOT": str(store_root)}
    subprocess.run([sys.executable, "-m", "minirun", "images"], env=env, check=True,
                   capture_output=True)
    layer = Store(store_root).get("hello").layers[0]
    root = tmp_path_factory.mktemp("oci") / "rootfs"
    shutil.copytree(layer, root, symlinks=True)
    return root


class Engine:
    """Drives `minirun` as podman does: each operation a separate command; the container's
    stdout and stderr are files that the container inherits from `create`."""

    def __init__(self, env: dict, tmp_path: Path, rootfs: Path):
        self.env, self.tmp, self.rootfs = env, tmp_path, rootfs
        self.made = []

    def bundle(self, config: dict, name: str = "bundle") -> Path:
        bundle = self.tmp / name
        bundle.mkdir()
        (bundle / "rootfs").symlink_to(self.rootfs)
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    def __call__(self, *args, **popen):
        return subprocess.run([sys.executable, "-m", "minirun", *args], env=self.env,
                              capture_output=True, text=True, timeout=60, **popen)

    def create(self, container_id: str, bundle: Path, *extra) -> subprocess.CompletedProcess:
        self.made.append(container_id)
        with open(self.tmp / f"{container_id}.out", "w") as out, \
                open(self.tmp / f"{container_id}.err", "w") as err:
            result = subprocess.run([sys.executable, "-m", "minirun", "create", "--bundle",
                                     str(bundle), *extra, container_id], env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=60)
        result.stderr = (self.tmp / f"{container_id}.err").read_text()
        return result

    def output(self, container_id: str) -> str:
        return (self.tmp / f"{container_id}.out").read_text()

    def status(self, container_id: str) -> str:
        return json.loads(self("state", container_id).stdout)["status"]

    def run_to_end(self, container_id: str, config: dict) -> str:
        """create, start, wait until stopped, delete: the container's stdout."""
        created = self.create(container_id, self.bundle(config, container_id))
        assert created.returncode == 0, created.stderr
        assert self("start", container_id).returncode == 0
        wait_until(lambda: self.status(container_id) == "stopped")
        assert self("delete", container_id).returncode == 0
        return self.output(container_id)


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture
def engine(minirun_env, tmp_path, rootfs):
    engine = Engine(minirun_env, tmp_path, rootfs)
    yield engine
    for container_id in engine.made:            # a failed test leaves no container running
        engine("delete", "--force", container_id)
    assert os.listdir(minirun_env["MINIRUN_STATE"]) == []     # oci/ is gone with the last
    for container_id in engine.made:
        assert cgroups_named(container_id) == []
    assert not list((CGROUP_ROOT / "memory" / "process_api").glob("**/oci-test*"))


def cgroups_named(name: str) -> list[Path]:
    return [path for path in CGROUP_ROOT.glob(f"*/**/{name}") if path.is_dir()]


def test_the_lifecycle_as_an_engine_drives_it(engine, tmp_path):
    config = base_config(["sh", "-c", "echo started; trap 'echo bye; exit 0' TERM; "
                                      "while :; do sleep 0.05; done"])
    bundle = engine.bundle(config)
    created = engine.create("c1", bundle, "--pid-file", str(tmp_path / "pid"))
    assert created.returncode == 0, created.stderr
    state = json.loads(engine("state", "c1").stdout)
    pid = int((tmp_path / "pid").read_text())
    assert state == {"ociVersion": "1.0.2", "id": "c1", "status": "created", "pid": pid,
                     "bundle": str(bundle), "annotations": {}}
    # Created: the process is there, in its cgroup and namespaces, but has not exec'd yet.
    assert "/minirun/c1" in Path(f"/proc/{pid}/cgroup").read_text()
    assert os.readlink(f"/proc/{pid}/ns/uts") != os.readlink("/proc/self/ns/uts")
    time.sleep(0.2)
    assert engine.output("c1") == ""
    assert engine("start", "c1").returncode == 0
    assert engine.status("c1") == "running"
    wait_until(lambda: engine.output("c1") == "started\n")
    assert engine("start", "c1").returncode == 125                 # once only
    assert engine("delete", "c1").returncode == 125                # running: needs --force
    assert engine("kill", "c1", "TERM").returncode == 0
    wait_until(lambda: engine.status("c1") == "stopped")
    assert json.loads(engine("state", "c1").stdout)["pid"] == 0
    assert engine.output("c1") == "started\nbye\n"
    assert engine("kill", "c1", "KILL").returncode == 125          # nothing left to signal
    assert engine("delete", "c1").returncode == 0
    assert engine("state", "c1").returncode == 125
    assert cgroups_named("c1") == []


def test_delete_force_ends_a_created_container(engine):
    assert engine.create("c2", engine.bundle(base_config(["true"]))).returncode == 0
    assert engine.status("c2") == "created"
    assert engine("delete", "--force", "c2").returncode == 0
    assert engine("state", "c2").returncode == 125


def test_every_field_seen_from_inside(engine, tmp_path, minirun_env):
    # A network namespace to join by path: a process of this test's own holds it.
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        wait_until(lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
        (tmp_path / "data.txt").write_text("from the host\n")
        hooks_seen = tmp_path / "hooks"
        hooks_seen.mkdir()
        def hook(name: str) -> dict:        # writes the state it is given on stdin to a file
            return {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {hooks_seen}/{name}"]}
        script = "; ".join([
            "id -u; id -g; id -G", "pwd", "echo FOO=$FOO", "hostname", "umask", "ulimit -n",
            "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status",
            "readlink /proc/self/ns/net",
            "cat /proc/sys/net/ipv4/ping_group_range",
            "awk '$2==\"/tmp\" {print $2, $3, $4} "
            "$2==\"/data.txt\" {print $2, substr($4, 1, 2)}' /proc/mounts",
            "cat /data.txt", "echo x > /data.txt || echo data.txt read-only",
            "touch /newfile || echo root read-only",
            "wc -c < /proc/timer_list", "ls /proc/acpi | wc -l",
            "echo 1 > /proc/sys/vm/overcommit_memory || echo proc-sys read-only",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
            "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
            "grep -c 'c 1:3 rwm' /sys/fs/cgroup/devices/devices.list",
            "mkdir /tmp/d || echo mkdir refused",
            "touch /tmp/f; chmod 700 /tmp/f && echo chmod 700 ok; chmod 777 /tmp/f || echo chmod 777 refused",
        ])
        config = base_config(["sh", "-c", script])
        config["process"].update(
            user={"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o027},
            cwd="/work", env=config["process"]["env"] + ["FOO=bar"],
            capabilities={"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"],
                          "permitted": ["CAP_CHOWN"], "inheritable": ["CAP_CHOWN"],
                          "ambient": ["CAP_CHOWN"]},
            rlimits=[{"type": "RLIMIT_NOFILE", "hard": 333, "soft": 333}])
        config["hostname"] = "inside"
        config["mounts"] += [
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1770", "size=1m", "uid=1000"]},
            {"destination": "/data.txt", "type": "bind", "source": str(tmp_path / "data.txt"),
             "options": ["rbind", "ro"]}]
        linux = config["linux"]
        linux["namespaces"] = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"},
                               {"type": "network", "path": f"/proc/{holder.pid}/ns/net"}]
        linux["sysctl"] = {"net.ipv4.ping_group_range": "0 7"}
        linux["resources"].update(memory={"limit": 64 * 1024 ** 2, "swap": 96 * 1024 ** 2},
                                  pids={"limit": 64},
                                  cpu={"quota": 50000, "period": 100000})
        linux["cgroupsPath"] = "oci-test-fields"
        # Two rules for mkdir: as with libseccomp, the more restrictive action wins.
        linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]}]}
        config["hooks"] = {kind: [hook(kind)] for kind in
                           ("prestart", "createRuntime", "poststart", "poststop")}
        bundle = engine.bundle(config)
        assert engine.create("fields", bundle).returncode == 0, engine.output("fields")
        assert cgroups_named("oci-test-fields")[0].parent.name == "minirun"   # ours, not the caller's
        assert engine("start", "fields").returncode == 0
        wait_until(lambda: engine.status("fields") == "stopped")
        assert engine("delete", "fields").returncode == 0
        lines = engine.output("fields").splitlines()
        net_inode = os.readlink(f"/proc/{holder.pid}/ns/net")
    finally:
        holder.kill()
        holder.wait()
    expected = ["1000", "1000", "1000 10 20", "/work", "FOO=bar", "inside", "0027", "333",
                "CapInh:\t0000000000000001", "CapPrm:\t0000000000000001",
                "CapEff:\t0000000000000001", "CapBnd:\t0000000000000021",
                "CapAmb:\t0000000000000001", "NoNewPrivs:\t1", "Seccomp:\t2",
                net_inode, "0\t7",
                "/tmp tmpfs rw,nosuid,nodev,relatime,size=1024k,mode=1770,uid=1000",
                "/data.txt ro",
                "from the host", "data.txt read-only", "root read-only",
                "0", "0", "proc-sys read-only",
                str(64 * 1024 ** 2), str(96 * 1024 ** 2), "64", "50000", "1",
                "mkdir refused", "chmod 700 ok", "chmod 777 refused"]
    assert [line for line in lines if line] == expected
    for kind, status in (("prestart", "created"), ("createRuntime", "created"),
                         ("poststart", "running"), ("poststop", "stopped")):
        seen = json.loads((hooks_seen / kind).read_text())
        assert (seen["id"], seen["status"], seen["bundle"]) == ("fields", status, str(bundle))


def test_an_absolute_cgroups_path_is_used_as_given(engine):
    config = base_config(["cat", "/proc/self/cgroup"])
    config["linux"]["cgroupsPath"] = "/oci-test-parent/oci-test-abs"
    output = engine.run_to_end("abs", config)
    assert "memory:/\n" in output                   # a cgroup namespace: its own is the root
    assert cgroups_named("oci-test-abs") == []      # delete removed the container's cgroup...
    for tree in CGROUP_ROOT.glob("*/oci-test-parent"):
        os.rmdir(tree)                              # ...and left the engine's parent alone


def test_a_cgroups_path_inside_the_callers_own_cgroup_is_refused(engine):
    own = next(line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
               if ":memory:" in line)
    if own == "/":
        pytest.skip("this shell runs in the root memory cgroup")
    config = base_config(["true"])
    config["linux"]["cgroupsPath"] = f"{own}/oci-test-inside"
    result = engine.create("inside", engine.bundle(config))
    assert result.returncode == 125 and "inside minirun's own cgroup" in result.stderr
    engine.made.remove("inside")


@pytest.mark.parametrize("change, named", [
    (lambda c: c["linux"]["namespaces"].append({"type": "time"}), "'time'"),
    (lambda c: c["process"].update(apparmorProfile="docker-default"), "process.apparmorProfile"),
    (lambda c: c["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt"),
    (lambda c: c["linux"]["resources"].update(blockIO={"weight": 10}), "linux.resources.blockIO"),
    (lambda c: c["mounts"].append({"destination": "/mnt", "type": "bind", "source": "/tmp",
                                   "options": ["rbind", "tmpcopyup"]}), "tmpcopyup"),
    (lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 9, "op": "SCMP_CMP_GT"}]}]}), "SCMP_CMP_GT"),
    (lambda c: c["mounts"].append({"destination": "/mnt", "type": "nfs", "source": "x:/y"}), "'nfs'"),
    (lambda c: c.update(solaris={"milestone": "x"}), "config.solaris"),
    (lambda c: c.update(hooks={"createContainer": [{"path": "/bin/true"}]}), "hooks.createContainer"),
    (lambda c: c["linux"].update(sysctl={"kernel.panic": "1"}), "linux.sysctl.kernel.panic"),
])
def test_unsupported_fields_are_refused_in_one_line(engine, change, named):
    config = base_config(["true"])
    change(config)
    result = engine.create("refused", engine.bundle(config))
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
    assert "not supported by minirun" in result.stderr
    assert engine("state", "refused").returncode == 125     # nothing was made
    engine.made.remove("refused")


def test_linux_devices_are_made_in_the_container(engine):
    """linux.devices (what podman sends for --device, and --privileged for all the host's):
    each node made at its path, with its mode and owner; the device cgroup still decides
    whether it opens (c 1 3 is /dev/null, allowed; b 7 0, a loop device, is not). Before,
    such a bundle was refused ("config.linux.devices is not supported")."""
    config = base_config(["sh", "-c", "stat -c '%F %t:%T %a %u:%g' /dev/extra/null2 /dev/loop9; "
                                      "echo x > /dev/extra/null2 && echo wrote; "
                                      "head -c1 /dev/loop9 || echo refused"])
    config["linux"]["devices"] = [
        {"path": "/dev/extra/null2", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640,
         "uid": 0, "gid": 2},
        {"path": "/dev/loop9", "type": "b", "major": 7, "minor": 0}]
    assert engine.run_to_end("devices", config).splitlines() == [
        "character special file 1:3 640 0:2", "block special file 7:0 666 0:0", "wrote",
        "refused"]


def test_an_allow_all_device_list_turns_the_device_cgroup_off(engine):
    """What `podman run --privileged` sends: one rule allowing every device."""
    config = base_config(["sh", "-c", "cat /sys/fs/cgroup/devices/devices.list"])
    config["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    assert engine.run_to_end("alldevices", config) == "a *:* rwm\n"


def test_tmpcopyup_fills_a_tmpfs_with_what_the_image_had(engine, tmp_path):
    """crun's tmpcopyup (podman asks for it with --read-only): the tmpfs starts with the
    image's files there, owners, modes, times, links and FIFOs kept, and is writable on a
    read-only root. Before, mount(2) got "tmpcopyup" as tmpfs data: EINVAL."""
    root = tmp_path / "copied-root"
    shutil.copytree(engine.rootfs, root, symlinks=True)
    seed = root / "srv" / "seed"
    (seed / "inner").mkdir(parents=True)
    (seed / "inner" / "file").write_text("from the image\n")
    (seed / "file").write_text("top\n")
    os.chown(seed / "file", 7, 8)
    (seed / "file").chmod(0o640)
    (seed / "inner").chmod(0o700)
    (seed / "link").symlink_to("inner/file")
    os.mkfifo(seed / "fifo", 0o620)
    os.utime(seed / "inner", (1_000_000_000, 1_000_000_000))

    def listing(top: Path, shown: str) -> list[str]:
        rows = []
        for path in sorted([top, *top.rglob("*")]):
            info = os.lstat(path)
            rows.append(f"{shown}{str(path)[len(str(top)):]} {info.st_mode:x} {info.st_uid} "
                        f"{info.st_gid} {int(info.st_mtime)}")
        return rows

    expected = listing(seed, "/srv/seed")
    config = base_config(["sh", "-c", "find /srv/seed | sort | xargs stat -c '%n %f %u %g %Y'; "
                                      "cat /srv/seed/link; touch /srv/seed/new && echo writable"])
    config["mounts"].append({"destination": "/srv/seed", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "nodev", "tmpcopyup"]})
    engine.rootfs = root
    assert engine.run_to_end("copyup", config).splitlines() == \
        [*expected, "from the image", "writable"]
    assert not (seed / "new").exists()                      # the image's side is untouched


def test_a_missing_command_fails_create_not_start(engine):
    result = engine.create("missing", engine.bundle(base_config(["no-such-command"])))
    assert result.returncode == 127 and "not found" in result.stderr
    engine.made.remove("missing")
    assert engine("state", "missing").returncode == 125


def test_a_terminal_goes_to_the_console_socket(engine, tmp_path):
    config = base_config(["sh", "-c", "tty; echo cols $(stty size)"])
    config["process"].update(terminal=True, consoleSize={"height": 30, "width": 100})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "console.sock"))
    listener.listen(1)
    bundle = engine.bundle(config)
    assert engine.create("tty", bundle, "--console-socket",
                         str(tmp_path / "console.sock")).returncode == 0
    connection, _ = listener.accept()
    _, fds, _, _ = socket.recv_fds(connection, 16, 1)
    master = fds[0]
    assert engine("start", "tty").returncode == 0
    output = b""
    while True:
        try:
            chunk = os.read(master, 1024)
        except OSError:             # EIO: the container's side has closed
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert output.decode().split("\r\n")[:2] == ["/dev/pts/0", "cols 30 100"]
    wait_until(lambda: engine.status("tty") == "stopped")
    assert engine("delete", "tty").returncode == 0


def test_home_comes_from_the_containers_passwd_as_for_run(engine):
    """A bundle's process takes `run`'s last steps (spawn.last_steps): HOME, unless
    process.env sets it, is the user's in the container's own /etc/passwd, as runc sets it."""
    config = base_config(["sh", "-c", "echo $HOME"])
    config["process"]["user"] = {"uid": 65534, "gid": 65534}
    assert engine.run_to_end("home", config) == "/nonexistent\n"
    config["process"]["env"].append("HOME=/x")
    assert engine.run_to_end("home-given", config) == "/x\n"


def test_exec_with_a_process_file_as_engines_call_it(engine, tmp_path):
    bundle = engine.bundle(base_config(["sleep", "60"]))
    assert engine.create("ex", bundle).returncode == 0
    assert engine("start", "ex").returncode == 0
    process = {"args": ["sh", "-c", "echo $$ $(hostname) $FOO; exit 3"], "cwd": "/",
               "env": ["PATH=/bin:/usr/bin", "FOO=exec"], "user": {"uid": 0, "gid": 0},
               "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": True}
    (tmp_path / "process.json").write_text(json.dumps(process))
    attached = engine("exec", "--process", str(tmp_path / "process.json"), "ex")
    assert (attached.returncode, attached.stdout) == (3, "2 runc exec\n")   # PID 2: in its PID ns
    process["args"] = ["sleep", "30"]
    (tmp_path / "process.json").write_text(json.dumps(process))
    # Detached, the process keeps the stdio it was given (as with runc): not our pipes.
    detached = subprocess.run([sys.executable, "-m", "minirun", "exec", "--process",
                               str(tmp_path / "process.json"), "--detach", "--pid-file",
                               str(tmp_path / "exec.pid"), "ex"], env=engine.env, timeout=60,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    assert detached.returncode == 0
    pid = int((tmp_path / "exec.pid").read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00"
    first = json.loads(engine("state", "ex").stdout)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{first}/ns/pid")
    assert engine("kill", "--all", "ex", "KILL").returncode == 0
    wait_until(lambda: engine.status("ex") == "stopped")
    assert engine("delete", "ex").returncode == 0


def test_global_flags_engines_pass(engine, tmp_path):
    log = tmp_path / "runtime.log"
    result = engine("--root", str(tmp_path / "root"), "--log", str(log), "--log-format", "json",
                    "state", "nothing")
    assert result.returncode == 125
    assert json.loads(log.read_text())["msg"] == "container nothing does not exist"
    refused = engine("--systemd-cgroup", "state", "nothing")
    assert refused.returncode == 125 and refused.stderr.count("\n") == 1
    assert "cgroupfs" in refused.stderr
