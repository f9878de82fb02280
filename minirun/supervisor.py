"""The supervisor: what keeps a detached container (`minirun run -d`) company once the command
that started it has returned. conmon is this to podman's runc, containerd-shim to containerd's.

A container's processes need a parent that waits for them, and their output needs a reader:
with `run -d` the terminal that asked is gone a moment later. So `run -d` forks a small process
of minirun's own, lets it leave the caller's session (setsid(2)) and its process tree (a second
fork: its parent exits at once, so it is reparented to init, or to the nearest subreaper), and
returns. That supervisor then:

- runs the ordinary foreground runtime (container.run) as its child, with stdin on /dev/null
  (or, with -i/-t, on a pipe it never writes and never closes: a shell keeps waiting for
  input, as under Docker), and stdout and stderr on two pipes of its own;
- copies each pipe into its own log file (stdout.log, stderr.log), each bounded: at
  LOG_LIMIT bytes it is rotated once (to .1), so a chatty container holds at most twice that;
- waits for the runtime's exit status (the container's, Docker-coded) and writes it into the
  container's record here, where `ps -a`, `wait`, `logs` and `inspect` find it; with --rm it
  removes everything instead.

Everything a detached container leaves in the state directory is in one directory:

    $MINIRUN_STATE/supervised/ID/
        record.json          id, name, image, command, status (running|exited), exit code
        lock                 flock'ed by the supervisor for its whole life (state.hold_for_life)
        stdout.log(.1)       the container's output, bounded
        stderr.log(.1)

The lock says what kind of directory it is: held, its supervisor lives; free with the status
"exited", the container ended and stays until `minirun rm`; free with any other status, the
supervisor was killed, and `minirun gc` removes it. (Its runtime, the supervisor's child, then
notices that the reader of its stdout is gone, kills the container and cleans up its bundle and
cgroup, as any runtime whose `| reader` went away does: see container._supervise.)
"""
import json
import os
import select
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from minirun import state
from minirun.errors import RUNTIME_FAILED, RuntimeFailure, status_from_wait

LOG_LIMIT = 1024 * 1024     # bytes per log file before it is rotated once (so at most 2 MiB)
STREAMS = ("stdout", "stderr")


@dataclass
class SupervisedRecord:
    id: str
    name: str
    image: str
    command: list[str]
    created: float
    supervisor_pid: int = 0
    status: str = "created"         # created -> running -> exited
    exit_code: int | None = None
    finished: float | None = None
    remove: bool = False            # --rm: nothing stays once it exits
    tty: bool = False
    limits: dict = field(default_factory=dict)
    hostname: str = ""
    options: dict = field(default_factory=dict)     # run's flags, as given: `start` re-reads them


def directory() -> Path:
    return state.state_dir() / "supervised"


def load(path: Path) -> SupervisedRecord | None:
    return load_record(path, SupervisedRecord)


def records() -> list[SupervisedRecord]:
    return records_in(directory(), SupervisedRecord)


def is_supervised(record: SupervisedRecord) -> bool:
    """True while its supervisor lives (it holds the lock)."""
    return lock_is_held(directory() / record.id)


# One supervised directory per container here, per VM in minivm/supervisor.py: the same files.

