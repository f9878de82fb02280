"""The device allow-list (minirun/devices.py): in real containers, whatever device nodes they
make; on this hybrid host through the v1 devices controller, and the v2 BPF program attached to
a cgroup of this host's cgroup2 tree (tests/programs/cgroup_v2_check.py runs it on a pure v2
kernel too).
"""
import errno
import json
import os
import struct
import uuid
from pathlib import Path

import pytest

from minirun import cgroups, devices

PREFIX = f"test-{uuid.uuid4().hex[:8]}"
S_IFCHR, S_IFBLK = 0o020000, 0o060000


# --- In real containers -----------------------------------------------------------------------

# Each line: a device node the container makes (it holds CAP_MKNOD, and making is allowed),
# then what reading it says. Not one may be opened: EPERM, from the device cgroup. They are made
# in /dev, the one filesystem of the container that allows device nodes at all (its root is
# nodev: there the open fails even before the cgroup is asked, test_privileges.py).
MADE_NODES = [("b 7 0", "the host's first loop device"), ("c 1 11", "/dev/kmsg, the kernel log"),
              ("c 10 237", "/dev/loop-control"), ("b 8 0", "the host's first disk"),
              ("c 1 1", "/dev/mem, all physical memory")]
TRY_MADE_NODES = "".join(
    f'mknod /dev/node {node} || echo "mknod {node} refused"; '
    f'head -c1 /dev/node >/dev/null 2>/tmp/error; echo "{node}: $(cat /tmp/error)"; rm /dev/node; '
    for node, _ in MADE_NODES)


def test_made_device_nodes_cannot_be_opened(minirun):
    result = minirun("run", "hello", "sh", "-c", TRY_MADE_NODES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{node}: head: /dev/node: Operation not permitted"
                                          for node, _ in MADE_NODES]


ALLOWED = """
echo x > /dev/null && echo null ok
[ "$(head -c3 /dev/zero | wc -c)" = 3 ] && echo zero ok
[ "$(head -c3 /dev/urandom | wc -c)" = 3 ] && echo urandom ok
[ "$(head -c3 /dev/random | wc -c)" = 3 ] && echo random ok
echo x > /dev/full
( exec 3<>/dev/ptmx ) && echo ptmx ok
( exec 3<>/dev/tty )
"""


def test_the_allowed_devices_work(minirun):
    result = minirun("run", "hello", "sh", "-c", ALLOWED)
    assert result.stdout.splitlines() == ["null ok", "zero ok", "urandom ok", "random ok",
                                          "ptmx ok"]
    # /dev/full may be opened: it answers a write with ENOSPC, as it should.
    assert "No space left on device" in result.stderr
    # /dev/tty may be opened too: without a controlling terminal its driver says ENXIO. (Had the
    # device cgroup refused, the open would have failed first, with EPERM.)
    assert "No such device or address" in result.stderr
    assert "Operation not permitted" not in result.stderr


def test_a_terminal_s_devices_work_with_a_tty(minirun):
    script = ("( exec 3<>/dev/tty ) && echo tty ok; ( exec 3<>$(tty) ) && echo pts ok; "
              "( exec 3<>/dev/ptmx ) && echo ptmx ok")
    result = minirun("run", "-t", "hello", "sh", "-c", script)
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert ["tty ok", "pts ok", "ptmx ok"] == [line for line in lines if line.endswith(" ok")]
    assert "Operation not permitted" not in result.stdout + result.stderr


# --- v1: the devices controller, on this host ---------------------------------------------------

def test_v1_rules_are_the_cgroup_s_whole_list_and_privileged_keeps_all():
    if "devices" not in cgroups._mounts().v1:
        pytest.skip("no v1 devices controller on this host")
    restricted = cgroups.create(f"{PREFIX}-v1", cgroups.Limits())
    privileged = cgroups.create(f"{PREFIX}-all", cgroups.Limits(), allow_all_devices=True)
    try:
        listed = (restricted.paths["devices"] / "devices.list").read_text().splitlines()
        everything = (privileged.paths["devices"] / "devices.list").read_text().splitlines()
    finally:
        restricted.remove()
        privileged.remove()
    assert listed == [line for name, line in devices.v1_writes() if name == "devices.allow"]
    assert listed[:3] == ["c *:* m", "b *:* m", "c 1:3 rwm"]
    assert everything == ["a *:* rwm"]


# --- v2: the BPF program ----------------------------------------------------------------------

