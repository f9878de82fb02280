"""`minicompare`: the same image and command, run as a container and as a VM, measured side by side.

The explainers draw two diagrams and make five claims: containers share the host's kernel, start in
milliseconds, are lighter, are not always faster, and isolate less strongly than VMs. This command
turns each claim into a row of a table and each cell into a figure measured on this machine:

    start       the image's command: time to its first output and to its exit
    memory      what the host pays, at idle and under the workload: the container's cgroup plus
                minirun's own processes; QEMU's process plus minivm's (PSS from smaps_rollup)
    work        one fixed script (hash 64 MB, 200 000 tiny system calls, files in the writable
                layer) run in the container, in the VM and by the bare host with the same busybox
    network     an echo server in the container, in the VM and on the host: the host sends it a
                fixed number of MB through a published port (-p 127.0.0.1:PORT:7), reads them back
    isolation   what the app sees from inside: kernel, processes, devices, mounts, capabilities,
                seccomp, and who had to be root on the host to start it

It drives `minirun run` and `minivm boot` as their user does, as commands, so every figure includes
what a user pays (Python's start included); of their internals it only asks minivm which
accelerator and which kernel it would use (minivm.accel, minivm.kernel). That is also why it is a
third command and not `minirun compare` or `minivm compare`: each of those tools stays about one
architecture, and this one is about the difference. (Its module lives in minivm/, the side that
already depends on the other: minivm reads minirun's image store.)

Runs are interleaved (container, VM, host, container, VM, host...) after warm-ups, so a change in
the machine's load hits every column alike; the host and its load are recorded with the figures.
A figure for the VM is only as good as its accelerator: under TCG every guest instruction is
translated by QEMU in software, so the accelerator is printed beside every VM figure.
"""
import json
import math
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

MIB = 1024 * 1024
NOBODY = 65534
KINDS = ("container", "vm", "host")

# The fixed workload: one busybox script, the same bytes in all three places. Each phase starts
# with a line `@@ NAME`; the host timestamps the lines as they arrive, so every duration is measured
# by the same clock, outside the guest (whose clock, under TCG, is itself emulated). $W is a
# directory in the writable layer: the container's overlay upper dir, the VM's root (the
# initramfs, a tmpfs in guest RAM), or a temporary directory on the host's disk.
WORKLOAD = """
mkdir -p "$W"
echo "@@ idle"; sleep {idle}
echo "@@ cpu"; head -c {cpu_bytes} /dev/zero | sha256sum >/dev/null
echo "@@ syscalls"; dd if=/dev/zero of=/dev/null bs=1 count={syscalls} 2>/dev/null
echo "@@ files"; dd if=/dev/zero of="$W/big" bs=64k count={files_blocks} 2>/dev/null
cat "$W/big" >/dev/null; rm "$W/big"
i=0; while [ $i -lt {small_files} ]; do echo $i >"$W/f$i"; i=$((i+1)); done; rm -f "$W"/f*
echo "@@ end"
"""
PHASES = {      # phase -> (the row's claim, why the three columns differ)
    "cpu": ("CPU-bound: sha256 of {cpu_mb} MB",
            "the same instructions; a container runs them natively, a TCG guest through QEMU's "
            "translator (KVM would run them natively too)"),
    "syscalls": ("syscall-heavy: {syscalls:,} 1-byte read+write",
                 "a container's syscall enters the host kernel (plus its seccomp filter); a guest's "
                 "enters the guest kernel, emulated under TCG"),
    "files": ("file I/O: {files_mb} MB + {small_files} small files",
              "container: the overlay's upper dir on the host's disk (page cache); VM: the "
              "initramfs root, a tmpfs in guest RAM; neither syncs"),
}

# What the app can see and do from inside, one `key=value` a line.
PROBE = r"""
echo "kernel=$(uname -r)"
echo "hostname=$(hostname)"
echo "pid=$$"
echo "processes=$(ls -d /proc/[0-9]* | wc -l)"
echo "kernel threads=$(grep -lE '^PPid:[[:space:]]+2$' /proc/[0-9]*/status 2>/dev/null | wc -l)"
echo "devices=$(ls /dev | wc -l)"
echo "mounts=$(wc -l </proc/mounts)"
echo "capabilities=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
echo "seccomp=$(sed -n 's/^Seccomp:[[:space:]]*//p' /proc/self/status)"
mkdir -p /mnt/probe
if mount -t tmpfs probe /mnt/probe 2>/dev/null; then umount /mnt/probe; echo "root mounts=yes"
else echo "root mounts=refused"; fi
"""
SECCOMP_MODES = {"0": "none", "1": "strict", "2": "filter"}


