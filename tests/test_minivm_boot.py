"""Real guests under TCG: the same image's app, on its own kernel, with its exit status.

The boots share one kernel and one cached initramfs (session fixtures). Every boot is given a
private temp dir (as $TMPDIR, and in QEMU's command line through the kernel's path), so that the
tests can check that nothing was left behind without counting other people's QEMUs.
"""
import fcntl
import hashlib
import os
import re
import select
import signal
import struct
import subprocess
import sys
import sysconfig
import termios
import time

import pytest

from conftest import BOOT_TIMEOUT, leftovers, minivm, wait_for_qemu_to_end, with_store

pytestmark = pytest.mark.vm


def test_hello_boots_its_own_kernel_with_a_clean_stdout(guest):
    result = minivm(guest, "--verbose", "--explain")   # console, QMP, parts: stderr, not stdout
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Hello from hello", result.stdout       # no kernel noise before the app
    release = re.search(r"kernel:\s+(\S+)", result.stdout).group(1)
    assert release != os.uname().release
    assert "accelerator: TCG" in result.stderr
    assert "@minivm: init running" in result.stderr
    # --explain names the modules each part needs, in the order the guest loads them.
    assert "modules      for virtio-serial: virtio_ring, virtio, virtio_console" \
        in result.stderr
    assert leftovers(guest) == ([], [])


@pytest.mark.parametrize("command, status", [
    (["sh", "-c", "echo to stdout; echo to stderr >&2; exit 3"], 3),
    (["/no/such/program"], 127),
    (["sh", "-c", "kill -KILL $$"], 128 + 9),           # killed by a signal inside the guest
])
def test_exit_status_of_the_app_is_minivms(guest, command, status):
    result = minivm(guest, "hello", *command)
    assert result.returncode == status, result.stderr
    if status == 3:
        assert (result.stdout, result.stderr) == ("to stdout\n", "to stderr\n")
    if status == 127:
        assert result.stderr.startswith("minivm: '/no/such/program' not found in the VM (PATH=")
        assert result.stderr.count("\n") == 1 and result.stdout == ""     # minirun's line


