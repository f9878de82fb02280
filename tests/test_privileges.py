"""What root in the container may still do: capabilities, --privileged, --read-only, and what
crosses from the runtime into the container (descriptors, HOME)."""
import os

import pytest


def status_field(minirun, name: str, *flags: str) -> str:
    result = minirun("run", *flags, "hello", "grep", f"^{name}:", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def capability_bits(minirun, *flags: str) -> int:
    return int(status_field(minirun, "CapEff", *flags), 16)


CAP_CHOWN, CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN = 0, 13, 12, 21
CAPS = {"SETGID": 6, "SETUID": 7}


def test_the_default_set_is_dockers(minirun):
    bits = capability_bits(minirun)
    assert bits & (1 << CAP_CHOWN) and bits & (1 << CAP_NET_RAW)
    assert not bits & (1 << CAP_SYS_ADMIN) and not bits & (1 << CAP_NET_ADMIN)
    assert bin(bits).count("1") == 14
    assert status_field(minirun, "NoNewPrivs") == "1"


def test_cap_add_and_cap_drop_take_dockers_names(minirun):
    assert capability_bits(minirun, "--cap-drop", "ALL") == 0
    assert capability_bits(minirun, "--cap-drop", "ALL", "--cap-add", "net_admin") == 1 << CAP_NET_ADMIN
    bits = capability_bits(minirun, "--cap-drop", "CAP_CHOWN", "--cap-add", "SYS_ADMIN")
    assert not bits & (1 << CAP_CHOWN) and bits & (1 << CAP_SYS_ADMIN)


def test_every_capability_of_this_kernel_has_a_name():
    """minirun's own table (capabilities(7), <linux/capability.h>), not python-prctl's: up to
    cap_last_cap (40 here: checkpoint_restore), and nothing that is not a capability."""
    from minirun import security
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    assert security.ALL_CAPABILITIES == set(security.CAPABILITY_NAMES[:last + 1])
    assert security.NUMBER["checkpoint_restore"] == 40 and "last_cap" not in security.NUMBER


def test_cap_add_takes_a_capability_python_prctl_does_not_know(minirun):
    """Mutation-checked: with python-prctl's list, "no such capability", 125."""
    assert capability_bits(minirun, "--cap-drop", "ALL", "--cap-add", "CHECKPOINT_RESTORE") == 1 << 40
    assert int(status_field(minirun, "CapBnd", "--cap-add", "CAP_CHECKPOINT_RESTORE"), 16) == \
        0xa80425fb | 1 << 40


@pytest.mark.parametrize("flag", ["--cap-add", "--cap-drop"])
@pytest.mark.parametrize("name", ["FLY", "LAST_CAP"])
def test_an_unknown_capability_is_one_line(minirun, flag, name):
    result = minirun("run", flag, name, "hello", "true")
    assert result.returncode == 125
    assert result.stderr == f"minirun: {flag} {name}: no such capability; give a name from " \
                            "capabilities(7), e.g. NET_ADMIN, or ALL\n"


NOBODY_IDS = "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
ROOT_IDS = "uid=0(root) gid=0(root) groups=0(root)"


@pytest.mark.parametrize("user, drop, ids", [("nobody", "ALL", NOBODY_IDS),
                                             ("root", "SETGID", ROOT_IDS),
                                             ("nobody", "SETUID", NOBODY_IDS)])
def test_any_cap_drop_works_with_any_user(minirun, user, drop, ids):
    """The user switch needs CAP_SETUID and CAP_SETGID, which the drop may take: as runc, the
    bounding set first, then the switch (with keepcaps), then the final sets (drop_privileges).
    Mutation-checked: with the capset moved before the switch, each is "[Errno 1]", 125."""
    result = minirun("run", "--rm", "-u", user, "--cap-drop", drop, "hello",
                     "sh", "-c", "id; grep ^CapBnd /proc/self/status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ids
    bounding = int(result.stdout.split()[-1], 16)
    assert bounding == 0 if drop == "ALL" else bounding == 0xa80425fb & ~(1 << CAPS[drop])


def test_an_exec_as_another_user_works_without_setuid(minirun, minirun_env):
    assert minirun("run", "-d", "--name", "nocaps", "--cap-drop", "ALL", "hello",
                   "sleep", "60").returncode == 0
    try:
        result = minirun("exec", "-u", "nobody", "nocaps", "id")
    finally:
        minirun("stop", "-t", "0", "nocaps")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == NOBODY_IDS


def test_privileged_turns_the_protections_off_and_says_so(minirun):
    result = minirun("run", "--privileged", "--explain", "hello", "sh", "-c",
                     "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; mount")
    assert result.returncode == 0
    assert "minirun: warning: --privileged" in result.stderr
    assert "/sys writable (--privileged)" in result.stderr          # as --explain tells it
    fields = dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) & (1 << CAP_SYS_ADMIN)
    assert fields["NoNewPrivs"] == "0"
    assert "/proc/keys" not in result.stdout            # nothing masked
    assert "sysfs on /sys type sysfs (rw" in result.stdout
    # ...and the default masks /proc/keys and keeps /sys read-only.
    default = minirun("run", "hello", "mount").stdout
    assert "/proc/keys" in default and "sysfs on /sys type sysfs (ro" in default


def test_read_only_root(minirun):
    result = minirun("run", "--read-only", "hello", "sh", "-c",
                     "touch /file; echo root=$?; touch /dev/shm/file; echo shm=$?")
    assert "root=1" in result.stdout and "shm=0" in result.stdout
    assert "Read-only file system" in result.stderr
    assert "root=0" in minirun("run", "hello", "sh", "-c", "touch /file; echo root=$?").stdout
    # The remount to read-only sets all of the root's flags: the overlay's nosuid and nodev stay.
    mounts = minirun("run", "--read-only", "hello", "mount").stdout.splitlines()
    root = next(line for line in mounts if line.startswith("overlay on / "))
    assert "(ro," in root and "nosuid" in root and "nodev" in root
    # A working directory the image lacks is made before the root turns read-only (as Docker).
    assert minirun("run", "--read-only", "-w", "/new/dir", "hello", "pwd").stdout == "/new/dir\n"


def test_the_writable_layer_is_nosuid_and_nodev(minirun):
    mounts = minirun("run", "hello", "mount").stdout.splitlines()
    root = next(line for line in mounts if line.startswith("overlay on / "))
    assert "nosuid" in root and "nodev" in root
    # Even /dev/null's own numbers, made on the root, cannot be opened there (EACCES, from the
    # mount); the same node in /dev can (the device cgroup allows it).
    result = minirun("run", "hello", "sh", "-c", "mknod /tmp/null c 1 3; echo x > /tmp/null; "
                     "mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo dev ok")
    assert "/tmp/null: Permission denied" in result.stderr and result.stdout == "dev ok\n"


def test_no_descriptor_of_the_caller_crosses_into_the_container(minirun_env, tmp_path):
    # A directory of the host held open by whoever starts minirun (`exec 9</`): inside, it would
    # be /proc/self/fd/9, a path back to the host's root. (Here: whichever number it gets.)
    import subprocess
    import sys
    held = os.open(tmp_path, os.O_RDONLY)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "minirun", "run", "hello", "sh", "-c",
             f"ls /proc/$$/fd; echo x > /proc/self/fd/{held}/escaped"],
            env=minirun_env, capture_output=True, text=True, timeout=60, pass_fds=(held,))
    finally:
        os.close(held)
    assert result.stdout.split() == ["0", "1", "2"]
    assert not (tmp_path / "escaped").exists()
    assert result.returncode != 0


