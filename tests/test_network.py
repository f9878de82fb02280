"""Networking with real traffic: the bridge, veth pairs, masquerade, -p, names (issue 12).

Traffic goes only to loopback and to namespaces this test or minirun made: the "outside" host of
the masquerade test is a network namespace of the test's own, on a documentation range.
Every test counts what the network adds (veths, host addresses, nat rules, listeners, leases)
before and after.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (HTTPD, fetch, free_port, network_state, read_line, released_together,
                      unheld_leases)
from minirun import network


@pytest.fixture
def bridge(minirun):
    """The bridge made (by one run) before the test counts, so its own rules count as before."""
    assert minirun("run", "hello", "true").returncode == 0


@pytest.fixture
def nothing_left(bridge):
    ports = [free_port(), free_port()]
    before = network_state(ports)
    yield ports
    assert network_state(ports) == before
    assert unheld_leases() == []


def stop(process) -> None:
    """Ctrl-C to the runtime, which passes it on; with --init the server ends."""
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 130


def test_published_port_answers_the_host_and_a_container_by_name(minirun, start_minirun,
                                                                 nothing_left):
    port, _ = nothing_left
    web = start_minirun("run", "--init", "--name", "web", "--hostname", "web",
                        "-p", f"127.0.0.1:{port}:80", "hello", "sh", "-c", HTTPD)
    try:
        assert fetch(f"http://127.0.0.1:{port}/") == "hello from web\n"
        # another container, by the first one's name (its /etc/hosts lists the running ones)
        other = minirun("run", "hello", "wget", "-qO-", "http://web/")
        assert other.returncode == 0, other.stderr
        assert other.stdout == "hello from web\n"
    finally:
        stop(web)


def test_published_port_on_all_addresses_answers_the_hosts_addresses(minirun, start_minirun,
                                                                     nothing_left):
    port, _ = nothing_left
    web = start_minirun("run", "--init", "-p", f"{port}:80", "hello", "sh", "-c", HTTPD)
    try:
        assert fetch(f"http://127.0.0.1:{port}/").startswith("hello from")
        for line in subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True,
                                   text=True).stdout.splitlines():
            own = line.split()[3].split("/")[0]
            assert fetch(f"http://{own}:{port}/").startswith("hello from"), own
        # from another namespace: a container, through the host's address on the bridge
        other = minirun("run", "hello", "wget", "-qO-", f"http://{network.GATEWAY}:{port}/")
        assert other.returncode == 0 and other.stdout.startswith("hello from"), other.stderr
    finally:
        stop(web)


# Each run waits at a barrier just before it takes its address, so all 20 take one together;
# and reading the leases is made slow (50 ms), to widen the window between "which addresses are
# taken?" and "take this one" that two runs would both pass through without the lock.
AT_A_BARRIER = """
import os, sys, time
from minirun import cli, network
ready, go, attach, leases = int(sys.argv[1]), int(sys.argv[2]), network.attach, network._leases
def attach_with_the_others(*args):
    os.write(ready, b".")
    os.read(go, 1)
    return attach(*args)
def slow_leases(directory):
    found = leases(directory)
    time.sleep(0.05)
    return found