def load_record(home: Path, record_type):
    """The record.json in `home`, as a `record_type`; None if there is none (yet) or it is bad."""
    try:
        return record_type(**json.loads((home / "record.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def records_in(root: Path, record_type) -> list:
    """Every record under `root`, oldest first (names that begin with "." are temporaries)."""
    if not root.is_dir():
        return []
    found = (load_record(home, record_type) for home in sorted(root.iterdir())
             if not home.name.startswith("."))
    return sorted((record for record in found if record), key=lambda record: record.created)


def save_record(record, home: Path) -> None:
    state.write_atomically(home / "record.json", json.dumps(asdict(record)).encode(), mode=0o600)


def lock_is_held(home: Path) -> bool:
    """Whether the supervisor of `home` lives: it holds the lock for its whole life."""
    lock = state.take_if_free(home / "lock")
    if lock is None:
        return (home / "lock").exists()
    os.close(lock)
    return False


# -- Starting: `minirun run -d` ------------------------------------------------------------------

def run_detached(spec, options: dict) -> str:
    """Start the container of `spec` (a container.ContainerSpec, made of run's `options`)
    under a supervisor; return its id once its command has been exec'd. A container that
    cannot start fails here, with its one line and its status, as `docker run -d` does, and
    leaves nothing. Without --rm its writable layer outlives it, for `minirun start`."""
    name = spec.name
    if name and any(record.name == name for record in records()):
        raise RuntimeFailure(f"the name {name!r} is in use by a container (running or exited): "
                             "choose another --name, or `minirun rm` that one")
    container_id = os.urandom(32).hex()
    home = directory() / container_id
    spec = replace(spec, id=container_id, name=name or container_id[:12],
                   keep_for=None if spec.remove else str(home / "record.json"))
    for attempt in range(3):        # the last `rm` may remove supervised/ between two mkdirs
        try:
            home.mkdir(parents=True, mode=0o700)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    os.chmod(directory(), 0o700)
    limits = {key: value for key, value in asdict(spec.limits).items() if value is not None}
    record = SupervisedRecord(id=container_id, name=spec.name, image=spec.image,
                              command=list(spec.command), created=time.time(),
                              remove=spec.remove, tty=spec.tty, limits=limits,
                              hostname=spec.hostname or container_id[:12],
                              options=options)
    start_supervisor(home, record,
                     lambda lock, report: _supervise(spec, record, home, lock, report),
                     "started", "the supervisor died before the container started")
    # A Ctrl-C (or kill) sent to `run -d` while it waited has been held since minirun's first
    # line (cli.py): until the id is printed it is the caller's "never mind", as an early
    # Ctrl-C of a foreground run is. The container runs by now: stop it and remove it.
    from minirun.signals import FORWARDED      # (loaded already by `run`: container.py)
    held = signal.sigpending() & set(FORWARDED)
    if held:
        remove(container_id, force=True)
        sig = min(held)
        raise RuntimeFailure(f"interrupted by {signal.Signals(sig).name} before `run -d` "
                             "returned: the container was stopped and removed", 128 + sig)
    return container_id


def start_supervisor(home: Path, record, supervise, started: str, died: str,
                     lock: int | None = None) -> None:
    """Save `record` in `home` and run `supervise(lock, report)` as a daemon that holds home's
    lock for life; return once it reports `started` (minirun's run -d, minivm's boot -d).

    The lock is taken here (or given, taken already: `minirun start`) and inherited by the
    supervisor: flock(2) locks belong to the open file, which the fork shares, so there is no
    moment when the directory is there unowned."""
    lock = state.hold_for_life(home / "lock") if lock is None else lock
    try:
        save_record(record, home)
        _as_daemon(lambda report: supervise(lock, report), started, died)
    finally:
        os.close(lock)              # the supervisor holds it on (the same open file)


def _as_daemon(supervise, started: str, died: str) -> None:
    """Run `supervise(report)` as a daemon: fork, setsid(2) (no controlling terminal, no
    caller's session), fork again (not a session leader: it can never acquire a terminal, and
    the first child can exit at once). Return once it writes `started` on `report`; if it
    writes "CODE\nMESSAGE" instead, or dies (`died`), raise that as this command's failure."""
    report_read, report_write = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(report_read)
            os.setsid()
            if os.fork() == 0:
                supervise(report_write)
        finally:
            os._exit(0)
    os.close(report_write)
    os.waitpid(first, 0)
    with os.fdopen(report_read, "rb") as report:
        outcome = report.read().decode(errors="replace")
    if outcome != started:
        code, _, message = outcome.partition("\n")
        raise RuntimeFailure(message or died, int(code) if code.isdigit() else RUNTIME_FAILED)


def _supervise(spec, record: SupervisedRecord, home: Path, lock: int, report: int,
               again: bool = False) -> None:
    """The supervisor's life: start the runtime, copy its output into the logs, keep its status.
    (`again`: a `minirun start` of an exited container, whose directory stays whatever happens.)"""
    from minirun import container
    record.supervisor_pid = os.getpid()
    null = os.open(os.devnull, os.O_RDWR)
    stdin_read, keep_open = os.pipe() if spec.interactive or spec.tty else (null, None)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    started_read, started_write = os.pipe()
    runtime = os.fork()
    if runtime == 0:
        status = RUNTIME_FAILED
        try:
            for fd in (out_read, err_read, started_read, report, lock):
                os.close(fd)
            for target, source in enumerate((stdin_read, out_write, err_write)):
                os.dup2(source, target)
            status = container.run(replace(spec, notify_fd=started_write))
        except RuntimeFailure as failure:
            os.write(2, f"minirun: {failure}\n".encode())
            status = failure.exit_code
        except BaseException as error:        # a bug: still one line in the log
            os.write(2, f"minirun: internal error: {error!r}\n".encode())
        finally:
            os._exit(status)
    for fd in {out_write, err_write, started_write, null, stdin_read}:
        os.close(fd)
    for fd in (0, 1, 2):                       # the caller's terminal is not ours to hold
        os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP, signal.SIGTERM})
    logs = {out_read: Log(home / "stdout.log"), err_read: Log(home / "stderr.log")}
    started = _copy_until_closed(logs, started_read, lambda: _started(record, home, report))
    _, wait_status = os.waitpid(runtime, 0)
    code = status_from_wait(wait_status)
    if not started:                            # it never ran: say why to `run -d`, keep nothing
        message = _last_line(home / "stderr.log").removeprefix("minirun: ")
        os.write(report, f"{code}\n{message}".encode())
        if not again:
            remove_layer(record.id)
            remove_directory(home)
            return                             # (a `start` keeps it: exited, as it was)
    record.status, record.exit_code, record.finished = "exited", code, time.time()
    os.pwrite(lock, str(code).encode(), 0)     # for a `minirun wait` of a --rm container
    if record.remove:
        remove_directory(home)
    else:
        save_record(record, home)


def remove_directory(home: Path, keep_parent: bool = False) -> None:
    """Remove a container's directory, and supervised/ itself once it is empty, so that a
    state directory without containers is empty again (`keep_parent`: minivm's state root,
    which may be a directory the user chose, stays)."""
    shutil.rmtree(home, ignore_errors=True)
    if keep_parent:
        return
    try:
        home.parent.rmdir()
    except OSError:
        pass                    # another container's directory is there: it stays


def _started(record: SupervisedRecord, home: Path, report: int) -> None:
    record.status = "running"
    save_record(record, home)
    os.write(report, b"started")
    os.close(report)


def _copy_until_closed(logs: dict, started: int, on_started) -> bool:
    """Copy each pipe into its log until every writer is gone (the runtime and the container
    have exited); call on_started() when the runtime says the command runs. Return whether it
    did."""
    poller = select.poll()
    for fd in (*logs, started):
        poller.register(fd, select.POLLIN)
    open_fds, was_started = {*logs, started}, False
    while open_fds - {started}:
        for fd, _ in poller.poll():
            data = os.read(fd, 65536)
            if fd == started and data and not was_started:
                was_started = True
                on_started()
            elif fd in logs and data:
                logs[fd].write(data)
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
                os.close(fd)
    for log in logs.values():
        log.close()
    return was_started


class Log:
    """A log file that never grows past LOG_LIMIT: when full it becomes NAME.1 (replacing the
    previous one) and a new NAME begins, so the last LOG_LIMIT to 2*LOG_LIMIT bytes are kept."""

    def __init__(self, path: Path):
        self.path = path        # appended to: after a `minirun start`, as `docker start` does
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        while data:
            room = LOG_LIMIT - self.size
            chunk, data = data[:room], data[room:]
            os.write(self.fd, chunk)
            self.size += len(chunk)
            if self.size >= LOG_LIMIT:
                os.close(self.fd)
                os.rename(self.path, self.path.with_name(self.path.name + ".1"))
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                                  0o600)
                self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


