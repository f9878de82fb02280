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
    """Copy stdin to the pty and the pty to stdout until the container's side closes."""
    saved = termios.tcgetattr(STDIN) if os.isatty(STDIN) else None
    if saved:
        tty.setraw(STDIN)
        _copy_window_size(master)
        signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(master))
    readers = [STDIN, master]
    try:
        while True:
            ready, _, _ = select.select(readers, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as error:        # EIO: every slave fd is closed
                    if error.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    return
                os.write(STDOUT, data)
            if STDIN in ready:
                data = os.read(STDIN, 65536)
                if data:
                    os.write(master, data)
                else:                           # stdin ended: send the terminal's end-of-file
                    os.write(master, bytes([termios.tcgetattr(master)[6][termios.VEOF][0]]))
                    readers.remove(STDIN)
    finally:
        if saved:
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            termios.tcsetattr(STDIN, termios.TCSADRAIN, saved)
        os.close(master)


def _copy_window_size(master: int) -> None:
    size = fcntl.ioctl(STDIN, termios.TIOCGWINSZ, b"\0" * 8)
    fcntl.ioctl(master, termios.TIOCSWINSZ, size)