network.attach, network._leases = attach_with_the_others, slow_leases
sys.argv = ["minirun", *sys.argv[3:]]
cli.main()
"""


def test_twenty_containers_started_at_once_get_twenty_addresses(minirun_env, nothing_left):
    command = ["run", "hello", "sh", "-c", "ip -o -4 addr show eth0; cat >/dev/null"]
    with released_together(minirun_env, AT_A_BARRIER, command) as runs:
        addresses = [read_line(run, timeout=120).split()[3] for run in runs]
        for run in runs:
            run.stdin.close()
            assert run.wait(timeout=60) == 0
    assert len(set(addresses)) == 20, addresses
    assert all(address.startswith("172.30.") for address in addresses)


def test_network_none_has_only_loopback(minirun, nothing_left):
    result = minirun("run", "--network", "none", "hello", "ip", "-o", "link")
    assert result.returncode == 0
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["lo:"]
    assert "state UNKNOWN" in result.stdout or "UP" in result.stdout


def test_network_host_shares_the_hosts_devices(minirun, nothing_left):
    result = minirun("run", "--network", "host", "hello", "ip", "-o", "link")
    assert f"{network.BRIDGE}:" in result.stdout


def test_etc_files_are_the_containers_and_the_image_is_unchanged(minirun, store_root, nothing_left):
    result = minirun("run", "--hostname", "box", "--add-host", "db:192.0.2.9", "hello", "sh",
                     "-c", "cat /etc/hostname /etc/hosts /etc/resolv.conf; ping -c1 -W5 localhost")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "box"
    assert "127.0.0.1\tlocalhost" in lines and "192.0.2.9\tdb" in lines
    assert any(re.match(r"172\.30\.\d+\.\d+\tbox\b", line) for line in lines)
    assert not any(re.match(r"nameserver (127\.|::1)", line) for line in lines)
    layers = Path(store_root) / "layers"
    assert not any((layer / "etc/hostname").exists() for layer in layers.iterdir())


def test_resolv_conf_leaves_out_loopback_nameservers(tmp_path):
    from minirun import hosts
    source = tmp_path / "resolv.conf"
    source.write_text("nameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\nsearch x\n")
    text = hosts.resolv_conf(False, source)
    assert "nameserver 192.0.2.53" in text and "search x" in text
    assert "nameserver 127.0.0.53" not in text and "nameserver ::1" not in text
    assert hosts.resolv_conf(True, source) == source.read_text()


@pytest.fixture
def outside(bridge):
    """A test-made "outside" host: a network namespace behind a veth pair, on 198.51.100.0/24
    (TEST-NET-2). It has no route back to the containers' subnet: only a masqueraded packet,
    whose source is the host's 198.51.100.1, can be answered. The namespace is held by a
    sleeping process, not named with `ip netns add`, which would leave a mount on /run/netns."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "300"])
    device = f"mrtest{os.getpid()}"
    inside = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
    try:
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            time.sleep(0.01)                            # until unshare has made it
        for command in [
                ["ip", "link", "add", device, "type", "veth", "peer", "name", "eth0",
                 "netns", str(holder.pid)],
                ["ip", "addr", "add", "198.51.100.1/24", "dev", device],
                ["ip", "link", "set", device, "up"],
                # the replies come back in on this device: it must forward (ours, not the host's)
                ["sysctl", "-qw", f"net.ipv4.conf.{device}.forwarding=1"],
                [*inside, "ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"],
                [*inside, "ip", "link", "set", "eth0", "up"]]:
            subprocess.run(command, check=True)
        yield inside
    finally:
        subprocess.run(["ip", "link", "del", device], capture_output=True)
        holder.kill()
        holder.wait()


# The outside host's server: accept one connection, print who it came from and what it said.
ONE_CONNECTION = """
import socket
server = socket.create_server(("198.51.100.2", 7001))
print("listening", flush=True)
client, (peer, _) = server.accept()
print(peer, client.makefile().read(), flush=True)
"""


