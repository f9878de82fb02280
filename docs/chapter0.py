"""Chapter 0: the smallest container that still works, in one file (docs/chapter0.md).

    python3 docs/chapter0.py ROOTFS [COMMAND...]        (as root; ROOTFS is an unpacked image)
    python3 docs/chapter0.py "$(minirun inspect hello | jq -r '.layer_dirs[0]')" /app/hello.sh

Five namespaces, a fork, a read-only bind mount of the image, pivot_root into it, /proc, exec.
No cgroup, no capabilities dropped, no seccomp, no /dev, no overlay, no cleanup on a crash:
docs/chapter0.md says what each of minirun's modules adds to this, and why.
Python 3.11 has no os.unshare (it came in 3.12), so the kernel is called through ctypes.
"""
import ctypes
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)

# Namespaces to create (unshare(2), clone(2)): each gives the child its own copy of one thing.
CLONE_NEWNS = 0x00020000     # the mount table
CLONE_NEWUTS = 0x04000000    # the hostname
CLONE_NEWIPC = 0x08000000    # System V IPC and POSIX message queues
CLONE_NEWPID = 0x20000000    # process IDs: the next child forked is PID 1
CLONE_NEWNET = 0x40000000    # network devices: only a loopback, and it is down
# mount(2) flags
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2               # umount2(2): detach now, even while busy
SYS_pivot_root = 155         # x86_64; glibc has no pivot_root() wrapper


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None) -> None:
    check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                     ctypes.c_ulong(flags), data and data.encode()), f"mount {target}")


def child(rootfs: str, command: list[str]) -> None:
    """PID 1 of the new PID namespace: build the view of the machine, then become the app."""
    # Our mount namespace is a copy of the host's, and its mounts are "shared" with it (systemd
    # makes / shared): make them private first, or the mounts below would appear on the host.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # pivot_root needs the new root to be a mount point: bind the image onto itself, read-only
    # (no overlay here, so a write would change the image itself; a bind ignores MS_RDONLY
    # until it is remounted).
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)
    mount(None, rootfs, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chdir(rootfs)
    # The image becomes "/"; the old root is stacked under it at "." and unmounted: no path
    # leads back to the host's files (chroot would leave one: docs/minirun.md).
    check(libc.syscall(ctypes.c_long(SYS_pivot_root), b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")
    # A /proc of our PID namespace: `ps` and the app see only the processes of this container.
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    check(libc.sethostname(b"chapter0", 8), "sethostname")
    os.execve(command[0], command, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def run(rootfs: str, command: list[str]) -> int:
    """Start `command` in a container over `rootfs`; its exit status, as a shell shows it."""
    # The new PID namespace applies to the children we fork from now on, the others to us:
    # unshare them in a child process, so this script's own process keeps the host's view.
    runtime = os.fork()
    if runtime == 0:
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
                           | CLONE_NEWNET), "unshare")
        pid1 = os.fork()
        if pid1 == 0:
            try:
                child(rootfs, command)
            except OSError as error:        # exec failed, or a mount did: say so and exit 125
                print(f"chapter0: {error}", file=sys.stderr)
                os._exit(125)
        # PID 1 dies: the kernel kills every other process of its namespace (pid_namespaces(7)).
        os._exit(exit_code(os.waitpid(pid1, 0)[1]))
    return exit_code(os.waitpid(runtime, 0)[1])


def exit_code(wait_status: int) -> int:
    """As a shell shows it: the status it exited with, or 128+N if signal N killed it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    if len(sys.argv) < 2 or os.geteuid() != 0:
        sys.exit("usage, as root: python3 docs/chapter0.py ROOTFS [COMMAND...]")
    sys.exit(run(os.path.abspath(sys.argv[1]), sys.argv[2:] or ["/bin/sh"]))