@dataclass
class Run:
    """One command, timed and watched: its lines with their arrival times, its memory samples."""
    kind: str
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    samples: list[tuple[float, dict]] = field(default_factory=list)   # (time, memory in bytes)
    ended: float = 0.0
    status: int | None = None
    stderr: str = ""

    def first_output(self) -> float:
        return self.lines[0][0] - self.started if self.lines else float("nan")

    def phases(self) -> dict[str, tuple[float, float]]:
        """`@@ NAME` marker -> (when it was printed, when the next phase began)."""
        marks = [(t, line[3:]) for t, line in self.lines if line.startswith("@@ ")]
        return {name: (t, following) for (t, name), (following, _) in zip(marks, marks[1:])}

    def seconds(self, phase: str) -> float:
        begin, end = self.phases()[phase]
        return end - begin

    def memory(self, phase: str | None = None, worst: bool = False) -> dict:
        """The median sample of a phase (or its largest, `worst`), over all phases if None."""
        windows = [self.phases()[phase]] if phase else list(self.phases().values())
        chosen = [m for t, m in self.samples if any(a <= t <= b for a, b in windows)]
        if not chosen:
            return {}
        key = lambda m: m["total"]
        return max(chosen, key=key) if worst else sorted(chosen, key=key)[len(chosen) // 2]


# --- watching a process from the host --------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from the `PPid` of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue                # it ended while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def rss_pss(pid: int) -> tuple[int, int]:
    """Resident and proportional set size of one process, in bytes (proc(5), smaps_rollup).
    PSS divides each shared page among the processes that map it, so PSS adds up across
    processes and RSS does not."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                values[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass                            # gone, or a kernel thread
    return values.get("Rss", 0), values.get("Pss", 0)


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""                       # it ended while we looked


def memory_cgroup(pid: int) -> Path | None:
    """The directory of a process's memory cgroup: v1's `memory` hierarchy where the host has one
    (this host is hybrid), else the v2 unified hierarchy (cgroups(7), /proc/PID/cgroup)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = {controllers: path for _, controllers, path in (l.split(":", 2) for l in lines)}
    for controllers, path in paths.items():
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    if "" in paths and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return Path("/sys/fs/cgroup") / paths[""].lstrip("/")
    return None


def cgroup_bytes(directory: Path) -> int:
    for name in ("memory.usage_in_bytes", "memory.current"):        # v1, v2
        try:
            return int((directory / name).read_text())
        except OSError:
            continue
    return 0


def host_cost(kind: str, pid: int) -> dict:
    """What running it costs the host right now, in bytes.

    A container: the memory its cgroup is charged (its processes, their page cache and kernel
    objects) plus the runtime's own processes outside it (minirun). A VM: QEMU's process (the
    guest's RAM as far as it was touched, QEMU's code, TCG's translation cache) plus minivm.
    """
    processes = descendants(pid)
    cost = {"runtime_pss": 0, "runtime_rss": 0, "inside": 0}
    container_cgroup = None
    for each in processes:
        group = memory_cgroup(each) if kind == "container" else None
        if group is not None and "minirun" in group.parts:
            container_cgroup = group            # a process of the container: its cgroup counts
            continue
        rss, pss = rss_pss(each)
        if command_name(each).startswith("qemu-system"):
            cost["inside"] += pss
            cost["qemu_rss"] = cost.get("qemu_rss", 0) + rss
        else:
            cost["runtime_pss"] += pss
            cost["runtime_rss"] += rss
    if container_cgroup is not None:
        cost["inside"] = cgroup_bytes(container_cgroup)
    cost["total"] = cost["inside"] + cost["runtime_pss"]
    return cost


def watch(kind: str, command: list[str], env: dict, sample_memory: bool, timeout: float) -> Run:
    """Run `command` to its end: each line of its stdout timestamped on arrival (by a thread), and,
    if asked, its cost to the host sampled every 50 ms meanwhile."""
    run = Run(kind, time.monotonic())
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)

    def read_lines():
        for line in process.stdout:
            run.lines.append((time.monotonic(), line.rstrip("\n")))
    reader = threading.Thread(target=read_lines)
    reader.start()
    deadline = run.started + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if sample_memory:
            run.samples.append((time.monotonic(), host_cost(kind, process.pid)))
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()                  # minirun and minivm clean up after a SIGKILL'd parent
    run.status = process.wait()
    run.ended = time.monotonic()
    reader.join()
    run.stderr = process.stderr.read()
    return run


