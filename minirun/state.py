"""Where running containers are recorded, and how a minirun proves that another one is dead.

`minirun ps`, `minirun gc`, `minirun rmi` and the tests read these files to find containers;
nothing else is shared between minirun processes. The directory is /run/minirun (a tmpfs, so
a reboot empties it, as it empties every container) or $MINIRUN_STATE. It holds:

    ID.json      one container's record (mode 0600: a record names processes and commands)
    NAME.name    a symlink to the record of the running container called NAME

The directory is root's alone (0700), and it is also its own lock: claiming a name and saving
the record happen under an exclusive flock(2) on it, so two runs given one `--name` at the same
moment cannot both take it.
"""
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from minirun.errors import RuntimeFailure


class ContainerRecord(NamedTuple):  # (a NamedTuple: a third of a dataclass's cost to define)
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


def name_path(name: str, directory: Path | None = None) -> Path:
    return (directory or state_dir()) / f"{name}.name"


def claim(record: ContainerRecord) -> None:
    """Save a new container's record under its name, unless a running container has that name.

    Looking for the name and taking it are one step: both happen under the directory's lock.
    A name whose holder is dead (its minirun was killed) is taken over.
    """
    with _locked(state_dir()):
        holder = load(_named_record(name_path(record.name)))
        if holder and holder.id != record.id and is_alive(holder):
            raise RuntimeFailure(f"the name {record.name!r} is in use by container "
                                 f"{holder.id[:12]}: choose another --name")
        save(record)
        link = name_path(record.name)
        try:
            link.unlink(missing_ok=True)
            link.symlink_to(record_path(record.id).name)
        except OSError as error:
            record_path(record.id).unlink(missing_ok=True)
            raise _storage_failure(link.parent, error) from None


def save(record: ContainerRecord) -> None:
    path = record_path(record.id)
    _make_state_dir(path.parent)
    tmp = path.with_name(f".{record.runtime_pid}.{path.name}.tmp")   # whose it is, should it stay
    try:
        with open(tmp, "w", opener=lambda name, flags: os.open(name, flags, 0o600)) as file:
            file.write(json.dumps(record._asdict()))
        os.rename(tmp, path)    # readers see the old record or the new one, never half of one
    except OSError as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass                # a read-only directory: there is no tmp file to remove
        raise _storage_failure(path.parent, error) from None


def release(record_file: Path) -> None:
    """Remove a record, and its name if the name still points at it: at the end of a run, or
    once gc has proved the record's minirun dead. Under the lock, so that a name just taken
    over by a new container is never removed with its old holder's record."""
    if not record_file.parent.is_dir():
        return
    record = load(record_file)
    try:
        with _locked(record_file.parent):
            if record:
                link = name_path(record.name, record_file.parent)
                if _named_record(link) == record_file:
                    link.unlink()
            record_file.unlink(missing_ok=True)
    except (OSError, RuntimeFailure):
        pass                    # a directory gone or read-only: nothing was saved there


def remove(container_id: str) -> None:
    release(record_path(container_id))


def load(path: Path | None) -> ContainerRecord | None:
    try:
        return ContainerRecord(**json.loads(path.read_text())) if path else None
    except (OSError, ValueError, TypeError):
        return None                                     # removed or rewritten while we looked


def containers() -> list[ContainerRecord]:
    records = (load(path) for path in sorted(state_dir().glob("*.json")))
    return [record for record in records if record]


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
    """Remove half-written records left by a minirun killed in the middle of `save`, and names
    whose record is gone (a minirun killed between the two steps of `claim`)."""
    directory = state_dir()
    if not directory.is_dir():
        return
    for tmp in directory.glob(".*.tmp"):
        owner = tmp.name.split(".")[1]
        if owner.isascii() and owner.isdigit() and not process_exists(int(owner)):
            tmp.unlink(missing_ok=True)
    with _locked(directory):
        for link in directory.glob("*.name"):
            if not _named_record(link) or not _named_record(link).exists():
                link.unlink(missing_ok=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)                     # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- Locks that prove life ------------------------------------------------------------------
#
# A flock(2) belongs to an open file, and the kernel drops it when the last descriptor of that
# file closes, which includes the death of the process holding it, however it dies. So a lock a
# running minirun holds for its whole life proves it alive, and a lock anyone can take proves
# its holder dead: no PID is involved, so no reused PID can fool the test.

def hold_for_life(path: Path) -> int:
    """Create the lock file `path` and take it; return its descriptor, to keep open.

    gc removes a lock file it could take, and it may take ours between our open() and our
    flock(): then we hold a lock on a file no longer in the directory, and go round again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def take_if_free(path: Path) -> int | None:
    """The descriptor of lock file `path`, locked, if no living process holds it; else None.
    Whoever gets it removes what the dead holder left, then the lock file, then closes it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if os.fstat(fd).st_nlink == 0:          # removed by its holder between our open and our lock
        os.close(fd)
        return None
    return fd


@contextmanager
def _locked(directory: Path):
    """An exclusive flock on the state directory itself, for the few steps that must not
    interleave with another minirun's (claiming a name, dropping one)."""
    fd = os.open(_make_state_dir(directory), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_state_dir(directory: Path) -> Path:
    if not directory.is_dir():
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)  # records are root's business only
        except OSError as error:
            raise _storage_failure(directory, error) from None
    return directory


def _named_record(link: Path) -> Path | None:
    try:
        return link.parent / os.readlink(link)
    except OSError:
        return None


def _storage_failure(directory: Path, error: OSError) -> RuntimeFailure:
    return RuntimeFailure(f"cannot record the container in {directory}: {error.strerror}; "
                          "point MINIRUN_STATE at a writable directory with free space")