def test_piped_stdin_reaches_the_app_byte_exact_and_ends(guest):
    """`... | minivm boot hello sha256sum`: 10 MB in, through the stdin port, then EOF."""
    data = os.urandom(10 * 1024 * 1024)
    home, env = guest
    result = subprocess.run([sys.executable, "-m", "minivm", "boot", "hello", "sh", "-c",
                             "sha256sum; echo done >&2"], input=data, env=env,
                            capture_output=True, timeout=BOOT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{hashlib.sha256(data).hexdigest()}  -\n"
    assert result.stderr == b"done\n"           # the app's stderr, on minivm's stderr
    assert leftovers(guest) == ([], [])


def test_output_still_in_flight_when_the_app_ends_all_arrives(guest):
    """The app has ended while most of its output is still queued in the port, in QEMU and in
    the socket, because minivm's reader has not read yet: all of it must still arrive."""
    size = 3_000_000
    boot = minivm(guest, "--verbose", "hello", "sh", "-c",
                  f"yes 0123456789abcdef | head -c {size}; echo written >&2",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in boot.stderr:                # the console, with --verbose: wait for the end
            if "@minivm: exit 0" in line:       # ... before reading a byte of stdout
                break
        output = boot.stdout.read()
        assert boot.wait(timeout=BOOT_TIMEOUT) == 0
    finally:
        boot.kill()
        boot.wait()
        boot.stdout.close()
        boot.stderr.close()
    assert len(output) == size and output == ("0123456789abcdef\n" * size)[:size]
    assert leftovers(guest) == ([], [])


def test_a_closed_pipe_stops_the_vm_with_141_as_sigpipe_would(guest):
    """`minivm boot hello yes | head -1`: the reader goes, the pipeline ends."""
    boot = minivm(guest, "hello", "yes", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert boot.stdout.readline() == "y\n"
        boot.stdout.close()                     # what `head -1` does once it has its line
        assert boot.wait(timeout=BOOT_TIMEOUT) == 128 + signal.SIGPIPE
        assert boot.stderr.read() == ""         # as quiet as `yes` itself on the host
    finally:
        boot.kill()
        boot.wait()
        boot.stderr.close()
    assert leftovers(guest) == ([], [])


@pytest.mark.parametrize("delay", [0, 0.05, 0.1, 0.2, 0.5, 1.0])
def test_an_early_ctrl_c_is_130_and_leaves_nothing(guest, delay):
    """SIGINT while Python starts, loads minivm, packs the initramfs or launches QEMU."""
    boot = minivm(guest, "hello", "sleep", "100000", stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    try:
        time.sleep(delay)
        boot.send_signal(signal.SIGINT)
        status = boot.wait(timeout=BOOT_TIMEOUT)
        stderr = boot.stderr.read()
    finally:
        boot.kill()
        boot.wait()
        boot.stdout.close()
        boot.stderr.close()
    assert leftovers(guest) == ([], [])
    # From minivm's first line on, a Ctrl-C is 130 and one line at most, never a traceback.
    # Before that line, while the interpreter itself starts, CPython answers by itself: it dies
    # of SIGINT (a shell says 130 too), or reports a fatal error of its own start-up (`site`,
    # runpy, the standard streams, the import system finding minivm), with a traceback whose
    # innermost frame is the interpreter's own, never a line of minivm or of what it imports.
    if "Traceback" in stderr:
        innermost = re.findall(r'File "([^"]+)"', stderr)[-1]
        assert innermost.startswith(("<frozen ", sysconfig.get_paths()["stdlib"])), stderr
    else:
        assert status in (130, -signal.SIGINT) and stderr.count("\n") <= 1, stderr


def test_a_guest_kernel_panic_is_minivms_failure(guest):
    result = minivm(guest, "hello", "sh", "-c", "echo c > /proc/sysrq-trigger")   # crash it
    assert result.returncode == 125
    assert result.stderr == "minivm: the guest kernel panicked: " \
                            "Kernel panic - not syncing: sysrq triggered crash\n"
    assert leftovers(guest) == ([], [])


def test_memory_and_cpus_are_what_the_guest_sees(guest):
    result = minivm(guest, "--memory", "256M", "--cpus", "2", "hello",
                    "sh", "-c", "grep MemTotal /proc/meminfo; nproc")
    assert result.returncode == 0, result.stderr
    memtotal_kib = int(re.search(r"MemTotal:\s+(\d+) kB", result.stdout).group(1))
    # The kernel keeps some RAM for itself, so the guest sees a little less than it was given.
    assert 192 * 1024 < memtotal_kib <= 256 * 1024
    assert result.stdout.splitlines()[-1] == "2"


def test_a_hanging_guest_is_stopped_by_timeout_and_nothing_is_left(guest):
    result = minivm(guest, "--timeout", "5", "hello", "sleep", "100000")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "--timeout" in result.stderr, result.stderr
    assert result.stdout == ""
    assert leftovers(guest) == ([], [])


def test_ctrl_c_stops_the_vm_and_nothing_is_left(guest):
    boot = minivm(guest, "hello", "sh", "-c", "echo ready; exec sleep 100000",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert boot.stdout.readline() == "ready\n"
        qemus, _ = leftovers(guest)
        assert len(qemus) == 1                   # the test can see the VM it is about to stop
        boot.send_signal(signal.SIGINT)
        assert boot.wait(timeout=BOOT_TIMEOUT) == 128 + signal.SIGINT
        assert "SIGINT" in boot.stderr.read()
    finally:
        boot.kill()
        boot.wait()
        boot.stdout.close()
        boot.stderr.close()
    assert leftovers(guest) == ([], [])


def test_qemu_does_not_outlive_a_killed_minivm(guest):
    boot = minivm(guest, "hello", "sh", "-c", "echo ready; exec sleep 100000",
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert boot.stdout.readline() == "ready\n"
        boot.kill()                              # SIGKILL: minivm gets no chance to clean up
        boot.wait()
    finally:
        boot.kill()
        boot.wait()
        boot.stdout.close()
    wait_for_qemu_to_end(guest)                 # the kernel kills QEMU (PR_SET_PDEATHSIG)
    assert leftovers(guest)[0] == []


def test_interactive_shell_on_the_serial_line_and_the_terminal_is_restored(guest):
    """`minivm boot -it hello sh` on a pseudo-terminal, typed into like a person would."""
    home, env = guest
    controller, terminal = os.openpty()
    before = termios.tcgetattr(terminal)
    boot = subprocess.Popen([sys.executable, "-m", "minivm", "boot", "-it", "hello", "sh"],
                            env={**env, "TERM": "vt220"}, stdin=terminal, stdout=terminal,
                            stderr=terminal)
    try:
        screen = read_until(controller, b"# ")                 # the guest shell's prompt
        os.write(controller, b"echo $((6 * 7)) on $(hostname) with $TERM e''nd; exit 4\r")
        screen += read_until(controller, b"end")               # `end` only in the output
        assert boot.wait(timeout=BOOT_TIMEOUT) == 4
        assert termios.tcgetattr(terminal) == before
    finally:
        boot.kill()
        boot.wait()
        os.close(controller)
        os.close(terminal)
    assert b"42 on hello with vt220 end" in screen        # the host's TERM, as minirun -t
    assert leftovers(guest) == ([], [])


def test_interactive_with_stdout_redirected_takes_the_size_of_stdins_terminal(guest):
    """`minivm boot -it hello sh > log`: typed on a terminal, written to a file or a pipe."""
    home, env = guest
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    boot = subprocess.Popen([sys.executable, "-m", "minivm", "boot", "-it", "hello", "sh"],
                            env=env, stdin=terminal, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        output = read_until(boot.stdout.fileno(), b"# ")
        os.write(controller, b"stty size; echo e''nd\r")         # `end` only in the output
        output += read_until(boot.stdout.fileno(), b"end\r\n")
        os.write(controller, b"exit 5\r")
        assert boot.wait(timeout=BOOT_TIMEOUT) == 5
    finally:
        boot.kill()
        boot.wait()
        boot.stdout.close()
        boot.stderr.close()
        os.close(controller)
        os.close(terminal)
    assert b"33 101" in output
    assert leftovers(guest) == ([], [])


def test_interactive_without_a_terminal_is_one_line(guest):
    result = minivm(guest, "-it", "hello", "sh")          # stdin is not a terminal here
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "terminal" in result.stderr, result.stderr


def read_until(fd: int, wanted: bytes) -> bytes:
    """What a terminal shows until `wanted` appears; fails if the other side goes away first."""
    seen = b""
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], BOOT_TIMEOUT)
        assert ready, f"nothing more on the terminal; so far: {seen!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"the other side closed; so far: {seen!r}"
        seen += chunk
    return seen


def test_the_same_app_from_the_same_image_as_container_and_as_vm(guest, minirun, minirun_env):
    """The mission in one test: a container runs on the host's kernel, a VM on its own."""
    container = minirun("run", "hello")
    vm = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), "hello")   # one store
    assert container.returncode == 0 and vm.returncode == 0, vm.stderr

    def report(output: str) -> dict:
        return dict(line.strip().split(":", 1) for line in output.splitlines()[1:])
    assert report(container.stdout).keys() == report(vm.stdout).keys()        # the same app ran
    assert report(container.stdout)["kernel"].strip() == os.uname().release  # the host's kernel
    assert report(vm.stdout)["kernel"].strip() != os.uname().release         # a kernel of its own


@pytest.fixture
def image_as_nobody(store_root):
    """`id-as-nobody`: hello's layers, with `User: nobody` and `id` as the command."""
    from minirun.image import ImageConfig, Store
    store = Store(store_root)
    hello = store.get("hello")
    config = ImageConfig(cmd=["id"], env=hello.config.env, user="nobody")
    store.save_image("id-as-nobody", [layer.name for layer in hello.layers], config)
    return "id-as-nobody"


@pytest.mark.parametrize("user_flag", [[], ["-u", "1234:5678"]])
def test_the_app_runs_as_the_same_user_as_in_a_container(guest, minirun, minirun_env,
                                                         image_as_nobody, user_flag):
    # The image's User (or -u) in the guest: resolved on the host by the image's own
    # /etc/passwd, switched to by minivm/become.c; the output is the container's, to the letter.
    container = minirun("run", *user_flag, image_as_nobody)
    vm = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), *user_flag, image_as_nobody)
    assert vm.returncode == 0, vm.stderr
    assert vm.stdout == container.stdout
    assert vm.stdout.startswith("uid=65534(nobody)" if not user_flag else "uid=1234 gid=5678")
    assert leftovers(guest) == ([], [])


def test_an_unknown_user_is_one_line_before_any_boot(guest, minirun_env, image_as_nobody):
    result = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), "-u", "ghost", image_as_nobody)
    assert result.returncode == 125
    assert result.stderr == ("minivm: no user 'ghost' in the image's /etc/passwd: give a numeric "
                             "UID, or a user the image has\n")
    assert leftovers(guest) == ([], [])