# --- traffic: an echo server and its client (tests/bench/network.py uses them too) -----------------

def echo_server(port: int) -> str:
    """A shell command: busybox's nc answering every connection on `port` with `cat`, which sends
    each byte back (-ll: keep listening after the first one; -e: run cat on the socket)."""
    return f"exec busybox nc -ll -p {port} -e cat"


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports of 127.0.0.1 that nothing listens on now: the kernel's choice
    (bind(2) to port 0), all held at once so that it cannot choose one twice."""
    probes = [socket.socket() for _ in range(count)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


def connect(address: tuple[str, int], timeout: float = 20) -> socket.socket:
    """A connection to an echo server, once it answers: a published port accepts as soon as the
    runtime listens, before the server inside does (the proxy then closes the connection)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(address, timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"x")
            if sock.recv(1) == b"x":            # the echo answers: the server is up
                return sock
            sock.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no echo server at {address}")
        time.sleep(0.1)


def throughput_mb_s(address: tuple[str, int], megabytes: int) -> float:
    """MEGABYTES sent to an echo server and received back on one connection, per second; a
    thread sends while this one reads, so neither side's buffers fill and stall the other."""
    total = megabytes << 20
    chunk = b"\0" * (1 << 16)
    with connect(address) as sock:
        sock.settimeout(60)     # on a busy machine one transfer here once stalled for over 5 s
                                # (TCP's retransmission timeout doubles at each loss): slow, not dead
        def send():
            for _ in range(total // len(chunk)):
                sock.sendall(chunk)
        began = time.perf_counter()
        sender = threading.Thread(target=send)
        sender.start()
        received = 0
        while received < total:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"the echo server at {address} closed after {received} bytes")
            received += len(data)
        sender.join()
        return megabytes / (time.perf_counter() - began)


# --- the three ways to run the same thing ------------------------------------------------------------

@dataclass
class Settings:
    image: str = "hello"
    command: tuple = ()             # the start row's command; () is the image's own
    repeat: int = 3
    warmup: int = 1
    cpu_mb: int = 64
    syscalls: int = 100_000         # dd bs=1: one read and one write each
    files_mb: int = 32
    small_files: int = 500
    idle: float = 1.0
    network_mb: int = 16            # echoed through a published port; 0 leaves the row out
    timeout: float = 300.0


