"""The supervisor of a detached VM (`minivm boot -d`): what keeps a VM company once the command
that started it has returned, as minirun/supervisor.py does for a detached container.

A container is kernel state (namespaces, a cgroup, mounts) around a process; a VM is the state
of one process, QEMU. So the VM's supervisor does not run a runtime as its child: it *is* the
foreground `minivm boot`, run in a process of its own. `boot -d` forks it (fork, setsid(2), fork
again: the daemon recipe of minirun's supervisor, docs/runtime.md), and it boots the machine
exactly as a foreground boot does (minivm/boot.py, machine.py), with three differences:

- the app's stdout and stderr go into two bounded log files (minirun.supervisor.Log), and its
  stdin is /dev/null;
- QEMU is its child, started with PR_SET_PDEATHSIG: a supervisor killed even by SIGKILL takes
  QEMU with it, and the lock below falls free;
- the machine has a control plane for the commands that come later: a second QMP monitor on a
  socket file (`minivm qmp`, `minivm stop`: minivm/monitor.py), a guest agent on a virtio-serial
  port behind exec.sock (`minivm exec`: minivm/agent.py), and a guest that answers the ACPI
  power button (minivm/guest-init.sh).

`boot -d` returns once the guest init has reported that it runs (or with the boot's own one line
and status if it fails first, leaving nothing). Everything a detached VM leaves is one directory,
mode 0700, under a state root of minivm's own ($MINIVM_STATE; /run/minivm for root; else
$XDG_RUNTIME_DIR/minivm, the per-user tmpfs of the XDG base directory spec, so a VM needs no
root here either):

    ID/
        record.json          id, name, image, command, status (booting|running|exited), exit code
        lock                 flock'ed by the supervisor for its whole life (minirun.state)
        stdout.log(.1)       the app's output, bounded: at most 2 MiB each
        stderr.log(.1)
        minivm.log           the supervisor's own messages (why the VM stopped, --verbose)
        qmp.sock             QEMU's second QMP monitor
        exec.sock            the supervisor's door to the guest agent

The lock says what the directory is, as for minirun's: held, the supervisor lives; free with the
status "exited", the VM ended and stays until `minivm rm`; free otherwise, the supervisor was
killed (and QEMU with it), and `minivm gc` removes the directory.
"""
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from minirun.errors import RUNTIME_FAILED, RuntimeFailure
from minirun.supervisor import (Log, load_record, lock_is_held, matching, records_in,
                                remove_directory, remove_home, remove_killed_supervisors,
                                save_record, start_supervisor, wait_for_exit)

MONITOR = "qmp.sock"
EXEC = "exec.sock"
SOCKET_PATH_MAX = 107       # sun_path is 108 bytes with the final NUL (unix(7))


@dataclass
class VMRecord:
    id: str
    name: str
    image: str
    command: list[str]
    created: float
    supervisor_pid: int = 0
    qemu_pid: int = 0
    status: str = "booting"         # booting -> running -> exited
    paused: bool = False            # running, its vCPUs stopped (`minivm qmp NAME stop`)
    exit_code: int | None = None
    finished: float | None = None
    remove: bool = False            # --rm: nothing stays once it exits


def state_root() -> Path:
    """Where detached VMs are recorded: $MINIVM_STATE, /run/minivm for root, else the user's
    $XDG_RUNTIME_DIR (a tmpfs of the user's own, emptied at logout and reboot, as /run is)."""
    if os.environ.get("MINIVM_STATE"):
        return Path(os.environ["MINIVM_STATE"])
    if os.geteuid() == 0:
        return Path("/run/minivm")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "minivm"
    raise RuntimeFailure("no place for a detached VM's state: $XDG_RUNTIME_DIR is not set; "
                         "set MINIVM_STATE to a directory of your own")


def _make_root() -> Path:
    """The state root, made 0700 if it is not there, and refused if it is someone else's: its
    sockets are the VMs' control (QMP can do anything to a VM)."""
    root = state_root()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(root)
    except OSError as error:
        raise RuntimeFailure(f"cannot make minivm's state directory {root}: {error.strerror}; "
                             "set MINIVM_STATE to a writable directory") from None
    if not os.path.isdir(root) or os.path.islink(root) or info.st_uid != os.geteuid():
        raise RuntimeFailure(f"{root} is not a directory of yours: set MINIVM_STATE to one")
    os.chmod(root, 0o700)
    return root


