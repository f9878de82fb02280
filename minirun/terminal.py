"""`-t`: the container's terminal is a pseudo-terminal whose master end minirun relays.

The container's side (the slave) is its controlling terminal, so its shell gets job control,
line editing and Ctrl-C as a real terminal would give them (pty(7)). minirun copies bytes
between its own terminal and the master, puts its own terminal in raw mode so that every key
goes through untouched, passes on window-size changes, and restores the terminal at the end.
"""
import errno
import fcntl
import os
import select
import signal
import termios
import tty

STDIN, STDOUT = 0, 1


def become_controlling_terminal(slave: int) -> None:
    """In the container (a new session): make the pty its terminal and its stdin, stdout, stderr."""
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def relay(master: int) -> None:
    """Copy stdin to the pty and the pty to stdout until the container's side closes.

    The master is non-blocking, and input the pty has not yet accepted waits in `pending`
    while the loop goes on reading the container's output. A blocking write would deadlock:
    the app, echoing or printing, fills the pty's output buffer and stops reading its input
    until someone drains that buffer, and the one who would is stuck in the write. Stdin is
    not read again until `pending` has gone through, so a fast producer is held back instead
    of piling up in memory.
    """
    saved = termios.tcgetattr(STDIN) if os.isatty(STDIN) else None
    if saved:
        tty.setraw(STDIN)
        _copy_window_size(master)
        signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(master))
    os.set_blocking(master, False)
    pending, stdin_open = b"", True
    try:
        while True:
            readers = [master] + ([STDIN] if stdin_open and not pending else [])
            readable, writable, _ = select.select(readers, [master] if pending else [], [])
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except BlockingIOError:
                    data = None
                except OSError as error:        # EIO: every slave fd is closed
                    if error.errno != errno.EIO:
                        raise
                    data = b""
                if data == b"":
                    return
                _write_all(STDOUT, data or b"")
            if master in writable:
                try:
                    pending = pending[os.write(master, pending):]
                except BlockingIOError:
                    pass
            if STDIN in readable:
                data = os.read(STDIN, 65536)
                if not data:                    # stdin ended: send the terminal's end-of-file
                    data = bytes([termios.tcgetattr(master)[6][termios.VEOF][0]])
                    stdin_open = False
                pending += data
    finally:
        if saved:
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            termios.tcsetattr(STDIN, termios.TCSADRAIN, saved)
        os.close(master)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _copy_window_size(master: int) -> None:
    size = fcntl.ioctl(STDIN, termios.TIOCGWINSZ, b"\0" * 8)
    fcntl.ioctl(master, termios.TIOCSWINSZ, size)