class Runner:
    """Starts the same thing as a container, as a VM, or as a plain process of the host."""

    def __init__(self, settings: Settings, scratch: Path):
        self.settings = settings
        self.scratch = scratch
        self.env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        self.busybox = shutil.which("busybox") or "/bin/busybox"

    def command(self, kind: str, args: list[str], options: tuple = ()) -> list[str]:
        image = self.settings.image
        if kind == "container":
            return [sys.executable, "-m", "minirun", "run", *options, image, *args]
        if kind == "vm":
            return [sys.executable, "-m", "minivm", "boot", *options, image, *args]
        return [self.busybox, *args]    # the host: `busybox sh -c ...` as the image runs it

    def start(self, kind: str) -> Run:
        return watch(kind, self.command(kind, list(self.settings.command)), self.env, False,
                     self.settings.timeout)

    def workload(self, kind: str) -> Run:
        s = self.settings
        script = WORKLOAD.format(idle=s.idle, cpu_bytes=s.cpu_mb * MIB, syscalls=s.syscalls,
                                 files_blocks=s.files_mb * 16, small_files=s.small_files)
        where = str(self.scratch / "host") if kind == "host" else "/scratch"
        run = watch(kind, self.command(kind, ["sh", "-c", f"W={where}\n{script}"]), self.env,
                    kind != "host", s.timeout)
        return checked(run)

    def transfers(self) -> dict[str, list[float]]:
        """MB/s echoed by a server in the container, in the VM and on the host, each reached at
        127.0.0.1: through minirun's and minivm's published port (their proxy, ports.py), and on
        the host's loopback directly. One server each, transfers interleaved round by round."""
        s = self.settings
        ports = dict(zip(KINDS, free_ports(len(KINDS))))
        servers = {}
        try:
            for kind in KINDS:
                servers[kind] = self.serve(kind, ports[kind])
            rates = {kind: [] for kind in KINDS}
            for round_number in range(s.warmup + s.repeat):
                for kind in KINDS:
                    try:
                        rate = throughput_mb_s(("127.0.0.1", ports[kind]), s.network_mb)
                    except (OSError, RuntimeError) as error:
                        raise click.ClickException(f"the {kind}'s echo server: {error}")
                    if round_number >= s.warmup:
                        rates[kind].append(rate)
            return rates
        finally:
            for server in servers.values():
                stop(server)

    def serve(self, kind: str, port: int) -> subprocess.Popen:
        """An echo server, ready: on the host, busybox nc on `port`; in the container and in the
        VM, on their port 7, published on 127.0.0.1:`port` (minirun needs --init: nc as PID 1
        would ignore the SIGINT that stops it, see stop)."""
        if kind == "host":
            return subprocess.Popen(self.command(kind, ["sh", "-c", echo_server(port)]),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        options = ("--init",) * (kind == "container") + ("-p", f"127.0.0.1:{port}:7")
        errors = tempfile.TemporaryFile("w+")       # what a failed start said, for one line
        server = subprocess.Popen(
            self.command(kind, ["sh", "-c", f"echo ready; {echo_server(7)}"], options),
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
            text=True)
        ready, _, _ = select.select([server.stdout], [], [], self.settings.timeout)
        if not ready or server.stdout.readline() != "ready\n":
            stop(server)
            errors.seek(0)
            raise click.ClickException(f"the {kind}'s echo server did not start: "
                                       f"{errors.read().strip() or 'no message'}")
        return server

    def probe(self, kind: str) -> dict:
        script = PROBE if kind != "host" else PROBE.split("mkdir -p /mnt")[0]   # never mount here
        run = checked(watch(kind, self.command(kind, ["sh", "-c", script]), self.env, False,
                            self.settings.timeout))
        facts = dict(line.split("=", 1) for _, line in run.lines if "=" in line)
        facts["seccomp"] = SECCOMP_MODES.get(facts.get("seccomp", ""), facts.get("seccomp"))
        return facts

    def as_nobody(self, kind: str) -> str:
        """Started by an unprivileged user of the host (uid 65534) with a store of its own: was
        root needed (the run failed), or did the app run, and as whom did it see itself?"""
        self.scratch.chmod(0o755)       # mkdtemp made it 0700: nobody could not reach its home
        home = self.scratch / "nobody"
        home.mkdir(exist_ok=True)
        os.chown(home, NOBODY, NOBODY)
        env = {**self.env, "HOME": str(home), "TMPDIR": str(home), "MINIRUN_ROOT": f"{home}/store",
               "MINIRUN_STATE": f"{home}/state", "MINIVM_CACHE": f"{home}/cache"}
        if kind == "vm":    # the kernel minivm found as root, and its modules: readable by anyone
            from minivm.kernel import bootable_vmlinux, find_kernel, modules_directory, release
            vmlinux = bootable_vmlinux(find_kernel())
            env["MINIVM_KERNEL"] = str(vmlinux)
            kernels = home / "cache" / "kernels"
            kernels.mkdir(parents=True, exist_ok=True)
            for directory in (home / "cache", kernels):
                os.chown(directory, NOBODY, NOBODY)
            link = kernels / f"modules-{release(vmlinux)}"     # where minivm looks first
            if not link.exists():
                link.symlink_to(modules_directory(vmlinux))
        setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        run = watch(kind, setpriv + self.command(kind, ["id", "-u"]), env, False,
                    self.settings.timeout)
        if run.status == 0:
            return f"no (app's uid inside: {run.lines[-1][1]})"
        return f"yes (exit {run.status})"


def stop(process: subprocess.Popen) -> None:
    """SIGINT, as Ctrl-C would: minirun passes it to its init, minivm powers the guest off."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()                  # minirun and minivm clean up after a SIGKILL'd parent
        process.wait()


def checked(run: Run) -> Run:
    if run.status != 0:
        raise click.ClickException(f"the {run.kind} run failed with exit status {run.status}: "
                                   f"{run.stderr.strip() or 'no message'}")
    return run


# --- the table ------------------------------------------------------------------------------------

def spread(values: list[float], unit: str = "s") -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "unit": unit, "values": values}


def show_time(figure: dict | None) -> str:
    if not figure:
        return "-"
    def one(seconds):
        return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
    if figure["min"] == figure["max"]:
        return one(figure["median"])
    return f"{one(figure['median'])} ({one(figure['min'])}-{one(figure['max'])})"


def show_bytes(figure: dict | None) -> str:
    if not figure:
        return "-"
    return f"{figure['median'] / MIB:.0f} MiB" + (
        f" ({figure['min'] / MIB:.0f}-{figure['max'] / MIB:.0f})" if figure["min"] != figure["max"] else "")


def show_rate(figure: dict | None) -> str:
    if not figure:
        return "-"
    return f"{figure['median']:.0f} MB/s" + (
        f" ({figure['min']:.0f}-{figure['max']:.0f})" if figure["min"] != figure["max"] else "")


SHOW = {"time": show_time, "bytes": show_bytes, "rate": show_rate}   # a row's figure -> its cell


def ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or not b["median"]:
        return "-"
    return f"{a['median'] / b['median']:.2g}x"


def measure(settings: Settings, scratch: Path, accel: str) -> dict:
    runner = Runner(settings, scratch)
    starts = {kind: [] for kind in ("container", "vm")}
    works = {kind: [] for kind in KINDS}
    for round_number in range(settings.warmup + settings.repeat):
        counted = round_number >= settings.warmup   # warm-ups fill the page cache and the caches
        for kind in ("container", "vm"):            # of minirun and minivm; they are not counted
            run = checked(runner.start(kind))
            if counted:
                starts[kind].append(run)
        for kind in KINDS:
            run = runner.workload(kind)
            if counted:
                works[kind].append(run)
    facts = {kind: runner.probe(kind) for kind in KINDS}
    root = {kind: runner.as_nobody(kind) for kind in ("container", "vm")}
    rates = runner.transfers() if settings.network_mb else None    # its VM boots last

    rows = []

    def row(section, claim, cells, why, kind_of="time"):
        rows.append({"section": section, "claim": claim, "cells": cells, "why": why,
                     "figure": kind_of})

    row("start", "first output",
        {k: spread([r.first_output() for r in starts[k]]) for k in starts},
        "a container is a fork+exec in new namespaces; a VM boots a kernel first")
    row("start", "exit",
        {k: spread([r.ended - r.started for r in starts[k]]) for k in starts},
        "then the VM must power off: QEMU exits when the guest init reports the app's status")
    for name, worst in (("idle", False), ("workload", True)):
        phase = "idle" if name == "idle" else None
        cells = {}
        for kind in ("container", "vm"):
            costs = [r.memory(phase, worst) for r in works[kind]]
            cells[kind] = spread([c["total"] for c in costs if c], "bytes")
            cells[kind]["parts"] = costs
        row("memory", f"host memory, {name}" + (" (peak)" if worst else ""), cells,
            "container: its cgroup's charge + minirun's PSS; VM: QEMU's PSS (guest RAM it touched, "
            "TCG's code cache) + minivm's" if name == "idle" else
            "the workload's page cache is charged to the container's cgroup; the guest's pages "
            "stay QEMU's once touched", "bytes")
    for phase, (claim, why) in PHASES.items():
        row("work", claim.format(**asdict(settings)),
            {k: spread([r.seconds(phase) for r in works[k]]) for k in KINDS}, why)
    if rates:
        row("network", f"{settings.network_mb} MB echoed via -p, MB/s (more: faster)",
            {k: spread(v, "MB/s") for k, v in rates.items()},
            "both: the runtime's proxy on 127.0.0.1, the bridge; then a veth into the host's own "
            "kernel, or a tap into QEMU, virtio-net and a guest kernel run by TCG (no vhost-net)",
            "rate")
    for fact, why in ISOLATION.items():
        row("isolation", fact, {k: facts[k].get(fact, "-") for k in KINDS}, why, "fact")
    row("isolation", "needs root on the host", {**root, "host": "-"},
        "namespaces, mounts and cgroups need CAP_SYS_ADMIN; QEMU under TCG is a plain process "
        "(KVM needs only access to /dev/kvm)", "fact")
    return {"rows": rows, "accelerator": accel}


ISOLATION = {
    "kernel": "the container's kernel is the host's; the VM boots its own",
    "hostname": "both have a UTS namespace or a kernel of their own: the name is theirs",
    "pid": "the container's app is PID 1 of a new PID namespace; the guest's PID 1 is its init, "
           "and its kernel threads and the init's commands came first",
    "processes": "a PID namespace shows only its own; a guest kernel shows all of its own, "
                 "its kernel threads included",
    "kernel threads": "kthreadd's children live in the host's PID namespace; a guest has its own",
    "devices": "minirun makes a minimal /dev; the guest's devtmpfs lists its virtual hardware",
    "mounts": "the container sees its own mount namespace; the guest only what its init mounted",
    "capabilities": "root in the container keeps Docker's 14 capabilities; root in the guest has "
                    "them all, against a kernel that is not the host's",
    "seccomp": "the container's system calls are filtered; the guest's reach only its own kernel",
    "root mounts": "without CAP_SYS_ADMIN a container's root cannot mount; the guest's root can",
}


def host_record(accel: str) -> dict:
    """The machine and its load, recorded with the figures they qualify."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory": f"{int(mem) // 1024 // 1024} GiB",
            "load before": Path("/proc/loadavg").read_text().split()[:3],
            "qemu": (qemu.stdout.splitlines() or ["?"])[0], "accelerator": accel}