# -- Looking after it: logs, wait, rm, gc -------------------------------------------------------

def each(targets, act, program: str) -> int:
    """`stop a b`, `rm a b`, `wait a b` (minirun's and minivm's): act on each target in turn and
    print what `act` returns; a target it fails on gets its one line on stderr, and the others
    are still acted on, as Docker does. The status: 0, or the first failure's (125) at the end."""
    status = 0
    for target in targets:
        try:
            print(act(target), flush=True)
        except RuntimeFailure as failure:
            print(f"{program}: {failure}", file=sys.stderr, flush=True)
            status = status or failure.exit_code
    return status


def find(target: str) -> SupervisedRecord:
    """The detached container whose name is `target`, or whose id starts with it."""
    matches = matching(records(), target)
    if len(matches) != 1:
        what = "no container" if not matches else "more than one container matches"
        raise RuntimeFailure(f"{what} {target!r}: give a name or id from `minirun ps -a`")
    return matches[0]


def matching(found: list, target: str) -> list:
    """Those named `target`, or else those whose id starts with it (as `docker` matches)."""
    return [r for r in found if r.name == target] or \
        [r for r in found if target and r.id.startswith(target)]


def log_files(record: SupervisedRecord, stream: str) -> list[Path]:
    home = directory() / record.id
    return [home / f"{stream}.log.1", home / f"{stream}.log"]


