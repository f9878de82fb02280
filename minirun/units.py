"""The one parser for resource sizes and CPU counts, shared by minirun and minivm.

`--memory 256M` and `--cpus 1.5` mean the same in both programs: a container gets a cgroup
limit, a VM gets that much RAM and that many virtual CPUs.
"""
from minirun.errors import RuntimeFailure

_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'64M' -> 67108864. Binary units like Docker (k, m, g; an optional trailing 'b'/'ib')."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")   # 64MiB, 64MB, 64M
    number, suffix = value, ""
    if value and value[-1] in _SUFFIXES:
        number, suffix = value[:-1], value[-1]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if amount <= 0 or amount != amount or amount == float("inf"):
        raise RuntimeFailure(f"invalid size {text!r}: give a positive number with an optional "
                             "unit, like 64M, 512K or 1G")
    return int(amount * _SUFFIXES[suffix])


def parse_cpus(text: str) -> float:
    """'1.5' -> 1.5 CPUs: a share of CPU time for a container, vCPUs (rounded up) for a VM."""
    try:
        cpus = float(text)
    except ValueError:
        cpus = -1.0
    if not 0 < cpus < 1e6 or cpus != cpus:
        raise RuntimeFailure(f"invalid CPU count {text!r}: give a positive number like 1, 0.5 or 2")
    return cpus


def parse_count(text: str, what: str) -> int:
    """A positive whole number, e.g. a pids limit."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count <= 0:
        raise RuntimeFailure(f"invalid {what} {text!r}: give a positive whole number")
    return count


def format_size(count: int) -> str:
    """67108864 -> '64M', 1572864 -> '1.5M': the binary units parse_size reads, for tables and messages."""
    value, suffix = float(count), "B"
    for bigger in "KMGT":
        if value < 1024:
            break
        value, suffix = value / 1024, bigger
    return f"{count}B" if suffix == "B" else f"{value:.1f}".removesuffix(".0") + suffix
