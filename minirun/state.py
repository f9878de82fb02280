"""Where running containers are recorded: one small JSON file each in the state directory.

`minirun ps`, `minirun gc`, `minirun rmi` and the tests read these files to find containers;
nothing else is shared between minirun processes. The directory is /run/minirun (a tmpfs, so
a reboot empties it, as it empties every container) or $MINIRUN_STATE.
"""
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ContainerRecord:
    id: str
    name: str
    image: str
    command: list[str]
    runtime_pid: int            # the minirun process that owns the container
    runtime_start: int = 0      # ...and when it started (see start_time)
    pid: int = 0                # the container's PID 1, as the host sees it (0 until started)
    pid_start: int = 0
    created: float = 0.0
    workdir: str = "/"          # where `minirun exec` starts, as `docker exec` does
    user: str = ""              # whom `minirun exec` runs as, unless -u says otherwise
    capabilities: list[str] | None = None   # what it keeps (None: the default set), for exec
    privileged: bool = False
    seccomp: bool = True        # whether `minirun exec` installs the default seccomp filter too


def state_dir() -> Path:
    return Path(os.environ.get("MINIRUN_STATE", "/run/minirun"))


def record_path(container_id: str) -> Path:
    return state_dir() / f"{container_id}.json"


def save(record: ContainerRecord) -> None:
    path = record_path(record.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{record.runtime_pid}.{path.name}.tmp")   # whose it is, should it stay
    tmp.write_text(json.dumps(asdict(record)))
    os.rename(tmp, path)        # readers see the old record or the new one, never half of one


def remove(container_id: str) -> None:
    record_path(container_id).unlink(missing_ok=True)


def containers() -> list[ContainerRecord]:
    found = []
    for path in sorted(state_dir().glob("*.json")):
        try:
            found.append(ContainerRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue                                    # removed or rewritten while we looked
    return found


def is_alive(record: ContainerRecord) -> bool:
    """True while the minirun process that owns the container still runs."""
    started = start_time(record.runtime_pid)
    return started is not None and started == record.runtime_start


def pid1_is_running(record: ContainerRecord) -> bool:
    """True while the container's PID 1 is the process the record names."""
    started = start_time(record.pid) if record.pid else None
    return started is not None and started == record.pid_start


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat,
    proc(5)); None if there is no such process.

    A PID alone does not name a process for long: once it ends, the kernel hands the number
    to the next process that needs one. A PID with its start time names one process for good,
    so a record left behind by a killed minirun never mistakes a stranger for its container.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()   # the name, in (), may hold spaces
    except OSError:
        return None
    return int(fields[19])                                    # fields[0] is field 3


def remove_stale_temporaries() -> None:
    """Remove half-written records left by a minirun killed in the middle of `save`."""
    for tmp in state_dir().glob(".*.tmp"):
        owner = tmp.name.split(".")[1]
        if owner.isdigit() and not process_exists(int(owner)):
            tmp.unlink(missing_ok=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)                     # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
