"""devices: which devices a container may use, whatever device nodes it makes.

A device node is only a name for three numbers: a type (c for a character device, b for a block
device), a major number (the driver) and a minor number (which one of the driver's devices).
Whoever may create a node may name any device of the machine: `mknod /tmp/d b 7 0` names the
host's first loop device, `mknod /tmp/k c 1 11` its kernel log, `b 8 0` its first disk. A root
process in a container keeps CAP_MKNOD (Docker's default set has it), so the container's small
/dev (rootfs.DEVICES) is no fence at all.

The fence is the device cgroup. At every open(2) of a device node, and at every mknod(2) of one,
the kernel asks it whether this cgroup may use this device in this way; if not, the call fails
with EPERM (devcgroup_check_permission() in security/device_cgroup.c). The answer comes from an
allow-list, the same on both cgroup versions, written here once as data (DEFAULT_RULES) and put
into the kernel in two ways:

  v1: the `devices` controller (Documentation/admin-guide/cgroup-v1/devices.rst): "a" into
      devices.deny empties the cgroup's list, then each rule, as "c 1:3 rwm", into devices.allow.
      cgroups.py writes them (V1_WRITES).
  v2: there is no devices controller. Instead the kernel runs a small program of ours, of type
      BPF_PROG_TYPE_CGROUP_DEVICE, at each such check, and the program answers 1 (allow) or 0
      (deny). program() assembles it from the rules and attach_program() loads it into the
      kernel and attaches it to the container's cgroup, with the bpf(2) system call.

The list is runc's default (libcontainer/specconv: AllowedDevices). /dev/console (c 5:1) is not
on it: a container's console is a pseudo-terminal (c 136:N) put at /dev/console, not the host's.
"""
import ctypes
import os
import struct
from pathlib import Path
from typing import NamedTuple

from minirun.errors import RuntimeFailure
from minirun.namespaces import libc


class Rule(NamedTuple):     # (not a dataclass: a NamedTuple is 6 times cheaper to define)
    """Allow `access` to the devices of one type, one major and one minor (None: any)."""
    kind: str               # "c" a character device, "b" a block device
    major: int | None
    minor: int | None
    access: str             # some of "r" (open to read), "w" (open to write), "m" (mknod)
    what: str               # what it is, and why it is allowed


ANY = None
DEFAULT_RULES = (
    # Making a node opens nothing: what a made node may be *used* for is asked again at open().
    # Allowing mknod lets images and package scripts make their nodes, as runc does.
    Rule("c", ANY, ANY, "m", "mknod of any character device"),
    Rule("b", ANY, ANY, "m", "mknod of any block device"),
    Rule("c", 1, 3, "rwm", "/dev/null"),
    Rule("c", 1, 5, "rwm", "/dev/zero"),
    Rule("c", 1, 7, "rwm", "/dev/full"),
    Rule("c", 1, 8, "rwm", "/dev/random"),
    Rule("c", 1, 9, "rwm", "/dev/urandom"),
    Rule("c", 5, 0, "rwm", "/dev/tty: the calling process's own controlling terminal"),
    Rule("c", 5, 2, "rwm", "/dev/ptmx: opening it makes a new pseudo-terminal"),
    Rule("c", 136, ANY, "rwm", "/dev/pts/N: pseudo-terminals, of the container's own devpts"),
)


# --- v1: the devices controller's files ---------------------------------------------------------

def v1_writes(rules=DEFAULT_RULES) -> list[tuple[str, str]]:
    """What to write, in order, into a new v1 devices cgroup: (file, line) pairs.

    A new cgroup starts with its parent's list. "a" (all) into devices.deny empties it, which
    denies everything; each line into devices.allow then adds one entry, "TYPE MAJOR:MINOR
    ACCESS" with * for any number (devices.rst, sections 2 and 3). One entry per write(2).
    """
    number = lambda value: "*" if value is ANY else str(value)
    return [("devices.deny", "a")] + [
        ("devices.allow", f"{rule.kind} {number(rule.major)}:{number(rule.minor)} {rule.access}")
        for rule in rules]