def print_logs(target: str, follow: bool) -> None:
    """`minirun logs`: the stdout log to our stdout, the stderr log to our stderr; with -f,
    then what comes, until the container has exited."""
    record = find(target)
    follow_logs(directory() / record.id, lambda: is_supervised(record), follow)


def follow_logs(home: Path, running, follow: bool) -> None:
    """Print the logs in `home` (also minivm's, for a detached VM); with `follow`, then what
    comes, until running() says the supervisor is gone."""
    offsets = {}
    for stream, out in zip(STREAMS, (1, 2)):
        for path in (home / f"{stream}.log.1", home / f"{stream}.log"):
            offsets[stream] = _copy_file(path, out, 0)
    while follow:
        running_now = running()
        for stream, out in zip(STREAMS, (1, 2)):
            path = home / f"{stream}.log"
            if path.exists() and path.stat().st_size < offsets[stream]:   # rotated meanwhile
                offsets[stream] = 0
            offsets[stream] = _copy_file(path, out, offsets[stream])
        if not running_now:
            return
        time.sleep(0.1)


def _copy_file(path: Path, out: int, offset: int) -> int:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            while chunk := log.read(65536):
                while chunk:
                    chunk = chunk[os.write(out, chunk):]
            return log.tell()
    except FileNotFoundError:
        return 0


def wait(target: str) -> int:
    """`minirun wait`: block until the container has exited; return its exit code."""
    record = find(target)
    code = wait_for_exit(directory() / record.id, load)
    if code is None:
        raise RuntimeFailure(f"container {record.id[:12]} ended without an exit status "
                             "(its supervisor was killed): `minirun gc` removes it")
    return code