def load(home: Path) -> VMRecord | None:
    return load_record(home, VMRecord)


def records() -> list[VMRecord]:
    return records_in(state_root(), VMRecord)


def home_of(record: VMRecord) -> Path:
    return state_root() / record.id


def is_supervised(record: VMRecord) -> bool:
    """True while the VM's supervisor lives: it holds the lock."""
    return lock_is_held(home_of(record))


def find(target: str) -> VMRecord:
    """The detached VM named `target`, or whose id starts with it."""
    matches = matching(records(), target)
    if len(matches) != 1:
        what = "no VM" if not matches else "more than one VM matches"
        raise RuntimeFailure(f"{what} {target!r}: give a name or id from `minivm ps -a`")
    return matches[0]


def find_running(target: str) -> VMRecord:
    record = find(target)
    if record.status != "running" or not is_supervised(record):
        raise RuntimeFailure(f"VM {record.name} is not running ({_status(record)}): start "
                             "another with `minivm boot -d`")
    return record


# -- Starting: `minivm boot -d` ------------------------------------------------------------------

def boot_detached(options, name: str, remove: bool) -> str:
    """Boot the VM of `options` (a boot.BootOptions) under a supervisor; return its id once the
    guest init runs. A VM that cannot boot fails here, with its one line and status."""
    if name and any(record.name == name for record in records()):
        raise RuntimeFailure(f"the name {name!r} is in use by a VM (running or exited): choose "
                             "another --name, or `minivm rm` that one")
    vm_id = os.urandom(8).hex()         # 64 bits: short, for the sockets' paths below
    home = _make_root() / vm_id
    if len(str(home / EXEC)) > SOCKET_PATH_MAX:
        raise RuntimeFailure(f"the state directory {state_root()} has too long a path for the "
                             "VM's sockets (unix(7): 107 bytes): set MINIVM_STATE to a shorter one")
    home.mkdir(mode=0o700)
    record = VMRecord(id=vm_id, name=name or vm_id[:12], image=options.image,
                      command=list(options.args), created=time.time(), remove=remove)
    start_supervisor(home, record,
                     lambda lock, report: _supervise(options, record, home, lock, report),
                     "booted", "the supervisor died before the VM booted")
    return vm_id


