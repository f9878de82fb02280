"""minivm's user-mode network (QEMU's slirp): the guest's card where no tap can be (issue 12).

Traffic stays on this machine: the host reaches the guest through a hostfwd rule on its own
addresses, and the guest reaches a server of this test's own on the host's 127.0.0.1 through
10.0.2.2, which QEMU maps to the host's loopback. Nothing is sent anywhere else (no name is
looked up: the guest's DNS relay would ask the host's nameservers).
Each test counts what a network adds to the host (taps, veths, addresses, rules, listeners,
leases) before and after: user mode adds nothing but QEMU's own listening sockets.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import BOOT_TIMEOUT, HTTPD, LEASES, fetch, free_port, leftovers, minivm, \
    network_state, read_line, wait_for_qemu_to_end
from image_helpers import build_static
from minirun.network import BRIDGE, CHAIN
from minivm.hardware import USER_GUEST, USER_HOST

UDP_ECHO = Path(__file__).parent / "programs" / "udp_echo.c"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
HOSTNAME = "uservm"


def host_network(port: int) -> dict:
    """What a network adds to the host (conftest.network_state), as far as this test's VM could
    add it: other tests on this machine start containers and VMs meanwhile, whose veths, taps and
    leases come and go, and make and remove the bridge and its nat chain. A lease of this test's
    VM would bear its name; that it holds no tap is checked on the running QEMU
    (qemu_holds_a_tap); any nat rule but the bridge's still counts."""
    state = network_state([port])
    del state["veths"], state["taps"], state["bridge"]
    state["leases"] = [lease for lease in state["leases"] if _lease_names(lease, HOSTNAME)]
    state["nat rules"] = [rule for rule in state["nat rules"] if CHAIN not in rule]
    return state


def _lease_names(lease: str, hostname: str) -> bool:
    try:
        return hostname in (LEASES / lease).read_text()
    except OSError:             # released while we looked
        return False


def qemu_holds_a_tap(guest) -> bool:
    """Whether a QEMU booted from this environment has /dev/net/tun open: a tap's host end."""
    return any(os.readlink(fd) == "/dev/net/tun"
               for pid in leftovers(guest)[0] for fd in Path(f"/proc/{pid}/fd").iterdir())


@pytest.fixture(scope="module")
def nobody_guest(guest):
    """A boot as a local user would make it: minivm runs as `nobody`, with a store, a cache and
    a TMPDIR of its own, in a directory every user may pass through (pytest's tmp_path is
    root's and 0700); the guest kernel and its modules linked by their real paths."""
    home, env = guest
    top = Path(tempfile.mkdtemp(prefix="minivm-user-network-", dir="/tmp"))
    try:
        top.chmod(0o755)
        for directory in ("store", "cache/kernels", "tmp"):
            (top / directory).mkdir(parents=True)
        modules = next((home / "cache" / "kernels").iterdir())
        (top / "cache" / "kernels" / modules.name).symlink_to(modules.resolve())
        (top / "vmlinux").symlink_to((home / "vmlinux").resolve())
        subprocess.run(["chown", "-R", "65534:65534", top / "store", top / "cache", top / "tmp"],
                       check=True)
        yield top, {**env, "MINIRUN_ROOT": str(top / "store"), "MINIVM_CACHE": str(top / "cache"),
                    "MINIVM_KERNEL": str(top / "vmlinux"), "TMPDIR": str(top / "tmp"),
                    "HOME": str(top)}
    finally:
        shutil.rmtree(top)


def minivm_as_nobody(nobody_guest, *args, **popen):
    _, env = nobody_guest
    command = [*NOBODY, sys.executable, "-m", "minivm", "boot", *args]
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=BOOT_TIMEOUT)


@pytest.fixture
def host_server():
    """An HTTP server of the test's own on the host's 127.0.0.1: its port, and who connected."""
    clients = []

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            clients.append(self.client_address[0])
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], clients
    server.shutdown()
    server.server_close()


def qemu_owners(guest) -> list[int]:
    """The real user IDs of the QEMU processes booted from this environment."""
    return [int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
            for pid in leftovers(guest)[0]]