def wait_for_exit(home: Path, load_record) -> int | None:
    """Block until the supervisor of `home` lets go of its lock; the exit code it left (None if
    it was killed). The lock is the clock: a shared flock waits for its holder. The supervisor
    writes the code into the lock file as it ends, and an open file outlives its directory, so
    the code of a --rm container or VM, whose directory goes with it, still reaches the waiter."""
    import fcntl
    try:
        lock = os.open(home / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        lock = None
    if lock is not None:
        fcntl.flock(lock, fcntl.LOCK_SH)
        written = os.pread(lock, 16, 0).decode()
        os.close(lock)
        if written.isdigit():
            return int(written)
    ended = load_record(home)
    return None if ended is None else ended.exit_code


def start(target: str) -> str:
    """`minirun start` of an exited detached container: run it again, detached, under a new
    supervisor, from the same flags (re-read from its record, through run's own checks) and on
    the same writable layer, kept in the store since it exited: what its first life wrote is
    there. Its logs go on where they were, as Docker's do; `wait` gives the new exit code.
    Returns its name. A running one is left alone, its name returned all the same: `docker
    start` of a running container does nothing and succeeds, so a script may start what it
    needs without asking first."""
    from minirun.container import ContainerSpec
    record = find(target)
    home = directory() / record.id
    lock = state.take_if_free(home / "lock")
    if lock is None:                    # its supervisor lives: running (or just starting)
        return record.name
    try:
        if record.status != "exited" or not _layer(record.id).upper.is_dir():
            raise RuntimeFailure(f"container {record.name} cannot start again: its writable "
                                 "layer is gone (its supervisor was killed, or it ran before "
                                 "minirun kept layers): `minirun rm` it and `minirun run` anew")
        spec = replace(ContainerSpec.from_options(record.image, record.command, record.options),
                       id=record.id, name=record.name, keep_for=str(home / "record.json"))
    except BaseException:
        os.close(lock)
        raise
    record = replace(record, status="created", exit_code=None, finished=None)
    start_supervisor(home, record,      # (it hands the lock on to the supervisor, and closes it)
                     lambda lock, report: _supervise(spec, record, home, lock, report, True),
                     "started", "the supervisor died before the container started", lock)
    return record.name


def _layer(container_id: str):
    """The bundle that holds a detached container's writable layer, in the store."""
    from minirun import rootfs
    from minirun.image import store_root
    return rootfs.Bundle(store_root() / "containers" / container_id)


def remove_layer(container_id: str) -> None:
    """Remove the kept writable layer of an exited container (its bundle), holding its lock;
    one whose lock is held (a runtime still ending) is left for gc."""
    from minirun import rootfs
    bundle = _layer(container_id)
    if bundle.lock_path.exists():
        bundle.lock = state.take_if_free(bundle.lock_path)
        if bundle.lock is None:
            return
    rootfs.remove_bundle(bundle)


def remove(target: str, force: bool) -> str:
    """`minirun rm`: remove an exited container (its record, logs and writable layer); with
    -f stop a running one first (SIGKILL, as `docker rm -f`)."""
    record = find(target)
    if is_supervised(record):
        if not force:
            raise RuntimeFailure(f"container {record.name} is running: stop it first, or "
                                 "use `minirun rm -f`")
        from minirun.lifecycle import stop
        try:
            stop(record.id, grace=0)
        except RuntimeFailure:
            pass                            # it ended meanwhile
        wait(record.id)
    remove_layer(record.id)
    remove_home(directory() / record.id)
    return record.id


def remove_home(home: Path, keep_parent: bool = False) -> None:
    """Remove a supervised directory whose supervisor has ended, holding its lock meanwhile (a
    `boot -d` or `run -d` starting at that moment cannot mistake it for a free one)."""
    lock = state.take_if_free(home / "lock")
    remove_directory(home, keep_parent)
    if lock is not None:
        os.close(lock)


def remove_stale() -> list[str]:
    """For gc: the directories of supervisors that were killed (lock free, never exited)."""
    return remove_killed_supervisors(directory(), load)


def remove_killed_supervisors(root: Path, load_record, keep_root: bool = False) -> list[str]:
    """Remove the directories under `root` whose lock is free and whose record never reached
    "exited": their supervisor was killed. Their names. (minirun's and minivm's gc.)"""
    removed = []
    for home in (root.iterdir() if root.is_dir() else ()):
        if home.name.startswith(".") or not home.is_dir() or home.is_symlink():
            continue                # a temporary, or nothing of ours
        lock = state.take_if_free(home / "lock")
        if lock is None:
            continue
        record = load_record(home)
        if record is None or record.status != "exited":
            remove_directory(home, keep_root)
            removed.append(home.name)
        os.close(lock)
    return removed


def describe(target: str) -> dict | None:
    """`minirun inspect` of a container: its state, pid, limits, and while it runs its mounts
    and network devices as its own namespaces show them (/proc/PID/mountinfo, /proc/PID/net/dev).
    None if `target` names no container (then it may name an image)."""
    live = matching([r for r in state.containers() if state.is_alive(r)], target)
    kept = matching(records(), target)
    if len(live) > 1 or len(kept) > 1:
        raise RuntimeFailure(f"more than one container matches {target!r}: give more of its id")
    if not live and not kept:
        return None
    record = live[0] if live else None
    supervised = kept[0] if kept and (not record or kept[0].id == record.id) else None
    described = {"id": (record or supervised).id, "name": (record or supervised).name,
                 "image": (record or supervised).image, "command": (record or supervised).command,
                 "state": {"status": "running" if record else supervised.status,
                           "pid": record.pid if record else 0,
                           "exit_code": supervised.exit_code if supervised else None,
                           "detached": supervised is not None}}
    if supervised:
        described.update(limits=supervised.limits, hostname=supervised.hostname, tty=supervised.tty,
                         remove=supervised.remove, logs=[str(path) for stream in STREAMS
                                                         for path in log_files(supervised, stream)])
    if record:
        described.update(user=record.user or "root", workdir=record.workdir,
                         capabilities=record.capabilities, seccomp=record.seccomp,
                         mounts=_mounts_of(record.pid), network=_network_of(record.pid))
    return described


def _mounts_of(pid: int) -> list[str]:
    """The container's mount table: mount point, type, source (proc(5), mountinfo)."""
    try:
        with open(f"/proc/{pid}/mountinfo") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields, _, rest = line.partition(" - ")
        mounts.append(f"{fields.split()[4]} {rest.split()[0]} {rest.split()[1]}")
    return mounts


def _network_of(pid: int) -> list[str]:
    """The network devices of the container's network namespace (/proc/PID/net/dev)."""
    try:
        with open(f"/proc/{pid}/net/dev") as devices:
            return [line.split(":")[0].strip() for line in devices.read().splitlines()[2:]]
    except OSError:
        return []