# --- v2: a BPF program ------------------------------------------------------------------------
#
# The kernel calls the program with r1 pointing at struct bpf_cgroup_dev_ctx
# (include/uapi/linux/bpf.h), three 32-bit numbers:
#     offset 0  access_type   (access << 16) | type
#     offset 4  major
#     offset 8  minor
# and reads its answer from r0 when it exits: 1 allows, 0 denies (EPERM).
TYPE = {"b": 1, "c": 2}                     # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
ACCESS = {"m": 1, "r": 2, "w": 4}           # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE

# The few eBPF instructions the program needs (Documentation/bpf/standardization/
# instruction-set.rst). An instruction is 8 bytes: an opcode, two registers, a 16-bit offset
# (for jumps: how many instructions to skip) and a 32-bit immediate value.
LOAD_32 = 0x61          # BPF_LDX|BPF_MEM|BPF_W   dst = *(u32 *)(src + offset)
AND_IMM = 0x54          # BPF_ALU|BPF_AND|BPF_K   dst &= imm       (32-bit arithmetic)
SHIFT_RIGHT_IMM = 0x74  # BPF_ALU|BPF_RSH|BPF_K   dst >>= imm
MOVE_REG = 0xbc         # BPF_ALU|BPF_MOV|BPF_X   dst = src
MOVE_IMM = 0xb4         # BPF_ALU|BPF_MOV|BPF_K   dst = imm
JUMP_IF_NOT_IMM = 0x55  # BPF_JMP|BPF_JNE|BPF_K   if dst != imm: skip `offset` instructions
JUMP_IF_NOT_REG = 0x5d  # BPF_JMP|BPF_JNE|BPF_X   if dst != src: skip `offset` instructions
EXIT = 0x95             # BPF_JMP|BPF_EXIT        return r0


def _instruction(opcode: int, dst: int = 0, src: int = 0, offset: int = 0, imm: int = 0) -> bytes:
    # struct bpf_insn: u8 code; u8 dst_reg:4, src_reg:4 (dst in the low half); s16 off; s32 imm
    return struct.pack("<BBhi", opcode, dst | src << 4, offset, imm)


def program(rules=DEFAULT_RULES) -> bytes:
    """The allow-list as an eBPF program: answer 1 if any rule allows the access, else 0."""
    head = [
        _instruction(LOAD_32, dst=2, src=1, offset=0),      # r2 = ctx->access_type
        _instruction(AND_IMM, dst=2, imm=0xFFFF),           # r2 &= 0xffff: the device's type
        _instruction(LOAD_32, dst=3, src=1, offset=0),      # r3 = ctx->access_type
        _instruction(SHIFT_RIGHT_IMM, dst=3, imm=16),       # r3 >>= 16: the access asked for
        _instruction(LOAD_32, dst=4, src=1, offset=4),      # r4 = ctx->major
        _instruction(LOAD_32, dst=5, src=1, offset=8),      # r5 = ctx->minor
    ]
    tail = [
        _instruction(MOVE_IMM, dst=0, imm=0),               # no rule matched: r0 = 0,
        _instruction(EXIT),                                 # deny
    ]
    return b"".join(head + [instruction for rule in rules for instruction in _block(rule)] + tail)


