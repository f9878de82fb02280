#!/usr/bin/env python3
"""What the container's network costs: to start, and per byte and per round trip.

    PYTHONPATH=$PWD .venv/bin/python tests/bench/network.py [--runs 30] [--megabytes 64]

1. Start: `minirun run hello /bin/true` with the default bridge beside `--network none` and runc
   (its default spec: a network namespace with only lo), interleaved run by run so a busy moment
   hits all alike. The bridged run pays for an address lease, a network namespace made by the
   runtime, pyroute2's message classes and five rtnetlink requests, and the veth's removal.
2. Traffic: one echo server, busybox `nc -ll -e cat`, reached from the host
     loopback     the server on the host itself, at 127.0.0.1 (the floor: no device at all)
     bridge       the server in a container, at its address: host -> minirun0 -> veth -> eth0
     -p           the same container through its published port on 127.0.0.1: the runtime's
                  userland proxy (ports.py) relays each byte between two sockets
     vm bridge    the server in a minivm guest, at its address: bridge -> tap -> QEMU ->
                  virtio-net -> the guest's kernel (TCG here: a software CPU); --no-vm skips it
     vm -p        the same guest through minivm's published port on 127.0.0.1
     vm user      a second guest on QEMU's user-mode network (--network user, what a VM gets
                  without root), through its -p on 127.0.0.1: a hostfwd rule, QEMU's own
                  listening socket and TCP/IP stack (slirp) -> virtio-net -> the guest's kernel
   Round trip: the median of 2000 one-byte echoes on one connection. Throughput: MEGABYTES sent
   and echoed back on one connection. Each as a ratio to loopback.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import runc_bundle        # noqa: E402  (the same runc bundle as startup.py)

# The echo server and its client are minicompare's, whose network row is this table's -p rows.
from minivm.compare import connect, echo_server, free_ports, throughput_mb_s    # noqa: E402

MINIRUN = [sys.executable, "-m", "minirun"]
ECHO = echo_server(7)


def start_times(runs: int, workdir: Path) -> dict[str, list[float]]:
    from minirun.image import Store
    rootfs = workdir / "rootfs"
    shutil.copytree(Store().get("hello").layers[0], rootfs, symlinks=True)
    for mountpoint in ("dev/pts", "dev/shm", "dev/mqueue", "sys/fs/cgroup"):
        (rootfs / mountpoint).mkdir(parents=True, exist_ok=True)
    commands = {"minirun bridge": [*MINIRUN, "run", "hello", "/bin/true"],
                "minirun none": [*MINIRUN, "run", "--network", "none", "hello", "/bin/true"]}
    bundle = runc_bundle(rootfs, workdir)
    if bundle:
        commands["runc"] = ["runc", "run", "--bundle", str(bundle), "minirun-bench-net"]
    times = {name: [] for name in commands}
    for _ in range(3):
        for command in commands.values():
            subprocess.run(command, check=True)
    for _ in range(runs):
        for name, command in commands.items():
            began = time.perf_counter()
            subprocess.run(command, check=True)
            times[name].append(1000 * (time.perf_counter() - began))
    return times


def round_trip_us(address) -> float:
    samples = []
    with connect(address) as sock:
        for _ in range(2000):
            began = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            samples.append(1e6 * (time.perf_counter() - began))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--no-vm", action="store_true", help="leave the VM paths out")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("network.py: run as root")
    workdir = Path(tempfile.mkdtemp(prefix="minirun-bench-"))
    servers = []
    try:
        times = start_times(args.runs, workdir)
        print(f"\nstart: {args.runs} runs each of /bin/true, interleaved; milliseconds")
        none = statistics.median(times["minirun none"])
        print(f"{'command':<16}{'median':>8}{'p10':>8}{'p90':>8}{'vs none':>9}")
        for name, samples in times.items():
            deciles = statistics.quantiles(samples, n=10)
            median = statistics.median(samples)
            print(f"{name:<16}{median:>8.1f}{deciles[0]:>8.1f}{deciles[-1]:>8.1f}"
                  f"{median / none:>8.2f}x")

        loopback_port, published, vm_published, vm_user_published = free_ports(4)
        servers.append(subprocess.Popen(["sh", "-c", echo_server(loopback_port)]))
        container = subprocess.Popen(
            [*MINIRUN, "run", "--init", "-p", f"127.0.0.1:{published}:7", "hello", "sh", "-c",
             f"ip -o -4 addr show eth0; {ECHO}"], stdout=subprocess.PIPE, text=True)
        servers.append(container)
        address = container.stdout.readline().split()[3].split("/")[0]
        paths = {"loopback": ("127.0.0.1", loopback_port), "bridge": (address, 7),
                 "-p": ("127.0.0.1", published)}
        if not args.no_vm:
            vm = subprocess.Popen(
                [sys.executable, "-m", "minivm", "boot", "-p", f"127.0.0.1:{vm_published}:7",
                 "hello", "sh", "-c", f"ip -o -4 addr show eth0; {ECHO}"],
                stdout=subprocess.PIPE, text=True)
            servers.append(vm)
            paths["vm bridge"] = (vm.stdout.readline().split()[3].split("/")[0], 7)
            paths["vm -p"] = ("127.0.0.1", vm_published)
            user = subprocess.Popen(
                [sys.executable, "-m", "minivm", "boot", "--network", "user",
                 "-p", f"127.0.0.1:{vm_user_published}:7", "hello", "sh", "-c",
                 f"echo up; {ECHO}"],
                stdout=subprocess.PIPE, text=True)
            servers.append(user)
            user.stdout.readline()
            paths["vm user"] = ("127.0.0.1", vm_user_published)
        results = {name: (round_trip_us(where), throughput_mb_s(where, args.megabytes))
                   for name, where in paths.items()}
        base_rtt, base_mb = results["loopback"]
        print(f"\ntraffic: host -> echo server; {args.megabytes} MB echoed; 2000 1-byte round trips")
        print(f"{'path':<10}{'RTT us':>9}{'vs lo':>8}{'MB/s':>9}{'vs lo':>8}")
        for name, (rtt, mb) in results.items():
            print(f"{name:<10}{rtt:>9.1f}{rtt / base_rtt:>7.2f}x{mb:>9.0f}{mb / base_mb:>7.2f}x")
    finally:
        for server in servers:
            server.send_signal(2)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(workdir)
        for parent in Path("/sys/fs/cgroup").glob("*/minirun-bench"):
            try:
                parent.rmdir()
            except OSError:
                pass


if __name__ == "__main__":
    main()