def test_each_rule_is_a_block_whose_tests_jump_to_the_next_rule():
    null = devices.Rule("c", 1, 3, "rwm", "/dev/null")
    code = devices.program((null,))
    instructions = [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]
    # 6 to read the context, then the rule: type, major and minor tests (no access test: it
    # allows all three), r0 = 1, exit; then r0 = 0, exit.
    assert len(instructions) == 6 + 5 + 2
    block = instructions[6:11]
    assert [(opcode, offset, imm) for opcode, _, offset, imm in block] == [
        (devices.JUMP_IF_NOT_IMM, 4, devices.TYPE["c"]),    # skip the 4 after it: to "r0 = 0"
        (devices.JUMP_IF_NOT_IMM, 3, 1),
        (devices.JUMP_IF_NOT_IMM, 2, 3),
        (devices.MOVE_IMM, 0, 1),
        (devices.EXIT, 0, 0)]
    assert instructions[11:] == [(devices.MOVE_IMM, 0, 0, 0), (devices.EXIT, 0, 0, 0)]


@pytest.fixture
def cgroup2_dir():
    """A cgroup of our own in this host's cgroup2 tree, under minirun/. It has no controllers,
    but device programs work on any cgroup2 cgroup."""
    root = cgroups._mounts().unified
    if root is None:
        pytest.skip("no cgroup2 tree on this host")
    (root / cgroups.PARENT).mkdir(exist_ok=True)
    directory = root / cgroups.PARENT / f"{PREFIX}-bpf-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    yield directory
    cgroups._remove(directory, kill=True)
    cgroups._remove_if_unused(directory.parent)
    assert not directory.exists()


def opens_in(cgroup: Path, paths: list[Path]) -> dict[str, str]:
    """Fork a child into `cgroup` (cgroup.procs); what opening each path for reading gives."""
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            (cgroup / "cgroup.procs").write_text("0")
            seen = {}
            for path in paths:
                try:
                    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                    seen[path.name] = "opened"
                except OSError as error:
                    seen[path.name] = errno.errorcode[error.errno]
            os.write(report_write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    seen = json.loads(os.read(report_read, 65536) or b"{}")
    os.close(report_read)
    os.waitpid(pid, 0)
    return seen


def test_the_bpf_program_lets_a_cgroup2_cgroup_open_only_the_allowed_devices(cgroup2_dir,
                                                                            tmp_path):
    nodes = {"null": (S_IFCHR, 1, 3), "urandom": (S_IFCHR, 1, 9),
             "loop-control": (S_IFCHR, 10, 237), "kmsg": (S_IFCHR, 1, 11),
             "loop0": (S_IFBLK, 7, 0), "pts-5": (S_IFCHR, 136, 5)}
    for name, (kind, major, minor) in nodes.items():
        os.mknod(tmp_path / name, 0o600 | kind, os.makedev(major, minor))
    devices.attach_program(cgroup2_dir)
    seen = opens_in(cgroup2_dir, [tmp_path / name for name in nodes])
    assert seen["null"] == seen["urandom"] == "opened"
    assert seen["loop-control"] == seen["kmsg"] == seen["loop0"] == "EPERM"
    assert seen["pts-5"] != "EPERM"     # allowed (136:*), so the driver answers: no such pty
    # Outside that cgroup, the same nodes open: it is the program that refused.
    assert os.open(tmp_path / "loop-control", os.O_RDONLY) >= 0


def test_the_bpf_program_stays_attached_after_its_descriptors_close(cgroup2_dir, tmp_path):
    os.mknod(tmp_path / "kmsg", 0o600 | S_IFCHR, os.makedev(1, 11))
    devices.attach_program(cgroup2_dir)     # returns with its program and cgroup fds closed
    # The attachment holds the program: it still refuses, in the cgroup and only there.
    assert opens_in(cgroup2_dir, [tmp_path / "kmsg"]) == {"kmsg": "EPERM"}
    assert opens_in(cgroup2_dir.parent, [tmp_path / "kmsg"]) == {"kmsg": "opened"}


def test_bad_program_is_one_clear_line_with_the_verifier_s_reason(cgroup2_dir, monkeypatch):
    # A program that never sets r0: the verifier refuses it ("R0 !read_ok").
    monkeypatch.setattr(devices, "program", lambda rules: devices._instruction(devices.EXIT))
    with pytest.raises(cgroups.RuntimeFailure) as refused:
        devices.attach_program(cgroup2_dir)
    assert str(refused.value) == ("the kernel refused the device filter (a BPF program): "
                                  "Permission denied; R0 !read_ok")