def _block(rule: Rule) -> list[bytes]:
    """One rule: tests that each jump past the block (to the next rule) when the access does not
    match, then "return 1". A jump skips `offset` instructions, so each test's offset is the
    number of instructions after it in its block."""
    steps = [(JUMP_IF_NOT_IMM, 2, 0, TYPE[rule.kind])]      # another type: next rule
    if set(rule.access) != set(ACCESS):
        allowed = sum(ACCESS[letter] for letter in rule.access)
        steps += [(MOVE_REG, 1, 3, 0),                      # r1 = r3 (r1 is free now)
                  (AND_IMM, 1, 0, allowed),                 # r1 &= what the rule allows
                  (JUMP_IF_NOT_REG, 1, 3, 0)]               # r1 != r3: more was asked: next rule
    if rule.major is not ANY:
        steps += [(JUMP_IF_NOT_IMM, 4, 0, rule.major)]      # another major: next rule
    if rule.minor is not ANY:
        steps += [(JUMP_IF_NOT_IMM, 5, 0, rule.minor)]      # another minor: next rule
    steps += [(MOVE_IMM, 0, 0, 1), (EXIT, 0, 0, 0)]         # it matches: r0 = 1, allow
    return [_instruction(opcode, dst, src, len(steps) - 1 - index if opcode in (
                JUMP_IF_NOT_IMM, JUMP_IF_NOT_REG) else 0, imm)
            for index, (opcode, dst, src, imm) in enumerate(steps)]


# bpf(2): one system call, many commands, each with its own struct in `union bpf_attr`.
SYS_BPF = {"x86_64": 321, "aarch64": 280}           # its number, per architecture
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8               # commands
BPF_PROG_TYPE_CGROUP_DEVICE = 15                    # enum bpf_prog_type
BPF_CGROUP_DEVICE = 6                               # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 2       # programs of cgroups below may be added; every one must say yes
# The license only decides whether a program may call the kernel's GPL-only helper functions.
# This one calls no helper at all, so any string would do; we give the project's own.
LICENSE = b"Apache-2.0"


def attach_program(cgroup: Path, rules=DEFAULT_RULES) -> None:
    """Load the allow-list as a BPF program and attach it to a cgroup2 directory.

    The attachment holds the program, so it stays after our file descriptors are closed, and it
    goes when the cgroup is removed. It applies to every process in the cgroup and below it.
    """
    instructions = ctypes.create_string_buffer(program(rules))
    license = ctypes.create_string_buffer(LICENSE)
    load = lambda log_level, log: struct.pack(      # the BPF_PROG_LOAD part of union bpf_attr
        "<IIQQIIQII16s", BPF_PROG_TYPE_CGROUP_DEVICE, len(instructions.raw) // 8,
        ctypes.addressof(instructions), ctypes.addressof(license),
        log_level, len(log) if log else 0, ctypes.addressof(log) if log else 0,
        0, 0, b"minirun_devices")
    try:
        program_fd = _bpf(BPF_PROG_LOAD, load(0, None))
    except OSError as error:
        # Load it again with the verifier's log: before its closing statistics ("processed N
        # insns ..."), its last line says what the verifier refused and why.
        log = ctypes.create_string_buffer(65536)
        try:
            _bpf(BPF_PROG_LOAD, load(1, log))
        except OSError:
            pass
        reasons = [line for line in log.value.decode(errors="replace").splitlines()
                   if line.strip() and not line.startswith("processed ")]
        raise RuntimeFailure(f"the kernel refused the device filter (a BPF program): "
                             f"{error.strerror}; {reasons[-1] if reasons else 'no reason given'}"
                             ) from None
    try:
        cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _bpf(BPF_PROG_ATTACH, struct.pack("<IIII", cgroup_fd, program_fd, BPF_CGROUP_DEVICE,
                                              BPF_F_ALLOW_MULTI))
        finally:
            os.close(cgroup_fd)
    except OSError as error:
        raise RuntimeFailure(f"cannot attach the device filter to {cgroup}: {error.strerror}") \
            from None
    finally:
        os.close(program_fd)


def _bpf(command: int, attr: bytes) -> int:
    """bpf(2): the command's attributes in a buffer; a new file descriptor or 0, or OSError."""
    machine = os.uname().machine
    if machine not in SYS_BPF:
        raise RuntimeFailure(f"minirun does not know the bpf(2) system call's number on {machine}")
    buffer = ctypes.create_string_buffer(attr, len(attr))
    result = libc.syscall(SYS_BPF[machine], command, buffer, len(attr))
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result
