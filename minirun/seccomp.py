"""seccomp: a filter the kernel runs on every system call the container makes.

Namespaces change what a process sees and capabilities limit what root may do, but neither makes
the kernel any smaller: every system call is a door into it, and a few hundred are open to any
process. Some reach things that were never namespaced (the keyrings), some hand code to the
kernel (bpf), some have a long record of exploitable bugs (io_uring, userfaultfd). A seccomp
filter closes those doors at the entry of the call, before the kernel has done anything with it
(seccomp(2); Documentation/userspace-api/seccomp_filter.rst).

The filter is a classic BPF program, the tiny machine tcpdump's filters run on. For each call the
kernel runs it over a `struct seccomp_data` (linux/seccomp.h) and obeys the 32-bit verdict it
returns:

    offset  0  u32 nr        the call's number          SECCOMP_RET_ALLOW         run it
    offset  4  u32 arch      the ABI it came through    SECCOMP_RET_ERRNO | e     fail with errno e
    offset  8  u64 ip        where it was made from     SECCOMP_RET_KILL_PROCESS  kill the process
    offset 16  u64 args[6]   its arguments, as raw register values (BPF cannot follow a pointer)

A filter is inherited by every child and kept across execve, and can never be removed. Because
of that the kernel installs one only for a process with no_new_privs set (or CAP_SYS_ADMIN): a
set-user-ID program started under a filter it does not expect could be tricked into misusing
its privilege. security.drop_privileges sets no_new_privs, and the filter goes on after it, as
the last step before exec (spawn._filter_system_calls).

This filter, in order:
  1. an ABI other than the native one (see "Other ABIs" below) kills the process;
  2. the calls in REFUSED fail with EPERM, whatever their arguments;
  3. clone, socket and personality are judged by their first argument; clone3 gets ENOSYS;
  4. everything else is allowed.

Docker's default profile is written the other way round: an allow-list of about 370 calls, and
EPERM for the rest. For the calls that profile was written against the two answer alike (minirun's
container has Docker's fourteen capabilities, and minirun needs Linux 5.10 or later). They differ
on calls added to later kernels: allowed here, refused by Docker until its list names them. The
deny-list is kept because it says what is dangerous, call by call, and why: what is worth reading.
"""
import ctypes
import os
import struct

from minirun import namespaces
from minirun.errors import RuntimeFailure

# -- What is refused, and why ---------------------------------------------------------------------