@pytest.mark.vm
def test_a_vm_without_root_gets_user_mode_its_port_answers_and_it_reaches_the_host(
        nobody_guest, host_server):
    server_port, clients = host_server
    port = free_port()
    before = host_network(port)
    app = f"wget -qO- http://{USER_HOST}:{server_port}/ && {HTTPD}"
    vm = minivm_as_nobody(nobody_guest, "--explain", "--hostname", HOSTNAME,
                          "-p", f"127.0.0.1:{port}:80", "hello", "sh", "-c", app,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # the guest -> 10.0.2.2 -> QEMU connects from the host's loopback to the test's server
        assert read_line(vm, timeout=BOOT_TIMEOUT) == "hello from the host\n"
        assert clients == ["127.0.0.1"]
        # the host -> 127.0.0.1:port, where QEMU listens (hostfwd) -> the guest's httpd
        assert fetch(f"http://127.0.0.1:{port}/", timeout=60) == "hello from uservm\n"
        assert qemu_owners(nobody_guest) == [65534]         # no root anywhere on the path
        assert not qemu_holds_a_tap(nobody_guest)
        during = host_network(port)
        assert len(during["listeners"]) == 1 and f"127.0.0.1:{port} " in during["listeners"][0]
        assert {**during, "listeners": []} == {**before, "listeners": []}   # no tap, no lease...
    finally:
        vm.send_signal(signal.SIGINT)               # Ctrl-C: minivm stops the VM in order
        _, explained = vm.communicate(timeout=120)
    assert vm.returncode == 130, explained
    assert "network      user mode: QEMU's own TCP/IP stack (slirp) in the QEMU process, " \
           "because minivm is not root" in explained
    assert f"-netdev user,id=net0,net=10.0.2.0/24,host={USER_HOST},dns=10.0.2.3,ipv6=off," \
           f"restrict=off,hostfwd=tcp:127.0.0.1:{port}-{USER_GUEST}:80 -device " \
           "virtio-net-device,netdev=net0\n" in explained
    assert "containers cannot reach it" in explained
    assert host_network(port) == before
    assert leftovers(nobody_guest) == ([], [])


@pytest.mark.vm
def test_network_user_as_root_publishes_on_every_address_and_goes_with_a_killed_minivm(guest):
    port = free_port()
    before = host_network(port)
    vm = minivm(guest, "--explain", "--network", "user", "--hostname", HOSTNAME,
                "-p", f"{port}:80", "hello", "sh", "-c", f"echo up && {HTTPD}",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line(vm, timeout=BOOT_TIMEOUT) == "up\n"      # the guest runs: httpd starts
        assert fetch(f"http://127.0.0.1:{port}/", timeout=60) == "hello from uservm\n"
        # -p PORT:80 binds every address, as the bridge's proxy does (minirun/ports.py)
        assert [line.split()[4] for line in host_network(port)["listeners"]] == \
            [f"0.0.0.0:{port}"]
        for line in subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True,
                                   text=True).stdout.splitlines():
            own = line.split()[3].split("/")[0]         # the host's own: traffic stays here
            assert fetch(f"http://{own}:{port}/") == "hello from uservm\n", own
        assert qemu_owners(guest) == [0] and not qemu_holds_a_tap(guest)
    finally:
        vm.kill()               # SIGKILL: minivm cleans nothing; QEMU and its listener go alone
        vm.wait()
        vm.stdout.close()
        explained = vm.stderr.read()
        vm.stderr.close()
    assert "network      user mode: QEMU's own TCP/IP stack (slirp) in the QEMU process, " \
           "as --network user asks" in explained
    assert f",hostfwd=tcp:0.0.0.0:{port}-{USER_GUEST}:80 " in explained
    wait_for_qemu_to_end(guest)
    assert leftovers(guest)[0] == []
    assert host_network(port) == before


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def udp_exchange(address: tuple, message: bytes, timeout: float = 60.0) -> bytes:
    """Send `message` to `address` until an answer comes: UDP has no retransmission of its own,
    and a datagram lost on the way is lost, so the sender retries, as UDP clients do (dig)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect(address)       # a connected UDP socket: an ICMP "port unreachable" is
        tries = int(timeout)        # ECONNREFUSED on the next recv
        for _ in range(tries):
            sock.send(message)
            try:
                return sock.recv(4096)
            except TimeoutError:
                pass
    raise AssertionError(f"no answer from {address} in {tries} tries")


@pytest.mark.vm
def test_a_published_udp_port_answers_through_qemu_on_loopback_only(guest, tmp_path):
    """-p 127.0.0.1:PORT:PORT/udp is a udp hostfwd: QEMU binds a UDP socket on 127.0.0.1 and
    relays each datagram to the guest (from 10.0.2.2, the gateway: QEMU's own address on the
    guest's network) and the guest's answer back to the sender."""
    build_static(UDP_ECHO, tmp_path)
    port = free_udp_port()
    before = host_network(port)
    vm = minivm(guest, "--explain", "--network", "user", "--hostname", HOSTNAME,
                "-v", f"{tmp_path}:/probe:ro", "-p", f"127.0.0.1:{port}:{port}/udp",
                "hello", "/probe/udp_echo", str(port),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line(vm, timeout=BOOT_TIMEOUT) == "listening\n"
        assert udp_exchange(("127.0.0.1", port), b"ping") == \
            f"echo to {USER_HOST}: ping".encode()
        # QEMU's socket is bound to 127.0.0.1 alone: the host's other addresses have nothing
        # on that port, and their kernel answers "port unreachable".
        during = host_network(port)
        assert [line.split()[:1] + line.split()[4:5] for line in during["listeners"]] == \
            [["udp", f"127.0.0.1:{port}"]]
        for line in subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True,
                                   text=True).stdout.splitlines():
            device, own = line.split()[1], line.split()[3].split("/")[0]
            if device not in ("lo", BRIDGE):    # (the bridge comes and goes with other tests)
                with pytest.raises(ConnectionRefusedError):
                    udp_exchange((own, port), b"ping")
        assert not qemu_holds_a_tap(guest)
    finally:
        vm.send_signal(signal.SIGINT)               # Ctrl-C: minivm stops the VM in order
        _, explained = vm.communicate(timeout=120)
    assert vm.returncode == 130, explained
    assert f",hostfwd=udp:127.0.0.1:{port}-{USER_GUEST}:{port} " in explained
    assert host_network(port) == before
    assert leftovers(guest) == ([], [])


def test_bad_user_mode_flags_are_one_line_and_boot_nothing(guest, nobody_guest):
    port = free_port()
    before = host_network(port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = minivm(guest, "--network", "user", "--hostname", HOSTNAME,
                        "-p", f"127.0.0.1:{port}:80", "hello", "true")
    assert (result.returncode, result.stderr) == (
        125, f"minivm: cannot publish 127.0.0.1:{port}->80/tcp: Address already in use (choose "
             "another host port, or stop what uses it)\n")
    result = minivm(guest, "--network", "user", "--hostname", HOSTNAME,
                    "-p", f"[::1]:{port}:80", "hello", "true")
    assert (result.returncode, result.stderr) == (
        125, f"minivm: -p ::1:{port}->80/tcp: QEMU's user-mode network publishes on IPv4 "
             "addresses only: give one, as in -p 127.0.0.1:8080:80\n")
    result = minivm_as_nobody(nobody_guest, "--network", "bridge", "hello", "true")
    assert (result.returncode, result.stderr) == (
        125, "minivm: --network bridge needs root (a tap device on minirun's bridge): run "
             "minivm with sudo, or use --network user\n")
    result = minivm_as_nobody(nobody_guest, "--network", "none", "-p", "8080:80", "hello", "true")
    assert result.returncode == 125 and result.stderr.startswith("minivm: -p publishes a port")
    assert host_network(port) == before
    assert leftovers(guest) == ([], []) and leftovers(nobody_guest) == ([], [])
