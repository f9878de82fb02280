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
    pid: int = 0                # the container's PID 1, as the host sees it (0 until started)
    created: float = 0.0
    workdir: str = "/"          # where `minirun exec` starts, as `docker exec` does
    user: str = ""              # whom `minirun exec` runs as, unless -u says otherwise


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
    return process_exists(record.runtime_pid)


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