def test_a_container_reaches_an_outside_namespace_through_masquerade(minirun, outside,
                                                                     nothing_left):
    server = subprocess.Popen([*outside, sys.executable, "-c", ONE_CONNECTION],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(server) == "listening\n"
        result = minirun("run", "hello", "sh", "-c",
                         "echo from $(ip -o -4 addr show eth0 | awk '{print $4}') | "
                         "nc -w 5 198.51.100.2 7001")
        assert result.returncode == 0, result.stderr
        assert server.wait(timeout=20) == 0
        # sent from the container's own address, seen coming from the host's: masqueraded
        assert re.fullmatch(r"198\.51\.100\.1 from 172\.30\.\d+\.\d+/16\n\n", server.stdout.read())
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("collector", [["gc"], ["run", "--network", "none", "hello", "true"]])
def test_runtime_killed_then_gc_leaves_nothing(minirun, start_minirun, bridge, collector):
    """After a SIGKILL of the runtime, `minirun gc` or the next run's cleanup pass."""
    port = free_port()
    before = network_state([port])
    process = start_minirun("run", "-p", f"127.0.0.1:{port}:80", "hello", "sh", "-c",
                            "ip -o -4 addr show eth0; sleep 60")
    address = read_line(process).split()[3].split("/")[0]
    assert address in network_state()["leases"]
    assert fetch_refused_or_reset(port)             # listening, nothing behind it yet
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    # The listener went with the process; the veth goes with the namespace once PID 1 has died
    # of its parent-death signal (the kernel's cleanup of a namespace is deferred a little).
    deadline = time.monotonic() + 10
    while network_state()["veths"] != before["veths"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert minirun(*collector).returncode == 0
    after = network_state([port])
    assert address not in after["leases"]
    if after["leases"] or collector != ["gc"]:  # the bridge stays for others, or for a next run                 # someone else's container: the bridge stays for it
        assert after == before
    else:                               # the last lease gone, gc takes the bridge down too
        assert after == {**before, "bridge": False, "nat rules": [
            rule for rule in before["nat rules"] if network.CHAIN not in rule]}


def fetch_refused_or_reset(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def test_failures_leave_nothing(minirun, nothing_left):
    port, _ = nothing_left
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = minirun("run", "-p", f"127.0.0.1:{port}:80", "hello", "true")
        assert result.returncode == 125
        assert result.stderr.startswith(f"minirun: cannot publish 127.0.0.1:{port}->80/tcp")
    assert minirun("run", "hello", "no-such-command").returncode == 127
    assert minirun("run", "-w", "/etc/passwd", "hello", "true").returncode == 125


@pytest.mark.parametrize("flags, message", [
    (["--network", "nat"], "unknown network 'nat'"),
    (["-p", "80"], "invalid port '80'"),
    (["-p", "1:70000"], "invalid port '1:70000'"),
    (["-p", "80:80/sctp"], "invalid port '80:80/sctp'"),
    (["--network", "none", "-p", "8080:80"], "-p publishes a port"),
    (["--add-host", "db"], "invalid --add-host 'db'"),
])
def test_bad_network_flags(minirun, flags, message):
    result = minirun("run", *flags, "hello", "true")
    assert result.returncode == 125 and result.stderr.startswith(f"minirun: {message}")


def test_network_none_and_ps_do_not_import_pyroute2(minirun_env):
    probe = ("import sys; sys.argv = ['minirun', *sys.argv[1:]]\n"
             "from minirun import cli\n"
             "try: cli.cli.main(standalone_mode=False)\n"
             "finally: print('pyroute2' in ' '.join(sys.modules), file=sys.stderr)")
    for args in (["run", "--network", "none", "hello", "true"], ["ps"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], env=minirun_env,
                                capture_output=True, text=True)
        assert result.stderr.strip().splitlines()[-1] == "False", (args, result.stderr)


@pytest.mark.vm
def test_loopback_is_up_in_a_vm_guest(guest):
    from conftest import minivm
    result = minivm(guest, "hello", "ping", "-c", "1", "-W", "5", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert " 0% packet loss" in result.stdout


@pytest.mark.vm
def test_a_vm_on_the_bridge_answers_the_host_through_p_and_a_container_by_name(
        guest, minirun, nothing_left):
    from conftest import minivm
    port, _ = nothing_left
    vm = minivm(guest, "--hostname", "vmweb", "-p", f"127.0.0.1:{port}:80", "hello", "sh", "-c",
                HTTPD, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert fetch(f"http://127.0.0.1:{port}/", timeout=300) == "hello from vmweb\n"
        # a container started now finds the VM by name, and reaches it over the bridge
        other = minirun("run", "hello", "wget", "-qO-", "http://vmweb/")
        assert other.returncode == 0, other.stderr
        assert other.stdout == "hello from vmweb\n"
    finally:
        vm.send_signal(signal.SIGINT)               # Ctrl-C: minivm stops the VM in order
        vm.wait(timeout=120)
    assert vm.returncode == 130, vm.stderr.read()


@pytest.mark.vm
def test_a_detached_vm_on_the_bridge_is_reached_by_its_name(guest, minirun, nothing_left,
                                                             tmp_path):
    """`minivm boot -d --name vmweb hello ...`: its hostname is the image's (hello), as every VM
    of hello has; containers find it by its --name, as they find a container by its --name."""
    home, env = guest
    env = {**env, "MINIVM_STATE": str(tmp_path / "vms")}

    def minivm(*args):
        return subprocess.run([sys.executable, "-m", "minivm", *args], env=env,
                              capture_output=True, text=True, timeout=600)
    booted = minivm("boot", "-d", "--name", "vmweb", "hello", "sh", "-c", HTTPD)
    assert booted.returncode == 0, booted.stderr
    try:
        # Its /etc/hosts lists the VM by name (else wget would wait on DNS before it fails);
        # boot -d returns once the guest init runs, and httpd may not listen yet.
        other = minirun("run", "--rm", "hello", "sh", "-c", "grep -w vmweb /etc/hosts >&2 && "
                        "for i in $(seq 60); do wget -qO- http://vmweb/ && exit; sleep 1; done",
                        timeout=200)
        assert other.returncode == 0, other.stderr
        assert other.stdout == "hello from hello\n"        # its hostname: the image's name
    finally:
        stopped = minivm("rm", "-f", "vmweb")
    assert stopped.returncode == 0, stopped.stderr


# The runtime's wiring fails after it has made the veth pair, while the child builds its root.
FAILING_WIRE = """
import sys
from minirun import cli, network
from minirun.errors import RuntimeFailure
wire = network.wire
def wire_then_fail(attachment, say):
    wire(attachment, say)
    raise RuntimeFailure("the wiring failed (a test's doing)")
network.wire = wire_then_fail
sys.argv = ["minirun", *sys.argv[1:]]
cli.main()
"""


def test_a_failure_of_the_wiring_ends_the_child_and_leaves_nothing(minirun_env, nothing_left):
    result = subprocess.run([sys.executable, "-c", FAILING_WIRE, "run", "hello", "true"],
                            env=minirun_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr == "minirun: the wiring failed (a test's doing)\n"
