"""`minirun run -it hello sh` is a usable interactive shell, and the terminal is restored after."""
import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

from conftest import read_line


def read_until(fd: int, text: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"never saw {text!r}; got {seen!r}")
        try:
            seen += os.read(fd, 4096)
        except OSError:                         # EIO: the other side closed
            raise AssertionError(f"terminal closed before {text!r}; got {seen!r}")
    return seen


@contextlib.contextmanager
def shell_on(minirun_env, master: int, slave: int):
    """`minirun run -it hello sh` with the pty `slave` as its terminal; both ends closed after."""
    process = subprocess.Popen([sys.executable, "-m", "minirun", "run", "-it", "hello", "sh"],
                               stdin=slave, stdout=slave, stderr=slave, env=minirun_env,
                               start_new_session=True)
    try:
        read_until(master, b"# ")                # the prompt: the shell is reading its terminal
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(slave)


def test_interactive_shell_through_a_pty(minirun_env):
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    with shell_on(minirun_env, master, slave) as process:
        os.write(master, b"[ -t 0 ] && echo is-a-$((2*3))-tty\r")
        read_until(master, b"is-a-6-tty")
        os.write(master, b"sleep 300\r")
        time.sleep(0.5)
        os.write(master, b"\x03")                # Ctrl-C ends the foreground job, not the shell
        read_until(master, b"^C")
        os.write(master, b"echo alive-$((1+1))\r")
        read_until(master, b"alive-2")           # long before sleep 300 would have ended
        os.write(master, b"exit 5\r")
        assert process.wait(timeout=20) == 5
        assert termios.tcgetattr(slave) == before   # raw mode undone


def test_tty_without_a_terminal_on_stdin(minirun):
    # -t with piped input still works: the container gets a pty, minirun relays the pipe.
    result = minirun("run", "-t", "hello", "sh", "-c", "[ -t 1 ] && echo tty; read line; echo got-$line",
                     input="abc\n")
    assert result.returncode == 0
    lines = result.stdout.splitlines()          # the pty also echoes "abc", whenever it arrives
    assert "tty" in lines and lines[-1] == "got-abc"


def test_large_input_through_a_tty_does_not_deadlock(start_minirun):
    # 60000 lines is far more than the pty's buffers hold: the relay has to keep draining the
    # container's output while the container is still consuming its input. The input is sent
    # once echo is off: before that, the pty itself would echo it back.
    lines = [str(number) for number in range(1, 60001)]
    process = start_minirun("run", "-t", "hello", "sh", "-c", "stty -echo; echo ready; cat",
                            stdin=subprocess.PIPE)
    assert read_line(process) == "ready\n"
    out, _ = process.communicate(input="\n".join(lines) + "\n", timeout=120)
    assert process.returncode == 0
    assert out.splitlines() == lines


def test_the_container_terminal_takes_our_window_size_and_its_changes(minirun_env):
    master, slave = pty.openpty()
    set_size = lambda rows, columns: fcntl.ioctl(slave, termios.TIOCSWINSZ,  # noqa: E731
                                                 struct.pack("HHHH", rows, columns, 0, 0))
    set_size(33, 101)
    with shell_on(minirun_env, master, slave) as process:
        os.write(master, b"stty size\r")
        read_until(master, b"33 101")            # copied once at the start
        set_size(44, 120)
        process.send_signal(signal.SIGWINCH)     # what the kernel sends our terminal's owner
        os.write(master, b"stty size\r")
        read_until(master, b"44 120")
        os.write(master, b"exit\r")
        assert process.wait(timeout=20) == 0


def test_the_pty_is_the_containers_own(minirun, start_minirun, minirun_env):
    # Opened from the container's own devpts instance, so the container can name it, and
    # `exec -t` gets one there too, with a TERM as `run -t` has.
    result = minirun("run", "-t", "hello", "sh", "-c", "tty; ls /dev/pts", input="")
    assert result.stdout.split()[:2] == ["/dev/pts/0", "0"]
    process = start_minirun("run", "--name", "ttyhost", "hello", "sleep", "60")
    from conftest import wait_for_container
    wait_for_container(minirun_env)
    joined = minirun("exec", "-t", "ttyhost", "sh", "-c", "tty; echo TERM=$TERM", input="")
    assert joined.stdout.split()[0] == "/dev/pts/0"
    assert "TERM=" in joined.stdout and "TERM=dumb" not in joined.stdout and "TERM=\r" not in joined.stdout
    assert minirun("stop", "-t", "0", "ttyhost").returncode == 0
    process.communicate(timeout=20)