def table(result: dict) -> str:
    accel = result["accelerator"]
    header = ("", "container", f"VM ({accel})", "host", "container/VM", "container/host")
    lines = []
    body = []
    for row in result["rows"]:
        cells = row["cells"]
        show = SHOW.get(row["figure"], str)
        numeric = row["figure"] != "fact"
        body.append(((f"{row['section']}: {row['claim']}", show(cells.get("container")),
                      show(cells.get("vm")), show(cells.get("host")),
                      ratio(cells.get("container"), cells.get("vm")) if numeric else "",
                      ratio(cells.get("container"), cells.get("host")) if numeric else ""),
                     row["why"]))
    widths = [max(len(r[i]) for r in [header] + [b[0] for b in body]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    for cells, why in body:
        lines.append(fmt(cells))
        lines.append(f"    why: {why}")
    host = result["host"]
    lines.append("")
    lines.append(f"measured {host['when']} on {host['cpu']}, {host['cpus']} CPUs, {host['memory']}, "
                 f"kernel {host['kernel']}")
    lines.append(f"{host['qemu']}")
    lines.append(f"load average before {' '.join(host['load before'])}, after "
                 f"{' '.join(host['load after'])}")
    lines.append("settings: " + ", ".join(f"{k} {v}" for k, v in result["settings"].items()))
    if accel == "tcg":
        lines.append("accelerator: TCG, software emulation: every VM figure above pays for it;")
        lines.append("with KVM the guest's instructions run natively (docs/compare.md).")
    return "\n".join(lines)


PANELS = {      # a row's figure -> its chart's axis: (label, divisor, log scale)
    "time": ("seconds (log)", 1, True),
    "bytes": ("MiB", MIB, False),
    "rate": ("MB/s (log; more: faster)", 1, True),
}


def draw_chart(result: dict, path: str) -> None:
    """One panel per kind of figure (times, memory, throughput), a bar per column of the table.
    The format follows the file's suffix; an SVG keeps its text as text (svg.fonttype none), so
    it stays small and its labels can be searched and read by a screen reader."""
    import matplotlib
    matplotlib.use("Agg")                       # no display: write the file only
    import matplotlib.pyplot as plt
    plt.rcParams["svg.fonttype"] = "none"
    panels = {k: [r for r in result["rows"] if r["figure"] == k] for k in PANELS}
    panels = {k: chosen for k, chosen in panels.items() if chosen}
    heights = [len(chosen) for chosen in panels.values()]
    figure, axes = plt.subplots(len(panels), 1, squeeze=False, height_ratios=heights,
                                figsize=(9, 1.2 + 0.6 * sum(heights)))
    for ax, (kind_of, chosen) in zip(axes[:, 0], panels.items()):
        label, divisor, log = PANELS[kind_of]
        medians = []
        for offset, kind in enumerate(KINDS):
            values = [r["cells"][kind]["median"] / divisor if kind in r["cells"] else 0
                      for r in chosen]
            ax.barh([i + offset * 0.27 for i in range(len(chosen))], values, height=0.27,
                    label=kind if kind != "vm" else f"VM ({result['accelerator']})")
            medians += values
        ax.set_yticks([i + 0.27 for i in range(len(chosen))],
                      [f"{r['section']}: {r['claim']}" for r in chosen], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(label, fontsize=8)
        if log:     # from the power of ten below the smallest bar, so that its axis is labelled
            ax.set_xscale("log")
            ax.set_xlim(left=10 ** math.floor(math.log10(min(v for v in medians if v > 0))))
            ax.xaxis.set_major_formatter("{x:g}")          # 0.1, 1, 10 rather than 10^-1
            ax.xaxis.set_minor_formatter("")
        ax.tick_params(labelsize=8)
    figure.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", ncols=3,
                  fontsize=8, frameon=False)
    figure.suptitle(f"minirun vs minivm, {result['host']['when']} ({result['host']['cpu']})",
                    fontsize=9, x=0.01, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path)


def chart_file(context, parameter, value: str | None) -> str | None:
    """--plot's FILE, checked before minutes of measuring rather than after."""
    if value is None:
        return None
    if Path(value).suffix.lower() not in (".png", ".svg"):
        raise click.BadParameter(f"{value!r}: the chart is a PNG or an SVG, name it *.png or *.svg")
    if not Path(value).absolute().parent.is_dir():
        raise click.BadParameter(f"{value!r}: its directory does not exist")
    from importlib.util import find_spec
    if find_spec("matplotlib") is None:
        raise click.ClickException("--plot needs matplotlib: pip install '.[plot]'")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "allow_interspersed_args": False})