# Calls refused with EPERM whatever their arguments, grouped by the reason. Most of them need a
# capability the container does not have, so the kernel would refuse them anyway; the filter
# refuses them earlier, before any of the code behind them runs, which is the point: a bug in
# that code is as good as the capability.
REFUSED = {
    "namespaces": (
        ("unshare", "setns"),
        "making or joining namespaces is the runtime's work; a new user namespace gives back "
        "every capability inside it, and with them kernel code only root could reach"),
    "mounts": (
        ("mount", "umount2", "pivot_root", "open_tree", "open_tree_attr", "move_mount",
         "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr"),
        "the mount table is the container's walls: nothing may add to, move or remove them "
        "(all but the first three are the new mount API, which does the same)"),
    "keyrings": (
        ("keyctl", "add_key", "request_key"),
        "keyrings are not namespaced: root in the container would share the host root's "
        "user keyring (keyrings(7))"),
    "kernel code": (
        ("init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "bpf"),
        "loading code into the running kernel, or booting another kernel"),
    "kernel internals": (
        ("perf_event_open", "syslog", "lookup_dcookie"),
        "performance counters and the kernel log show the whole machine's activity and kernel "
        "addresses, which exploits need"),
    "exploit helpers": (
        ("userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"),
        "userfaultfd can pause the kernel in the middle of a copy, to win a race in a kernel "
        "bug; io_uring does I/O no filter sees, and has had many privilege escalations"),
    "the machine": (
        ("reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "iopl",
         "ioperm", "vhangup", "sethostname", "setdomainname"),
        "the clock, swap, process accounting, I/O ports, consoles and power belong to the host; "
        "the hostname is the runtime's to set (--hostname)"),
    "whole filesystems": (
        ("open_by_handle_at", "fanotify_init", "quotactl", "quotactl_fd"),
        "open_by_handle_at opens any file of a filesystem by its handle, past the mount tree "
        "(the 2014 'shocker' escape); fanotify watches whole filesystems; quotas are the host's"),
    "other processes": (
        ("kcmp", "pidfd_getfd", "process_madvise"),
        "comparing kernel objects across processes, taking their file descriptors, advising on "
        "their memory: Docker allows these only with CAP_SYS_PTRACE"),
    "memory placement": (
        ("mbind", "set_mempolicy", "get_mempolicy", "migrate_pages", "move_pages",
         "set_mempolicy_home_node"),
        "which NUMA node holds whose memory is the host's to decide (CAP_SYS_NICE in Docker)"),
    "obsolete": (
        ("uselib", "ustat", "sysfs", "_sysctl", "create_module", "get_kernel_syms",
         "query_module", "nfsservctl", "getpmsg", "putpmsg", "afs_syscall", "tuxcall",
         "security", "vserver"),
        "calls from the a.out and 2.4 days, or never implemented: nothing needs them, and a "
        "kernel that still has one gains nothing from it"),
}

# Calls judged by their first argument, args[0]. BPF loads 32 bits at a time; for these three
# calls the kernel itself only looks at the low 32 bits of that argument, so one load suffices.
CLONE_NEWUSER = 0x10000000      # <linux/sched.h>; the only CLONE_NEW* flag minirun never uses
NAMESPACE_FLAGS = (namespaces.CLONE_NEWNS | namespaces.CLONE_NEWCGROUP | namespaces.CLONE_NEWUTS
                   | namespaces.CLONE_NEWIPC | CLONE_NEWUSER | namespaces.CLONE_NEWPID
                   | namespaces.CLONE_NEWNET)
AF_VSOCK = 40                   # <linux/socket.h>
# personality(2): Linux (0), `linux32` (PER_LINUX32, 0x8), `uname26` (UNAME26, 0x20000), both,
# and 0xffffffff, which only asks for the current one. Others turn off address-space
# randomisation (ADDR_NO_RANDOMIZE) or make every readable page executable (READ_IMPLIES_EXEC).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xffffffff)

# The same, as --explain says them.
SPECIAL_CASES = (
    "clone with a CLONE_NEW* flag: EPERM, as unshare (fork and threads never set one)",
    "clone3: ENOSYS, because its flags sit in memory, where BPF cannot look; glibc takes ENOSYS "
    "to mean an old kernel and falls back to clone, whose flags are in a register",
    "socket(AF_VSOCK): EPERM; vsock sockets talk to the hypervisor, across network namespaces",
    "personality: EPERM unless Linux, linux32, uname26 or the query (no ASLR off, no "
    "READ_IMPLIES_EXEC)",
)

# -- Other ABIs ---------------------------------------------------------------------------------
# A 64-bit x86 process can also make 32-bit calls (`int $0x80`), whose numbers are the i386
# table's: i386's 26 is ptrace, x86_64's 26 is msync. A filter that only compares numbers would
# be walked around by switching tables, so the first thing it checks is seccomp_data.arch, and
# on x86_64 the x32 ABI too, which uses the native arch with bit 30 set in the number. minirun
# kills the process rather than failing the call: a filter that does not know the ABI cannot
# give a meaningful errno (even exit would "fail"), and a program that switches ABIs in the
# middle is either an exploit or a 32-bit binary, which cannot run here. Docker lists the
# i386 and x32 tables in its profile instead, so 32-bit programs run under it.
AUDIT_ARCH_X86_64 = 0xC000003E      # EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE (linux/audit.h)
AUDIT_ARCH_AARCH64 = 0xC00000B7     # EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
X32_SYSCALL_BIT = 0x40000000        # __X32_SYSCALL_BIT, asm/unistd.h

# machine (uname -m): (its AUDIT_ARCH, its column in NUMBERS)
ARCHITECTURES = {"x86_64": (AUDIT_ARCH_X86_64, 0), "aarch64": (AUDIT_ARCH_AARCH64, 1)}

# name: (x86_64, aarch64) numbers, from asm/unistd_64.h and asm-generic/unistd.h (None: that ABI
# has no such call). tests/test_seccomp.py checks them against the installed headers. Since 424
# (pidfd_send_signal) every architecture gives a new call the same number.
NUMBERS = {
    "seccomp": (317, 277), "clone": (56, 220), "clone3": (435, 435), "socket": (41, 198),
    "personality": (135, 92),
    "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "open_tree": (428, 428),
    "open_tree_attr": (467, 467), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "bpf": (321, 280),
    "perf_event_open": (298, 241), "syslog": (103, 116), "lookup_dcookie": (212, 18),
    "userfaultfd": (323, 282), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "iopl": (172, None),
    "ioperm": (173, None), "vhangup": (153, 58), "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "open_by_handle_at": (304, 265), "fanotify_init": (300, 262), "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "kcmp": (312, 272), "pidfd_getfd": (438, 438), "process_madvise": (440, 440),
    "mbind": (237, 235), "set_mempolicy": (238, 237), "get_mempolicy": (239, 236),
    "migrate_pages": (256, 238), "move_pages": (279, 239), "set_mempolicy_home_node": (450, 450),
    "uselib": (134, None), "ustat": (136, None), "sysfs": (139, None), "_sysctl": (156, None),
    "create_module": (174, None), "get_kernel_syms": (177, None), "query_module": (178, None),
    "nfsservctl": (180, 42), "getpmsg": (181, None), "putpmsg": (182, None),
    "afs_syscall": (183, None), "tuxcall": (184, None), "security": (185, None),
    "vserver": (236, None),
}

# -- Classic BPF: the four instructions this filter needs (linux/filter.h, linux/bpf_common.h) --
LOAD = 0x20         # BPF_LD | BPF_W | BPF_ABS:  A = the 32-bit word at offset k of seccomp_data
JEQ = 0x15          # BPF_JMP | BPF_JEQ | BPF_K: if A == k skip jt instructions, else skip jf
JSET = 0x45         # BPF_JMP | BPF_JSET | BPF_K: if A & k skip jt, else skip jf
RET = 0x06          # BPF_RET | BPF_K:           return k, the verdict
NR, ARCH, ARG0 = 0, 4, 16           # offsets in seccomp_data (ARG0: the low half, little-endian)

ALLOW = 0x7FFF0000                  # SECCOMP_RET_ALLOW
ERRNO = 0x00050000                  # SECCOMP_RET_ERRNO; the errno goes in the low 16 bits
KILL_PROCESS = 0x80000000           # SECCOMP_RET_KILL_PROCESS (Linux 4.14): the whole process
EPERM, ENOSYS = 1, 38


def program(machine: str) -> list:
    """The filter as assembly: (opcode, k) or (opcode, k, jump-if-true, jump-if-false), where a
    jump is a label or 0 (the next instruction); a string alone is a label."""
    arch, column = ARCHITECTURES[machine]
    nr = {name: numbers[column] for name, numbers in NUMBERS.items()}
    refused = [nr[name] for names, _ in REFUSED.values() for name in names if nr[name] is not None]
    return [
        (LOAD, ARCH), (JEQ, arch, 0, "kill"),                   # another ABI: kill
        (LOAD, NR),
        *([(JSET, X32_SYSCALL_BIT, "kill", 0)] if machine == "x86_64" else []),    # x32: kill
        (JEQ, nr["clone"], "clone", 0),
        (JEQ, nr["clone3"], "enosys", 0),
        (JEQ, nr["socket"], "socket", 0),
        (JEQ, nr["personality"], "personality", 0),
        *[(JEQ, number, "eperm", 0) for number in refused],
        (RET, ALLOW),
        "clone", (LOAD, ARG0), (JSET, NAMESPACE_FLAGS, "eperm", "allow"),
        "socket", (LOAD, ARG0), (JEQ, AF_VSOCK, "eperm", "allow"),
        "personality", (LOAD, ARG0), *[(JEQ, value, "allow", 0) for value in PERSONALITIES],
        "eperm", (RET, ERRNO | EPERM),          # (where any other personality falls through)
        "allow", (RET, ALLOW),
        "enosys", (RET, ERRNO | ENOSYS),
        "kill", (RET, KILL_PROCESS),
    ]


def assemble(source: list) -> bytes:
    """Resolve the labels and pack each instruction as a struct sock_filter {u16 code; u8 jt;
    u8 jf; u32 k}. Jumps only go forward, at most 255 instructions (so there are no loops, and
    the kernel knows the program ends)."""
    labels, instructions = {}, []
    for item in source:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            code, k, *jumps = item
            instructions.append((code, k, *(jumps or (0, 0))))

    def offset(at: int, target) -> int:
        skip = labels[target] - at - 1 if target else 0
        if not 0 <= skip <= 255:
            raise ValueError(f"jump to {target!r} out of reach of instruction {at}")
        return skip

    return b"".join(struct.pack("=HBBI", code, offset(at, jt), offset(at, jf), k)
                    for at, (code, k, jt, jf) in enumerate(instructions))


# -- Installing it --------------------------------------------------------------------------------

class _SockFprog(ctypes.Structure):     # struct sock_fprog, linux/filter.h
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


SECCOMP_SET_MODE_FILTER = 1


# Built once, when container.py imports this module, before it forks: the child, which runs this
# on every container start, then only installs it. (Built in the child, the same work cost four
# times as much: every object it touched had to be copied first, the price of fork's
# copy-on-write.)
MACHINE = os.uname().machine
DEFAULT_FILTER = assemble(program(MACHINE)) if MACHINE in ARCHITECTURES else None


def default_filter() -> bytes:
    """The default filter, for `install` in the container; one line if this machine has none."""
    if DEFAULT_FILTER is None:
        raise RuntimeFailure(f"minirun has no seccomp filter for {MACHINE}: "
                             "run with --security-opt seccomp=unconfined")
    return DEFAULT_FILTER


def install(program: bytes) -> int:
    """Install an assembled filter (the default, or an OCI bundle's: oci.py) on this thread."""
    fprog = _SockFprog(len(program) // 8, program)
    number = NUMBERS["seccomp"][ARCHITECTURES[MACHINE][1]]
    if namespaces.libc.syscall(ctypes.c_long(number), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                               ctypes.c_uint(0), ctypes.byref(fprog)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(errno)}")
    return fprog.len


def describe() -> list[str]:
    """What the filter refuses and why, a line a group: what `--explain` prints."""
    return [*(f"EPERM {group}: {' '.join(names)} -- {why}" for group, (names, why) in REFUSED.items()),
            *SPECIAL_CASES, "other ABIs (i386's int $0x80, x32): the process is killed (SIGSYS)"]


def wanted(security_opts) -> bool:
    """--security-opt: False for `seccomp=unconfined` (Docker's `seccomp:unconfined` too), which
    turns the filter off; anything else is refused, before anything is created."""
    for option in security_opts:
        if option not in ("seccomp=unconfined", "seccomp:unconfined"):
            raise RuntimeFailure(f"unsupported --security-opt {option!r}: minirun knows only "
                                 "seccomp=unconfined, which turns its system call filter off")
    return not security_opts
