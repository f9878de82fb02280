"""`-t`: the container's terminal is a pseudo-terminal whose master end minirun relays.

The container's side (the slave) is its controlling terminal, so its shell gets job control,
line editing and Ctrl-C as a real terminal would give them (pty(7)). minirun copies bytes
between its own terminal and the master, puts its own terminal in raw mode so that every key
goes through untouched, passes on window-size changes, and restores the terminal at the end.
"""
import errno
import fcntl
import os
import socket
import termios
import tty

STDIN, STDOUT = 0, 1


def open_in_container(console: socket.socket) -> None:
    """In the container (a new session): open a pty from the container's own /dev/ptmx, send its
    master end to the runtime over `console`, and make the slave end the controlling terminal
    and stdin, stdout, stderr.

    The pty is opened here, after the root changed, so that it belongs to the container's own
    devpts instance (mounted with `newinstance`): `tty` names it /dev/pts/0, and it is nothing
    of the host's. File descriptors travel between processes over a unix socket as SCM_RIGHTS
    ancillary data (unix(7)); runc's --console-socket hands a pty to an engine the same way.
    """
    master, slave = os.openpty()
    socket.send_fds(console, [b"pty"], [master])
    os.close(master)
    console.close()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def receive_master(console: socket.socket) -> int | None:
    """In the runtime: the master end the container sent, or None if it failed before."""
    try:
        _, fds, _, _ = socket.recv_fds(console, 16, 1)
    finally:
        console.close()
    return fds[0] if fds else None


class Relay:
    """Copies stdin to the pty and the pty to stdout, one select() round at a time: the
    supervisor's loop (container._supervise) drives it between the signals it passes on.

    The master is non-blocking, and input the pty has not yet accepted waits in `pending`
    while the loop goes on reading the container's output. A blocking write would deadlock:
    the app, echoing or printing, fills the pty's output buffer and stops reading its input
    until someone drains that buffer, and the one who would is stuck in the write. Stdin is
    not read again until `pending` has gone through, so a fast producer is held back instead
    of piling up in memory.
    """

    def __init__(self, master: int) -> None:
        self.master = master
        self.saved = termios.tcgetattr(STDIN) if os.isatty(STDIN) else None
        if self.saved:
            tty.setraw(STDIN)
            self.copy_window_size()
        os.set_blocking(master, False)
        self.pending, self.stdin_open, self.container_side_open = b"", True, True
        self.stdout_open = True

    def readers(self) -> list[int]:
        if not self.container_side_open:
            return []
        return [self.master] + ([STDIN] if self.stdin_open and not self.pending else [])

    def writers(self) -> list[int]:
        return [self.master] if self.container_side_open and self.pending else []

    def pump(self, readable: list, writable: list) -> None:
        """Move what select() said can move, without blocking."""
        if self.master in readable:
            self._copy_output()
        if self.master in writable:
            try:
                self.pending = self.pending[os.write(self.master, self.pending):]
            except BlockingIOError:
                pass
        if STDIN in readable:
            data = os.read(STDIN, 65536)
            if not data:                        # stdin ended: send the terminal's end-of-file
                data = bytes([termios.tcgetattr(self.master)[6][termios.VEOF][0]])
                self.stdin_open = False
            self.pending += data

    def copy_window_size(self) -> None:
        """On SIGWINCH: the container's terminal takes the size of ours."""
        if self.saved:
            size = fcntl.ioctl(STDIN, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def discard_output(self) -> None:
        """Our stdout has no reader any more: drain what the container writes, copy nothing."""
        self.stdout_open = False

    def close(self) -> None:
        """The container side is closed, or minirun is failing: restore our terminal."""
        if self.saved:
            termios.tcsetattr(STDIN, termios.TCSADRAIN, self.saved)
        os.close(self.master)

    def _copy_output(self) -> None:
        """Copy what the container wrote to stdout; note when its side has closed."""
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError as error:                # EIO: every slave fd is closed
            if error.errno != errno.EIO:
                raise
            data = b""
        if data:
            if self.stdout_open:
                _write_all(STDOUT, data)
        else:
            self.container_side_open = False


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