@click.option("--repeat", "-n", default=3, show_default=True, type=click.IntRange(min=1),
              help="Measured rounds (container, VM and host, interleaved).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0),
              help="Rounds run first and not counted.")
@click.option("--cpu-mb", default=64, show_default=True, type=click.IntRange(min=1),
              help="MB of zeros to hash.")
@click.option("--syscalls", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="1-byte reads and writes (one of each per count).")
@click.option("--files-mb", default=32, show_default=True, type=click.IntRange(min=1),
              help="MB written and read back in the writable layer.")
@click.option("--small-files", default=500, show_default=True, type=click.IntRange(min=0),
              help="Small files made and removed in the writable layer.")
@click.option("--network-mb", default=16, show_default=True, type=click.IntRange(min=0),
              help="MB echoed through a published port per round; 0 leaves the network row out.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead.")
@click.option("--plot", metavar="FILE", callback=chart_file,
              help="Also draw the timing, memory and network rows (FILE.png or FILE.svg).")
@click.argument("image", default="hello")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def cli(repeat, warmup, cpu_mb, syscalls, files_mb, small_files, network_mb, as_json, plot, image,
        command):
    """Run IMAGE (default: hello) as a container and as a VM, and measure the difference.

    COMMAND (default: the image's own) is the one whose start is timed."""
    if os.geteuid() != 0:   # namespaces, cgroups, and the bridge that -p reaches the app through
        raise click.ClickException("the container side and the network row need root: "
                                   "run minicompare with sudo")
    from minivm.accel import HostFacts, choose
    accel = choose("auto", HostFacts.read()).name
    settings = Settings(image=image, command=command, repeat=repeat, warmup=warmup, cpu_mb=cpu_mb,
                        syscalls=syscalls, files_mb=files_mb, small_files=small_files,
                        network_mb=network_mb)
    host = host_record(accel)
    with tempfile.TemporaryDirectory(prefix="minicompare.") as scratch:
        result = measure(settings, Path(scratch), accel)
    host["load after"] = Path("/proc/loadavg").read_text().split()[:3]
    result.update(host=host, settings={k: v for k, v in asdict(settings).items() if k != "timeout"})
    if as_json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(table(result))
    if plot:
        draw_chart(result, plot)


def main() -> None:
    try:
        cli.main(prog_name="minicompare", standalone_mode=False)
    except click.UsageError as error:
        click.echo(f"minicompare: {error.format_message()} (see `minicompare --help`)", err=True)
        sys.exit(125)
    except click.ClickException as error:
        click.echo(f"minicompare: {error.format_message()}", err=True)
        sys.exit(125)
    except click.Abort:
        sys.exit(130)


if __name__ == "__main__":
    main()
