"""The one parser for resource sizes and CPU counts, shared by minirun and minivm.

`--memory 256M` and `--cpus 1.5` mean the same in both programs: a container gets a cgroup
limit, a VM gets that much RAM and that many virtual CPUs.
"""
import math
import os
import re

from minirun.errors import RuntimeFailure

_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

# Plain decimal numbers only, in ASCII: float() alone would also take "1e-9", "inf", "nan",
# "1_000" and digits of other scripts ("٣" is 3 to int() and float()).
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([KMGT])I?)?B?", re.ASCII)
_DECIMAL = re.compile(r"\d+(?:\.\d*)?|\.\d+", re.ASCII)


def parse_size(text: str) -> int:
    """'64M' -> 67108864. Binary units like Docker (k, m, g, t; an optional trailing 'b'/'ib')."""
    match = _SIZE.fullmatch(text.strip().upper())       # 64MiB, 64MB, 64M, 64 m, 1.5G
    amount = float(match[1]) * _SUFFIXES[match[2] or ""] if match else 0.0
    if 0 < amount < 1:
        raise RuntimeFailure(f"invalid size {text!r}: less than one byte (give a unit, like 64M)")
    if not 1 <= amount < math.inf:
        raise RuntimeFailure(f"invalid size {text!r}: give a positive number with an optional "
                             "unit, like 64M, 512K or 1G")
    return int(amount)


def parse_memory(text: str, smallest: int, what: str) -> int:
    """--memory: a size no smaller than `smallest` (what `what`, "a container" or "a guest",
    needs to start) and no larger than this machine's RAM (/proc/meminfo's MemTotal)."""
    size = parse_size(text)
    if size < smallest:
        raise RuntimeFailure(f"--memory {text} is too little for {what}: give at least "
                             f"{format_size(smallest)}")
    with open("/proc/meminfo") as meminfo:        # "MemTotal:  24591468 kB", first line
        total = int(meminfo.readline().split()[1]) * 1024
    if size > total:
        raise RuntimeFailure(f"--memory {text} is more than this machine has "
                             f"({format_size(total)}): give less")
    return size


def parse_cpus(text: str) -> float:
    """'1.5' -> 1.5 CPUs: a share of CPU time for a container, vCPUs (rounded up) for a VM.

    Never more than the host's CPUs, in both programs. A container's quota above them would
    limit nothing. A VM's vCPUs above them would take turns on the host's CPUs: QEMU runs each
    vCPU as a host thread (KVM, and TCG's multi-threaded mode), and a guest kernel whose vCPUs
    are not all running at once spins waiting for locks held by one that is not (lock-holder
    preemption): slower than fewer vCPUs, and under TCG here a boot of 99 vCPUs on 2 CPUs ran
    into the boot watchdog. QEMU's own -smp maximum (288 on -M microvm) allows all that."""
    cpus = float(text) if _DECIMAL.fullmatch(text.strip()) else 0.0
    if not 0 < cpus < 1e6:
        raise RuntimeFailure(f"invalid CPU count {text!r}: give a positive number like 1, 0.5 or 2")
    if cpus > os.cpu_count():
        raise RuntimeFailure(f"--cpus {text} is more than the {os.cpu_count()} CPUs of this "
                             f"machine: give at most {os.cpu_count()}")
    return cpus


# The kernel's most PIDs on a 64-bit machine (PID_MAX_LIMIT, include/linux/threads.h): a
# cgroup's pids.max takes no larger number (kernel/cgroup/pids.c), and no more could run at once.
PID_MAX_LIMIT = 4 * 1024 * 1024


def parse_count(text: str, what: str, most: int | None = None) -> int:
    """A positive whole number, e.g. a pids limit; no more than `most` if given."""
    count = int(text) if text.isascii() and text.isdigit() else 0
    if count <= 0:
        raise RuntimeFailure(f"invalid {what} {text!r}: give a positive whole number")
    if most is not None and count > most:
        raise RuntimeFailure(f"invalid {what} {text}: give at most {most}")
    return count


def format_size(count: int) -> str:
    """67108864 -> '64M', 1572864 -> '1.5M': the binary units parse_size reads, for tables and messages."""
    value, suffix = float(count), "B"
    for bigger in "KMGT":
        if value < 1024:
            break
        value, suffix = value / 1024, bigger
    return f"{count}B" if suffix == "B" else f"{value:.1f}".removesuffix(".0") + suffix


def check_env_and_workdir(env, workdir: str | None) -> None:
    """-e KEY=VALUE and -w /dir, which mean the same to minirun (run, exec) and minivm."""
    for item in env:
        if "=" not in item or item.startswith("="):
            raise RuntimeFailure(f"invalid environment variable {item!r}: use -e KEY=VALUE")
    if workdir is not None and not workdir.startswith("/"):
        raise RuntimeFailure(f"invalid working directory {workdir!r}: give an absolute path")
