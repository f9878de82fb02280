"""A container is a process with its own view of the machine: prove each part of that view."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_default_image_runs_its_app(minirun):
    result = minirun("run", "hello")
    assert result.returncode == 0, result.stderr
    assert "pid:        1" in result.stdout
    assert f"kernel:     {os.uname().release}" in result.stdout   # a container shares the host's kernel
    assert "network:    lo eth0 \n" in result.stdout    # the default, --network bridge


def test_command_is_pid_1(minirun):
    assert minirun("run", "hello", "sh", "-c", "echo $$").stdout == "1\n"


def test_sees_only_its_own_processes(minirun):
    result = minirun("run", "hello", "ps", "-o", "pid,comm")
    lines = result.stdout.split("\n")[1:-1]
    assert [line.split() for line in lines] == [["1", "ps"]]
    proc = minirun("run", "hello", "sh", "-c", "ls -d /proc/[0-9]*").stdout.split()
    assert proc == ["/proc/1"]


def test_fresh_proc_shows_the_container_not_the_host(minirun):
    result = minirun("run", "hello", "cat", "/proc/1/cmdline")
    assert result.stdout == "cat\0/proc/1/cmdline\0"
    mounts = minirun("run", "hello", "cat", "/proc/mounts").stdout.splitlines()
    assert mounts[0].split()[:3] == ["overlay", "/", "overlay"]
    assert not any(" /work" in line or "/dev/vda" in line for line in mounts)


def test_hostname_defaults_to_short_id_and_can_be_set(minirun):
    default = minirun("run", "hello", "hostname").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", default)
    assert minirun("run", "--hostname", "box", "hello", "hostname").stdout == "box\n"
    assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() != "box"


def test_environment_from_image_flags_and_defaults(minirun):
    result = minirun("run", "-e", "GREETING=hi there", "-e", "HOME=/tmp", "--hostname", "h1",
                     "hello", "env")
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["GREETING"] == "hi there"
    assert env["HOME"] == "/tmp"                              # -e overrides the image's HOME=/root
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["HOSTNAME"] == "h1"
    assert "MINIRUN_ROOT" not in env                          # nothing leaks in from the host


def test_workdir(minirun):
    assert minirun("run", "-w", "/tmp", "hello", "pwd").stdout == "/tmp\n"
    assert minirun("run", "-w", "/new/dir", "hello", "pwd").stdout == "/new/dir\n"  # created, as Docker
    assert minirun("run", "hello", "pwd").stdout == "/\n"


def test_network_namespace_has_only_loopback_and_it_is_up(minirun):
    result = minirun("run", "--network", "none", "hello", "ip", "-o", "link")
    links = [line.split(":")[1].strip() for line in result.stdout.splitlines()]
    assert links == ["lo"]
    assert ",UP" in result.stdout
    assert minirun("run", "--network", "none", "hello", "ping", "-c", "1", "-W", "2",
                   "127.0.0.1").returncode == 0


def test_minimal_dev_and_read_only_sys(minirun):
    devices = minirun("run", "hello", "ls", "/dev").stdout.split()
    assert sorted(devices) == sorted(["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr",
                                      "stdin", "stdout", "tty", "urandom", "zero"])
    assert minirun("run", "hello", "sh", "-c", "echo x > /dev/null && head -c 4 /dev/zero | wc -c"
                   ).stdout.strip() == "4"
    result = minirun("run", "hello", "touch", "/sys/kernel/x")
    assert result.returncode != 0 and "Read-only file system" in result.stderr


def test_stdin_is_passed_through(minirun):
    assert minirun("run", "hello", "tr", "a-z", "A-Z", input="hello\n").stdout == "HELLO\n"


def test_root_in_the_container_cannot_mount_or_load_modules(minirun):
    result = minirun("run", "hello", "mount", "-t", "tmpfs", "none", "/mnt")
    assert result.returncode != 0
    status = minirun("run", "hello", "grep", "CapBnd", "/proc/self/status").stdout.split()
    bounding = int(status[1], 16)
    CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_CHROOT = 21, 16, 18
    assert not bounding & (1 << CAP_SYS_ADMIN)
    assert not bounding & (1 << CAP_SYS_MODULE)
    assert bounding & (1 << CAP_SYS_CHROOT)
    nnp = minirun("run", "hello", "grep", "NoNewPrivs", "/proc/self/status").stdout.split()
    assert nnp == ["NoNewPrivs:", "1"]


def test_writes_stay_in_the_container(minirun, store_root):
    assert minirun("run", "hello", "sh", "-c", "echo scribble > /bin/busybox; rm /app/hello.sh"
                   ).returncode == 0
    result = minirun("run", "hello")                          # a new container sees a pristine image
    assert result.returncode == 0 and "Hello from" in result.stdout


@pytest.mark.parametrize("command, status", [
    (["true"], 0),
    (["sh", "-c", "exit 3"], 3),
    (["/etc/passwd"], 126),                  # exists, not executable
    (["/etc"], 126),                         # a directory
    (["no-such-command"], 127),
    (["/no/such/path"], 127),
])
def test_exit_status(minirun, command, status):
    result = minirun("run", "hello", *command)
    assert result.returncode == status, result.stderr
    if status >= 126:
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("minirun: ")


@pytest.mark.parametrize("args, message", [
    (["run", "no-such-image"], "no image 'no-such-image'"),
    (["run", "--no-such-flag", "hello"], "No such option"),
    (["run"], "Missing argument 'IMAGE'"),
    (["run", "--memory", "lots", "hello"], "invalid size 'lots'"),
    (["run", "--cpus", "-1", "hello"], "invalid CPU count"),
    (["run", "-e", "NOEQUALS", "hello"], "invalid environment variable"),
    (["run", "-w", "relative", "hello"], "invalid working directory"),
])
def test_bad_input_is_one_line_and_125(minirun, args, message):
    result = minirun(*args)
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_not_root_is_one_line_and_125(minirun_env):
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-m", "minirun", "run", "hello"],
                            env=minirun_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr == "minirun: creating namespaces and mounts needs root: " \
                            "run minirun with sudo\n"


def test_missing_busybox_is_a_clear_error(tmp_path, monkeypatch):
    from minirun import image
    from minirun.errors import RuntimeFailure
    monkeypatch.setattr(image, "BUSYBOX", tmp_path / "no-busybox")
    with pytest.raises(RuntimeFailure, match="apt-get install busybox-static"):
        image.Store(tmp_path / "store").get("hello")


@pytest.mark.parametrize("user, expected", [
    ("nobody", "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"),
    ("65534", "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"),
    ("1234:5678", "uid=1234 gid=5678 groups=5678"),           # not in the image: used as is
    ("nobody:root", "uid=65534(nobody) gid=0(root) groups=0(root)"),
    ("root", "uid=0(root) gid=0(root) groups=0(root)"),
])
def test_user_flag(minirun, user, expected):
    assert minirun("run", "-u", user, "hello", "id").stdout == expected + "\n"


def test_a_non_root_user_has_no_capabilities(minirun):
    status = minirun("run", "-u", "nobody", "hello", "grep", "Cap", "/proc/self/status").stdout
    assert dict(line.split(":\t") for line in status.splitlines())["CapEff"] == "0000000000000000"


@pytest.mark.parametrize("user, message", [
    ("ghost", "no user 'ghost' in the image's /etc/passwd"),
    ("nobody:ghosts", "no group 'ghosts' in the image's /etc/group"),
])
def test_unknown_user_is_one_line_and_125(minirun, user, message):
    result = minirun("run", "-u", user, "hello", "id")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_the_image_user_is_the_default(minirun, store_root):
    from minirun.image import ImageConfig, Store
    store = Store(store_root)
    hello = store.get("hello")
    config = ImageConfig(cmd=["id", "-un"], env=hello.config.env, user="nobody")
    store.save_image("hello-as-nobody", [layer.name for layer in hello.layers], config)
    assert minirun("run", "hello-as-nobody").stdout == "nobody\n"
    assert minirun("run", "-u", "root", "hello-as-nobody").stdout == "root\n"   # -u wins


def test_an_image_whose_proc_is_a_symlink_is_refused(minirun, store_root):
    # Mount points are resolved on the host's side of pivot_root: a link must not steer a mount.
    import hashlib
    from minirun.image import Store
    store = Store(store_root)
    hello = store.get("hello")
    tree = store.scratch_dir()
    (tree / "proc").symlink_to("/etc")
    layer = store.commit_layer(tree, hashlib.sha256(b"proc is a link to /etc").hexdigest())
    store.save_image("proc-link", [path.name for path in hello.layers] + [layer], hello.config)
    result = minirun("run", "proc-link", "true")
    assert result.returncode == 125
    assert "the image's /proc is not a directory" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["run", "--memory", "", "hello"], "invalid size ''"),                   # not "no limit"
    (["run", "--memory", "0.5", "hello"], "invalid size '0.5': less than one byte"),
    (["run", "--memory", "1e-9", "hello"], "invalid size '1e-9'"),
    (["run", "--memory", "٣M", "hello"], "invalid size '٣M'"),
    (["run", "--memory", "5M", "hello"], "--memory 5M is too little for a container: give at least 6M"),
    (["run", "--memory", "100T", "hello"], "--memory 100T is more than this machine has"),
    (["run", "--cpus", "", "hello"], "invalid CPU count ''"),
    (["run", "--cpus", "nan", "hello"], "invalid CPU count 'nan'"),
    (["run", "--pids-limit", "", "hello"], "invalid pids limit ''"),
    (["run", "--pids-limit", "٣", "hello"], "invalid pids limit '٣'"),
    (["run", "--name", "", "hello"], "invalid container name ''"),
    (["run", "--name", "x", "hello"], "invalid container name 'x'"),
    (["run", "--name", "-x", "hello"], "invalid container name '-x'"),
    (["run", "--name", "a/b", "hello"], "invalid container name 'a/b'"),
    (["run", "--name", "café", "hello"], "invalid container name 'café'"),
])
def test_more_bad_input_is_one_line_and_125(minirun, minirun_env, args, message):
    result = minirun(*args)
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert os.listdir(minirun_env["MINIRUN_STATE"]) == []


@pytest.mark.parametrize("user, message", [
    ("4294967295", "invalid user ID 4294967295: IDs go from 0 to 4294967294"),   # (uid_t)-1
    ("99999999999", "invalid user ID 99999999999"),
    ("nobody:99999999999", "invalid group ID 99999999999"),
    ("٣", "no user '٣' in the image's /etc/passwd"),         # not user 3
    ("nobody:٣", "no group '٣' in the image's /etc/group"),
])
def test_ids_out_of_range_or_not_ascii_are_one_line_and_125(minirun, minirun_env, user, message):
    (Path(minirun_env["MINIRUN_ROOT"]) / "containers").mkdir(exist_ok=True)
    before = os.listdir(Path(minirun_env["MINIRUN_ROOT"]) / "containers")
    result = minirun("run", "-u", user, "hello", "id")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert os.listdir(minirun_env["MINIRUN_STATE"]) == []
    assert os.listdir(Path(minirun_env["MINIRUN_ROOT"]) / "containers") == before


def test_the_last_valid_id_is_a_user(minirun):
    assert minirun("run", "-u", "4294967294:4294967294", "hello", "sh", "-c", "id -u; id -g"
                   ).stdout == "4294967294\n4294967294\n"


def test_an_empty_command_is_127_and_one_line(minirun, minirun_env):
    result = minirun("run", "hello", "")
    assert result.returncode == 127
    assert result.stderr == "minirun: the command is empty: give a program to run, or none " \
                            "for the image's own\n"


@pytest.mark.parametrize("args", [["stop", "x"], ["import", "/tmp", "x"], ["ps"], ["gc"],
                                  ["exec", "x", "true"], ["rmi", "x"], ["inspect", "hello"]])
def test_commands_that_need_root_say_so_first(minirun_env, args):
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-m", "minirun", *args],
                            env=minirun_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr == f"minirun: `minirun {args[0]}` needs root (containers, cgroups and " \
                            "the image store are root's): run it with sudo\n"


def test_images_is_open_to_all_and_fails_in_one_line_on_an_unreadable_store(minirun_env, tmp_path):
    store = tmp_path / "private-store"
    (store / "images").mkdir(parents=True, mode=0o700)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-m", "minirun", "images"],
                            env={**minirun_env, "MINIRUN_ROOT": str(store)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "Permission denied" in result.stderr, result.stderr


def test_state_directory_and_records_are_roots_alone(start_minirun, minirun_env, tmp_path):
    from conftest import read_line, wait_for_container
    minirun_env["MINIRUN_STATE"] = str(tmp_path / "new" / "state")     # made by minirun
    process = start_minirun("run", "--init", "hello", "sh", "-c", "echo ready; sleep 60")
    assert read_line(process) == "ready\n"
    record = wait_for_container(minirun_env)
    state = Path(minirun_env["MINIRUN_STATE"])
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / f"{record['id']}.json").stat().st_mode & 0o777 == 0o600
    process.send_signal(signal.SIGINT)          # --init: the command dies of it, minirun cleans up
    assert process.wait(timeout=20) == 130


def test_ps_columns_fit_their_content(minirun, start_minirun, minirun_env, store_root):
    from conftest import read_line
    from minirun.image import Store
    store = Store(store_root)
    hello = store.get("hello")
    store.save_image("a-rather-long-image-name", [layer.name for layer in hello.layers], hello.config)
    process = start_minirun("run", "--init", "--name", "a-rather-long-container-name",
                            "a-rather-long-image-name", "sh", "-c", "echo ready; sleep 60")
    assert read_line(process) == "ready\n"
    lines = minirun("ps").stdout.splitlines()
    header, row = lines[0], lines[1]
    assert "a-rather-long-container-name  a-rather-long-image-name  " in row
    assert row.index("a-rather-long-image-name") == header.index("IMAGE")
    process.send_signal(signal.SIGINT)          # --init: the command dies of it, minirun cleans up
    assert process.wait(timeout=20) == 130


def test_an_empty_name_or_id_matches_no_container(minirun, start_minirun):
    from conftest import read_line
    process = start_minirun("run", "--init", "hello", "sh", "-c", "echo ready; sleep 60")
    assert read_line(process) == "ready\n"
    for args in (["stop", "-t", "0", ""], ["exec", "", "true"]):      # every id starts with ''
        result = minirun(*args)
        assert result.returncode == 125
        assert result.stderr == "minirun: no running container '': give a name or id from " \
                                "`minirun ps`\n"
    assert process.poll() is None
    process.send_signal(signal.SIGINT)          # --init: the command dies of it, minirun cleans up
    assert process.wait(timeout=20) == 130


def test_one_name_given_to_twenty_runs_at_once_goes_to_one(minirun_env):
    """Looking for a name and taking it are one step: 20 runs that all reach that step
    together, held at a barrier just before it, 3 times over: one runs, 19 are refused."""
    from conftest import released_together
    barrier = ("import os, sys\n"
               "from minirun import cli, state\n"
               "ready, go, claim = int(sys.argv[1]), int(sys.argv[2]), state.claim\n"
               "def claim_with_the_others(record):\n"
               "    os.write(ready, b'.')\n"
               "    os.read(go, 1)\n"
               "    claim(record)\n"
               "state.claim = claim_with_the_others\n"
               "sys.argv = ['minirun', *sys.argv[3:]]\n"
               "cli.main()\n")
    for _ in range(3):
        with released_together(minirun_env, barrier,
                               ["run", "--name", "twin", "hello", "head", "-c", "1"]) as runs:
            deadline = time.monotonic() + 120
            while sum(run.poll() is not None for run in runs) < 19 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)                      # a second winner would be running by now
            for run in runs:
                if run.poll() is None:
                    run.stdin.write("x")         # the winner reads one byte and ends
                run.stdin.close()
            results = [(run.wait(timeout=60), run.stderr.read()) for run in runs]
        statuses = sorted(status for status, _ in results)
        assert statuses == [0] + [125] * 19, results
        for status, stderr in results:
            if status == 125:
                assert stderr.startswith("minirun: the name 'twin' is in use by container ")
                assert stderr.count("\n") == 1
        assert os.listdir(minirun_env["MINIRUN_STATE"]) == []


KEEP_RUNNING = "trap 'exit 0' TERM; sleep 30 & wait"     # PID 1 ends at SIGTERM only with a handler


def test_run_writes_its_plan_as_a_config_json_that_create_reads_as_the_same_container(
        start_minirun, minirun_env, store_root, tmp_path):
    """`run` makes its container from config.json's data (spawn.Config) and writes that
    data as BUNDLE/config.json: read back by `minirun create`'s own reader (oci.load), it is the
    same container, field by field."""
    from conftest import wait_for_container
    from minirun import cgroups, oci, rootfs, security
    process = start_minirun("run", "--network", "none", "--memory", "64M", "--pids-limit", "50",
                            "-v", f"{tmp_path}:/data:ro", "-e", "FOO=bar", "-w", "/tmp",
                            "hello", "sh", "-c", KEEP_RUNNING)
    try:
        record = wait_for_container(minirun_env)
        bundle = store_root / "containers" / record["id"]
        plan = oci.load(bundle, "reread")
    finally:
        process.terminate()             # passed on to PID 1; the runtime then cleans up
        process.wait(timeout=20)
    assert not bundle.exists()
    kept = security.DEFAULT_CAPABILITIES
    assert (plan.root, plan.read_only, plan.hostname) == (bundle / "merged", False, record["id"][:12])
    assert (plan.process.args, plan.process.cwd, plan.process.env["FOO"]) == \
        (["sh", "-c", KEEP_RUNNING], "/tmp", "bar")
    assert plan.process.capabilities == {"bounding": kept, "effective": kept, "permitted": kept,
                                         "inheritable": frozenset(), "ambient": frozenset()}
    assert plan.process.no_new_privileges
    assert plan.mounts == rootfs.default_mounts() + [
        rootfs.Mount("/data", "bind", str(tmp_path), rootfs.MS_BIND | rootfs.MS_REC | rootfs.MS_RDONLY)]
    assert plan.namespaces == dict.fromkeys(["pid", "mount", "uts", "ipc", "cgroup", "network"])
    assert (plan.masked, plan.read_only_paths) == (rootfs.MASKED_PATHS, rootfs.READ_ONLY_PATHS)
    assert (plan.limits.memory, plan.limits.pids) == (64 * 1024 ** 2, 50)
    assert plan.cgroups_path == f"/{cgroups.PARENT}/{record['id']}"