@pytest.mark.parametrize("user, home", [("", "/root"), ("nobody", "/nonexistent"), ("4321", "/")])
def test_home_comes_from_the_users_passwd_entry(minirun, user, home):
    flags = ["-u", user] if user else []
    assert minirun("run", *flags, "hello", "sh", "-c", "echo $HOME").stdout == f"{home}\n"
    assert minirun("run", *flags, "-e", "HOME=/x", "hello", "sh", "-c", "echo $HOME").stdout == "/x\n"


def test_chroot_warns_that_it_is_escapable(minirun):
    result = minirun("run", "--chroot", "hello", "true")
    assert result.returncode == 0
    assert result.stderr.startswith("minirun: warning: --chroot is escapable")


def test_drop_privileges_shrinks_every_set_before_the_exec():
    """For root, exec recomputes permitted from the bounding set, so what the runtime itself
    leaves in the permitted and inheritable sets shows only before the exec: look there."""
    import json
    import prctl
    from minirun import security
    privileges = security.Privileges.from_options((), ("NET_RAW",), False)
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            prctl.cap_inheritable.chown = True         # something for it to take away
            security.drop_privileges(privileges.capability_sets(), None, no_new_privs=True)
            with open("/proc/self/status") as status:
                fields = dict(line.split(":\t") for line in status if line.startswith("Cap"))
            os.write(report_write, json.dumps(fields).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    fields = json.loads(os.read(report_read, 1 << 16))
    os.close(report_read)
    os.waitpid(pid, 0)
    expected = 0xa80425fb & ~(1 << CAP_NET_RAW)       # Docker's fourteen, less NET_RAW
    assert {name: int(value, 16) for name, value in fields.items()} == {
        "CapInh": 0, "CapPrm": expected, "CapEff": expected, "CapBnd": expected, "CapAmb": 0}
