"""Passing signals on without losing any: blocked signals, read through a signalfd.

minirun waiting for its container, and `--init` waiting for its command, have one job: pass on
every signal they are sent, reap their children, and notice when theirs has exited. The obvious
code, a Python handler that forwards plus a blocking waitpid(), loses signals. CPython runs a
Python handler between bytecodes; a signal that lands after the interpreter last looked and
before waitpid() blocks is noted, then waits unseen until waitpid() returns: never, for a
container waiting for that very signal. Here that was about one run in sixty.

The race-free way is to let these signals interrupt nothing. Blocked, they stay pending in the
kernel, and a signalfd (signalfd(2)) is a file descriptor that is readable while one is pending.
SIGCHLD comes through it too, so "a signal to pass on", "a child has exited" and, with -t, "the
window changed size" are events of a single select() loop. Blocking starts before the fork, so
nothing sent meanwhile is missed; the child unblocks just before exec, which keeps the mask.
(tini, behind `docker run --init`, reaches the same end with sigtimedwait(2).)
"""
import contextlib
import ctypes
import os
import signal
import struct

from minirun.namespaces import libc

# What a runtime passes on to its container, as `docker run` does: a Ctrl-C, a `kill`, a hangup.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)

# What a supervisor reads from its signalfd: those, a child's exit and a terminal's new size.
WATCHED = FORWARDED + (signal.SIGCHLD, signal.SIGWINCH)

_SIGINFO_SIZE = 128     # struct signalfd_siginfo; its first field is ssi_signo, a u32


@contextlib.contextmanager
def held():
    """Inside the block the watched signals wait, pending, for a SignalFd to read them.

    At its end, those still pending are dropped: they came after the child they were meant for
    had gone. Then the signal mask is what it was before.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    try:
        yield
    finally:
        while signal.sigtimedwait(WATCHED, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def reset_for_exec() -> None:
    """In a child about to exec: the dispositions and signal mask of a fresh process.

    execve(2) keeps the mask and every ignored signal ignored (Python ignores SIGPIPE and
    SIGXFSZ). Dispositions go first: a signal that was sent while held then acts as it would
    on the command, killing it if it has no handler.
    """
    for sig in FORWARDED + (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)


class SignalFd:
    """A signalfd for the watched signals, which must be held already (see `held`)."""

    def __init__(self) -> None:
        mask = (ctypes.c_uint64 * 16)()                 # glibc's sigset_t: 1024 bits
        for sig in WATCHED:
            mask[(sig - 1) // 64] |= 1 << ((sig - 1) % 64)
        fd = libc.signalfd(-1, ctypes.byref(mask), os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"signalfd: {os.strerror(error)}")
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[int]:
        """The signals pending now, taken from the kernel's queue; [] if there are none.

        Standard signals do not queue: one SIGCHLD may stand for several children.
        """
        try:
            data = os.read(self.fd, 64 * _SIGINFO_SIZE)
        except BlockingIOError:
            return []
        return [struct.unpack_from("I", data, offset)[0] for offset in range(0, len(data), _SIGINFO_SIZE)]

    def close(self) -> None:
        os.close(self.fd)