def _supervise(options, record: VMRecord, home: Path, lock: int, report: int) -> None:
    """The supervisor's life: boot the machine, keep its output and its exit status."""
    from minivm.boot import boot
    from minivm.machine import Detached
    record.supervisor_pid = os.getpid()
    options.name = record.name          # the name containers on the bridge know it by
    save_record(record, home)           # `rm -f` of a VM still booting must know whom to end
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)                    # the caller's terminal is not ours to hold
    os.dup2(os.open(home / "minivm.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), 2)
    booted = False

    def on_boot(qemu_pid: int) -> None:
        nonlocal booted
        booted = True
        record.status, record.qemu_pid = "running", qemu_pid
        save_record(record, home)
        os.write(report, b"booted")
        os.close(report)

    def on_pause(paused: bool) -> None:     # QMP's STOP and RESUME events, for ps and inspect
        record.paused = paused
        save_record(record, home)
    output = (Log(home / "stdout.log"), Log(home / "stderr.log"))
    options.detached = Detached(output=output, monitor_path=home / MONITOR,
                                exec_path=home / EXEC, booted=on_boot, paused=on_pause)
    message = ""
    try:
        code = boot(options)
    except RuntimeFailure as failure:
        code, message = failure.exit_code, str(failure)
    except BaseException as error:      # a bug: still one line, and the status says so
        code, message = RUNTIME_FAILED, f"internal error: {error!r}"
    for log in output:
        log.close()
    if not booted:                      # it never ran: say why to `boot -d`, keep nothing
        os.write(report, f"{code}\n{message}".encode())
        remove_directory(home, keep_parent=True)    # the state root may be the user's
        return
    if message:
        os.write(2, f"minivm: {message}\n".encode())
    record.status, record.exit_code, record.finished = "exited", code, time.time()
    record.paused = False
    os.pwrite(lock, str(code).encode(), 0)      # for a `minivm wait` of a --rm VM
    if record.remove:
        remove_directory(home, keep_parent=True)
    else:
        save_record(record, home)


# -- Looking after it: ps, stop, rm, gc ----------------------------------------------------------

def _status(record: VMRecord, now: float | None = None) -> str:
    now = now or time.time()
    if record.status == "exited":
        return f"Exited ({record.exit_code}) {int(now - record.finished)}s ago"
    if not is_supervised(record):
        return "Dead (supervisor killed: `minivm gc`)"
    if record.status != "running":
        return "Booting"
    return "Up (Paused)" if record.paused else "Up"     # as `docker ps` shows a paused one


def table(everything: bool) -> list[tuple]:
    """`minivm ps`'s rows: running VMs, with -a also exited (and dead) ones."""
    now = time.time()
    return [(record.id[:12], record.name, record.image,
             str(record.qemu_pid) if record.status == "running" else "-",
             f"{int(now - record.created)}s ago", status, " ".join(record.command))
            for record in records()
            for status in [_status(record, now)]
            if everything or status.startswith(("Up", "Booting"))]


def wait(target: str) -> int:
    """`minivm wait`: block until the VM has exited; return its app's exit code."""
    record = find(target)
    code = wait_for_exit(home_of(record), load)
    if code is None:
        raise RuntimeFailure(f"VM {record.name} ended without an exit status (its supervisor "
                             "was killed): `minivm gc` removes it")
    return code


def describe(target: str) -> dict:
    """`minivm inspect`: the VM's record, its status as `ps` says it, and its files."""
    record = find(target)
    home = home_of(record)
    return {**asdict(record), "state": _status(record), "directory": str(home),
            "logs": [str(home / f"{stream}.log") for stream in ("stdout", "stderr")],
            "qmp_socket": str(home / MONITOR) if is_supervised(record) else None}


def wait_for_end(record: VMRecord, seconds: float | None) -> bool:
    """Wait up to `seconds` (None: for ever) for the VM's supervisor to let go of its lock;
    whether it did. (flock(2) has no timeout: a short poll.)"""
    deadline = None if seconds is None else time.monotonic() + seconds
    while is_supervised(record):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop(target: str, grace: float) -> str:
    """`minivm stop`: press the power button (QMP system_powerdown); if the VM has not ended
    after `grace` seconds, pull the plug (QMP quit). The two commands go through the VM's second
    monitor, as libvirt's `virsh shutdown` and `virsh destroy` do."""
    from minivm import monitor
    record = find_running(target)
    socket_path = home_of(record) / MONITOR
    try:
        monitor.execute(socket_path, "system_powerdown")
        if not wait_for_end(record, grace):
            monitor.execute(socket_path, "quit")
    except RuntimeFailure:
        if is_supervised(record):       # not that it ended meanwhile: a real failure
            raise
    wait_for_end(record, None)          # its supervisor records the exit status, then ends
    return record.name


def remove(target: str, force: bool) -> str:
    """`minivm rm`: remove an exited VM's directory; with -f, a running one's too, after pulling
    its plug (QMP quit, as `docker rm -f` sends SIGKILL)."""
    record = find(target)
    if is_supervised(record):
        if not force:
            raise RuntimeFailure(f"VM {record.name} is running: stop it first (`minivm stop`), "
                                 "or use `minivm rm -f`")
        from minivm import monitor
        try:
            monitor.execute(home_of(record) / MONITOR, "quit")
        except RuntimeFailure:          # no QMP yet (booting) or any more: end its supervisor
            record = find(target)       # as saved now: the supervisor writes its PID first
            if record.supervisor_pid <= 0:      # kill(0) would be our own process group's
                raise RuntimeFailure(f"VM {record.name} is still starting: try again in a "
                                     "moment") from None
            os.kill(record.supervisor_pid, signal.SIGKILL)   # QEMU dies with it (PDEATHSIG)
        wait_for_end(record, None)
    remove_home(home_of(record), keep_parent=True)
    return record.name


def remove_stale() -> list[str]:
    """`minivm gc`: the directories of supervisors that were killed (lock free, never exited).
    Their QEMU died with them (PR_SET_PDEATHSIG); their directory is all that is left."""
    return remove_killed_supervisors(state_root(), load, keep_root=True)

