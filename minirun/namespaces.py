"""The ctypes doorway to the kernel calls that make a container: unshare, setns, mount,
pivot_root, clone3.

Python 3.11 has no os.unshare or os.setns (they arrived in 3.12) and has never had mount(2),
pivot_root(2) or clone3(2), so we call libc directly. Each wrapper raises OSError with the real errno, so a
failure reads like any other Python I/O error.

A namespace gives a process its own view of one kind of global resource (namespaces(7)):

    CLONE_NEWNS      mount table          CLONE_NEWUTS     hostname
    CLONE_NEWIPC     SysV IPC, mqueues    CLONE_NEWNET     network devices, routes, ports
    CLONE_NEWPID     process IDs          CLONE_NEWCGROUP  the root of /proc/self/cgroup
    CLONE_NEWUSER    user and group IDs (an OCI bundle's `user` namespace: userns.py)
"""
import ctypes
import os
import signal

libc = ctypes.CDLL(None, use_errno=True)     # the one handle on the C library, for every module
# The same library through a handle that keeps the GIL during calls, for clone3: os.fork()
# forks holding it, and the child's interpreter must start as PyOS_AfterFork_Child expects.
_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# config.json's names for them (linux.namespaces[].type, the runtime spec's config-linux.md), in
# the order --explain lists them.
BY_TYPE = {"mount": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "network": CLONE_NEWNET,
           "cgroup": CLONE_NEWCGROUP, "pid": CLONE_NEWPID, "user": CLONE_NEWUSER}
FLAG_NAMES = {CLONE_NEWNS: "CLONE_NEWNS", CLONE_NEWUTS: "CLONE_NEWUTS", CLONE_NEWIPC: "CLONE_NEWIPC",
              CLONE_NEWNET: "CLONE_NEWNET", CLONE_NEWCGROUP: "CLONE_NEWCGROUP",
              CLONE_NEWPID: "CLONE_NEWPID", CLONE_NEWUSER: "CLONE_NEWUSER"}
CLONE_PARENT = 0x00008000
CLONE_INTO_CGROUP = 0x200000000     # clone3(2) only: its flags are 64 bits wide
SYS_CLONE3 = 435                    # one number on every architecture (asm-generic/unistd.h)

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2


def _check(result: int, what: str, path: str | None = None) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}", path)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2)).

    CLONE_NEWPID is special: the caller stays where it is and its next child becomes PID 1 of
    the new PID namespace.
    """
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that `fd` (an open /proc/PID/ns/* file) refers to (setns(2))."""
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def join(path: str, nstype: int = 0) -> None:
    """setns(2) by a namespace's file: /proc/PID/ns/*, a bind mount of one, or /proc/PID/fd/N,
    a descriptor a process holds on one. As for any file, the path is opened and closed."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, nstype)
    finally:
        os.close(fd)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2). With MS_BIND, MS_REMOUNT or MS_PRIVATE the same call binds, changes or re-types."""
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                       encode(data)), f"mount {fstype or ''} {source or ''} on {target}", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): make new_root the root of this mount namespace, the old root moves to put_old.

    glibc has no wrapper, so this goes through syscall(2). SYS_pivot_root is 155 on x86_64
    and 41 on arm64 (asm/unistd.h).
    """
    number = {"x86_64": 155, "aarch64": 41}[os.uname().machine]
    _check(libc.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode()),
           "pivot_root", new_root)


def sethostname(name: str) -> None:
    """sethostname(2): only this UTS namespace sees the change."""
    raw = name.encode()
    _check(libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


class _CloneArgs(ctypes.Structure):
    """struct clone_args of <linux/sched.h>, up to its `cgroup` field (CLONE_ARGS_SIZE_VER2)."""
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(), but the child is born in the cgroup2 directory `cgroup_fd` (clone3(2),
    CLONE_INTO_CGROUP, Linux 5.7): 0 in the child, its PID in the parent, as os.fork().

    Moving a process later, by writing its PID into cgroup.procs, makes the kernel take a
    global lock whose taking waits for an RCU grace period: 5 to 30 ms on this machine. A
    child born in the cgroup takes only that lock's cheap, shared side (kernel/cgroup/cgroup.c,
    cgroup_css_set_fork()); systemd and crun start processes this way.
    """
    return _clone3(_CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_fd))


def fork_as_sibling() -> int:
    """fork(), but the child is the caller's sibling: its parent is the caller's parent
    (clone(2), CLONE_PARENT), who waits for it and is told of its exit by the caller's own exit
    signal (clone3 wants exit_signal 0 with CLONE_PARENT). 0 in the child, its PID in the
    caller. `exec`'s intermediate process makes the runtime's child this way (spawn.fork)."""
    return _clone3(_CloneArgs(flags=CLONE_PARENT, exit_signal=0))


def _clone3(args: _CloneArgs) -> int:
    """clone3(2) with no stack given: it duplicates the caller as fork(2) does, and the child
    returns here.

    Around it, the calls CPython documents for "fork() or any similar function" (PyOS_
    BeforeFork and AfterFork: the import lock, the GIL, os.register_at_fork hooks), as os.fork
    makes them. What glibc's fork() adds is not done: the locks of other threads (so call this
    only in a process that has no other thread), and the thread's own record of its TID, which
    keeps the parent's (so the child must not raise(3) itself a signal before it execs; kill(2)
    of its own PID, what os.kill does, is right).
    """
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_holding_gil.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args),
                                    ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    errno = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(errno, f"clone3: {os.strerror(errno)}")
    return pid
