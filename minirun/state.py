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
import re
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
    try:
        write_atomically(path, json.dumps(record._asdict()).encode(), mode=0o600)
    except OSError as error:
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


def tidy() -> None:
    """Remove half-written records left by a minirun killed in the middle of `save`, and names
    whose record is gone (a minirun killed between the two steps of `claim`)."""
    directory = state_dir()
    if not directory.is_dir():
        return
    remove_abandoned_temporaries(directory)
    with _locked(directory):
        for link in directory.glob("*.name"):
            if not _named_record(link) or not _named_record(link).exists():
                link.unlink(missing_ok=True)


# -- Files written whole or not at all -------------------------------------------------------------
#
# A reader must never see half a record (nor minivm half a kernel in its cache, minivm/cache.py).
# So each file is written under a temporary name in the same directory, then renamed over its
# own name: rename(2) replaces a name in one step, and a reader opens the old file or the new one.
# The temporary's name says whose it is, `.NAME.PID-START.RANDOM`: a writer killed half-way leaves
# it behind, and whoever tidies that directory can tell it from one a live writer is still
# writing, by the PID and its start time (a PID alone may be a new process's by now).
#
# Not everything renamed into place goes through here: a file that another program writes (the
# C compiler, mkfs.erofs) is made in a scratch directory and renamed from there; the image store
# keeps every temporary of its own, layers and records, in its tmp/, where one listdir finds what
# a killed import left (image.py); a full log is renamed aside, not replaced (supervisor.py).

TEMPORARY = re.compile(r"\..+\.(\d+)-(\d+)\.[^.]+")


def temporary_name(name: str) -> str:
    """A name for a temporary of this process's, beside the file called `name`."""
    return f".{name}.{os.getpid()}-{start_time(os.getpid())}.{os.urandom(4).hex()}"


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Make `path` hold `data` with permissions `mode`, whole or not at all."""
    temporary = path.with_name(temporary_name(path.name))
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with open(fd, "wb") as out:
            os.fchmod(fd, mode)             # what umask took away from `mode`
            out.write(data)
        os.rename(temporary, path)
    except BaseException:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass                # a read-only directory: no temporary was made
        raise


def remove_abandoned_temporaries(directory: Path) -> list[Path]:
    """Remove the temporaries in `directory` whose writer has ended; return those removed."""
    removed = []
    for entry in directory.iterdir() if directory.is_dir() else ():
        owner = TEMPORARY.fullmatch(entry.name)
        if owner and start_time(int(owner.group(1))) != int(owner.group(2)):
            if entry.is_dir() and not entry.is_symlink():
                import shutil           # here: shutil pulls bz2 and lzma, ~3 ms a run would pay
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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
