"""`-t`: the container's terminal is a pseudo-terminal whose master end minirun relays.

The container's side (the slave) is its controlling terminal, so its shell gets job control,
line editing and Ctrl-C as a real terminal would give them (pty(7)). minirun copies bytes
between its own terminal and the master, puts its own terminal in raw mode so that every key
goes through untouched, passes on window-size changes, and restores the terminal at the end.
"""
import errno
import fcntl
import os
import termios
import tty

STDIN, STDOUT = 0, 1


def become_controlling_terminal(slave: int) -> None:
    """In the container (a new session): make the pty its terminal and its stdin, stdout, stderr."""
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


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
            _write_all(STDOUT, data)
        else:
            self.container_side_open = False


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
