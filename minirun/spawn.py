"""Spawning a container's process: fork it, tie it to the runtime, let it become the container.

Every process that enters a container is made here, whichever command asks: `run`'s PID 1
(container.py), `minirun exec`'s command (enter.py), and the OCI commands' processes, `create`'s
and an engine's exec (oci.py). On the runtime's side, `fork` forks the child into a PID
namespace and holds it on a short leash until it has exec'd. On the child's side, `become` turns
it into the container that a `Config` describes -- config.json's data, whether an engine wrote
the bundle or `run` made it from an image -- in the order runc takes the same steps: its cgroup,
its namespaces, its root, its network's loopback. `last_steps` is what every process entering a
container does last, the first and an exec'd one alike: its working directory and limits, its
session and terminal, giving up privileges, closing what it inherited, the start gate, the
system call filter, exec.
"""
import errno
import fcntl
import os
import resource
import select
import socket
import struct
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

from minirun import cgroups, namespaces, network, rootfs, seccomp, security, signals, terminal
from minirun.errors import CANNOT_EXECUTE, NOT_FOUND, RUNTIME_FAILED, RuntimeFailure

OCI_VERSION = "1.0.2"       # of the runtime spec whose config.json `run` writes, and oci.py reads


# -- The runtime's side: forked into a PID namespace, tied to the runtime until it execs ----------

class Link:
    """The child's ends of what ties it to the runtime that forked it (see fork)."""

    def __init__(self, go: int, errors: int, console: socket.socket | None):
        self.go = go                # read end: "g" when the runtime is ready; hung up if it died
        self.errors = errors        # write end, close-on-exec: why setup or exec failed
        self.console = console      # with -t: where the child sends its pty's master end

    def wait_for_runtime(self) -> None:
        """The second go (see fork): block until the runtime's work for us is done."""
        if os.read(self.go, 1) != b"n":         # end-of-file: the runtime failed, or died
            os._exit(RUNTIME_FAILED)

    def runtime_is_gone(self) -> bool:
        """The runtime keeps its end of `go` open until the exec: a hang-up means it died."""
        poller = select.poll()
        poller.register(self.go, select.POLLIN)
        return any(events & select.POLLHUP for _, events in poller.poll(0))


def fork(enter_pid_namespace, become, tty: bool, failed: str,
                command: list[str], env: dict[str, str], after_go=None,
                born_in: cgroups.Cgroup | None = None,
                by_intermediate: bool = False) -> tuple[int, int | None]:
    """Fork a child into a PID namespace and let `become(link)` turn it into a container
    process that execs `command`; return its host PID and, with `tty`, its pty's master end.
    Used by `run` (a new PID namespace) and by `exec` (a running container's).

    `enter_pid_namespace()` runs just before the fork: unshare(CLONE_NEWPID) or setns() into a
    PID namespace does not move the caller, it decides where the caller's *next* child is born
    (pid_namespaces(7)). Right after the fork the runtime goes back to its own. With `born_in`,
    the child is also born in that cgroup, where the kernel can (Cgroup.fork), so that its
    join() is quick.

    With `by_intermediate` (exec), `enter_pid_namespace()` is not run by the runtime but by an
    intermediate child, forked in the host's PID namespace, invisible to the container: there it
    joins the container's cgroup and namespaces, the PID namespace (for its next child) among
    them, and only then clones the child, which so appears in the container's PID namespace
    already inside everything else (_fork_from_inside). runc's init is born the same way.

    Three channels tie runtime and child together until the exec:
    - `go`: the child waits on it until the runtime is ready for it; end-of-file instead means
      the runtime died before the child's parent-death signal was armed, and the child gives up.
      The runtime holds its end open until the exec, so the child can ask again later whether
      the runtime is still there (after a user switch, see _give_up_privileges);
    - `errors`: close-on-exec, so it reaches end-of-file exactly when the command has been
      exec'd; if setup or exec fails instead, the child writes why into it first;
    - `after_go()`, if given, is work the runtime does while the child sets itself up (wiring
      its network); then a second byte, "n", on `go` tells the child it may exec
      (Link.wait_for_runtime);
    - with -t, `console`: a unix socket on which the child sends the master end of a pty that it
      opened inside the container (SCM_RIGHTS, unix(7)), as runc's --console-socket does: the
      pty then belongs to the container's own /dev/pts, where `tty` can name it.
    """
    go_read, go_write = os.pipe()
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    console, console_child = socket.socketpair() if tty else (None, None)

    def child() -> None:
        """The child's first steps, in the process that will exec: tie it to the runtime."""
        security.die_with_parent()
        if os.read(go_read, 1) != b"g":           # the runtime died before saying go
            os._exit(RUNTIME_FAILED)
        become(Link(go_read, errors_write, console_child))     # ends in exec

    def in_child(work) -> None:
        """In a forked process: drop the runtime's ends, do `work`, and never come back."""
        try:
            os.close(go_write)
            os.close(errors_read)
            if console:
                console.close()
            work()
        except OSError as error:
            _fail(errors_write, RUNTIME_FAILED, f"{failed}: {error}")
        except RuntimeFailure as error:
            _fail(errors_write, error.exit_code, str(error))
        except Exception as error:      # a bug: still one line, and the runtime cleans up
            _fail(errors_write, RUNTIME_FAILED, f"internal error: {failed}: {error!r}")
        finally:
            os._exit(RUNTIME_FAILED)    # never fall back into the runtime's code

    # Not dumpable from birth: the child is born in the container's PID namespace, where, until
    # its exec, the container's root could read its /proc/PID files (the host caller's
    # environment, the host's interpreter as exe, the runtime's descriptors) or ptrace it once
    # its capabilities are cut to the container's. The flag is copied by fork, so there is no
    # moment it is open; execve(2) makes the command an ordinary, dumpable process again.
    # (runc's init makes itself not dumpable the same way, since CVE-2019-5736.) With
    # by_intermediate, the intermediate is born not dumpable too, and its clone copies the flag.
    dumpable, pid = security.set_dumpable(False), None
    try:
        if by_intermediate:
            pid = _fork_from_inside(enter_pid_namespace, born_in, in_child, child)
        else:
            pid = _fork_from_outside(enter_pid_namespace, born_in, in_child, child)
    except BaseException:
        os.close(go_write)
        os.close(errors_read)
        if console:
            console.close()
        raise
    finally:
        security.set_dumpable(dumpable)         # the runtime's own process: as it was
        for fd in (go_read, errors_write):
            os.close(fd)
        if console_child:
            console_child.close()
    if pid is None:         # the intermediate failed before its clone: no child to say go to
        os.close(go_write)
        _wait_for_exec(None, errors_read, command, env)        # raises its one line
    try:
        os.write(go_write, b"g")
        if after_go:
            _second_go(go_write, after_go)
        master = terminal.receive_master(console) if console else None
        _wait_for_exec(pid, errors_read, command, env)
    finally:
        os.close(go_write)
    return pid, master


def _fork_from_outside(enter_pid_namespace, born_in: cgroups.Cgroup | None, in_child,
                       child) -> int:
    """The runtime enters the PID namespace for its next child, forks `child()`, and goes
    back to its own; the child does the rest itself (run's PID 1, create's process)."""
    own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_pid_namespace()
        pid = born_in.fork() if born_in else os.fork()
        if pid == 0:
            def work() -> None:
                os.close(own_pid_namespace)     # the host's PID namespace: nothing to carry in
                child()
            in_child(work)
    finally:
        namespaces.setns(own_pid_namespace, namespaces.CLONE_NEWPID)
        os.close(own_pid_namespace)
    return pid


def _fork_from_inside(enter, born_in: cgroups.Cgroup | None, in_child, child) -> int | None:
    """Fork an intermediate process, in the host's PID namespace, that runs `enter()` (join the
    container's cgroup and namespaces, the PID namespace last, for its next child), then
    clones `child()` and exits. Return the child's host PID; None if the intermediate failed
    before (it has said why on `errors`).

    The child is cloned with CLONE_PARENT (clone(2)): its parent is the runtime, not the
    intermediate, so the runtime waits for it, passes it signals and is the parent whose death
    its PR_SET_PDEATHSIG (prctl(2)) watches, exactly as for a child forked directly. (The
    other way, the runtime as a child subreaper, PR_SET_CHILD_SUBREAPER, would let the child be
    orphaned for a moment, when its parent-death signal would fire or be lost.)
    """
    pid_read, pid_write = os.pipe2(os.O_CLOEXEC)
    intermediate = born_in.fork() if born_in else os.fork()
    if intermediate == 0:
        def work() -> None:
            os.close(pid_read)
            security.die_with_parent()          # no intermediate outlives the runtime
            enter()
            pid = namespaces.fork_as_sibling()
            if pid == 0:
                os.close(pid_write)
                child()
            os.write(pid_write, pid.to_bytes(4, "little"))
            os._exit(0)
        in_child(work)
    os.close(pid_write)
    try:
        reported = os.read(pid_read, 4)
    finally:
        os.close(pid_read)
        os.waitpid(intermediate, 0)
    return int.from_bytes(reported, "little") if reported else None


def _second_go(go_write: int, work) -> None:
    """Do `work` while the child sets itself up, then tell it to go on (see fork). If the
    work fails, the exception goes up and `go` is closed on the way: the child reads end-of-file
    instead of "n" and exits before its exec, and run's cleanup removes its cgroup."""
    work()
    try:
        os.write(go_write, b"n")
    except BrokenPipeError:
        pass                            # the child has failed already: _wait_for_exec says why


def _wait_for_exec(pid: int | None, errors_read: int, command: list[str], env: dict[str, str]) -> None:
    """Block until the child has exec'd its command (the close-on-exec pipe reaches end of
    file) or has written why it could not; in that case reap it and raise its one line.
    (No `pid`: an intermediate failed before its clone, and has been reaped.)"""
    chunks = []
    while chunk := os.read(errors_read, 4096):
        chunks.append(chunk)
    os.close(errors_read)
    if pid is not None:
        if not chunks:
            return
        os.waitpid(pid, 0)
    elif not chunks:
        raise RuntimeFailure("the process joining the container ended before it made the child",
                             RUNTIME_FAILED)
    report = b"".join(chunks).decode(errors="replace")
    if report.startswith("exec "):
        raise exec_failure(command, env, int(report.split()[1]))
    code, _, message = report.partition("\n")
    raise RuntimeFailure(message, int(code))


# -- The child's side: the container as data, becoming it, the last steps, exec ----------------

@dataclass
class Process:
    """A process entering a container, in the shape of config.json's `process` (the OCI
    runtime spec's config.md): `run`'s PID 1, `minirun exec`'s command, a bundle's process
    (`minirun create`) and an engine's `minirun exec --process` are each one of these, and all
    take the same last steps (last_steps)."""
    args: list[str]
    env: dict[str, str]
    cwd: str
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    # As -u takes it (name, uid, name:group, uid:gid), looked up in the container's own
    # /etc/passwd and /etc/group once its root is in place; "" leaves root as it is; None (a
    # bundle's process): the numeric uid, gid and groups above.
    user: str | None = None
    umask: int | None = None
    terminal: bool = False
    capabilities: dict[str, frozenset] = field(default_factory=dict)   # set -> short names
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    no_new_privileges: bool = False
    oom_score_adj: int | None = None
    console_size: tuple[int, int] | None = None     # rows, columns
    init: bool = False          # --init: exec the init on /dev/init, which runs args as PID 2


@dataclass(kw_only=True)
class Config:
    """A container as config.json describes it (the runtime spec's config.md), read into data:
    what the forked child becomes (become). `minirun create` reads one from an engine's bundle
    (oci.load, whose Plan adds what the runtime does on the host); `run` makes one from its
    plan (_config)."""
    root: Path
    process: Process
    mounts: list[rootfs.Mount]                  # on the root, in order
    devices: list[rootfs.Device] = field(default_factory=list)     # beyond /dev's defaults
    namespaces: dict[str, str | None]           # config.json's type -> a path to join, or None: new
    hostname: str | None = None
    read_only: bool = False
    masked: list[str] = field(default_factory=list)
    read_only_paths: list[str] = field(default_factory=list)
    sysctl: dict[str, str] = field(default_factory=dict)
    seccomp: bytes | None = None                # an assembled filter (seccomp.py)
    uid_map: list = field(default_factory=list)     # userns.Mapping, with a new user namespace
    gid_map: list = field(default_factory=list)

def become(config: Config, cgroup: cgroups.Cgroup, link: Link, say, prepare_root, *,
            use_chroot: bool = False, own_network: bool = False, enter_user_namespace=None,
            gate=None, outlives_runtime: bool = False) -> None:
    """In the forked child: become the container `config` describes, then exec. `run`'s PID 1
    and `minirun create`'s process (oci.py) alike, in the order runc takes these steps.

    prepare_root(): puts the root in place at config.root, a mount point, in the container's
    mount namespace. own_network: the network namespace, joined, is one the runtime made for
    this container (run's bridge): `lo` is the child's to bring up, as in a new one.
    enter_user_namespace(): a bundle's user namespace (oci.py). gate, outlives_runtime: see
    last_steps.
    """
    # 1. Resources: join the container's cgroup (in the cgroup2 tree this process was born in
    #    it already: Cgroup.fork). Every process forked from here on is born in it, counted and
    #    limited with the rest of the container.
    cgroup.join()
    say("cgroup", f"joined {cgroup}")

    # 2. Namespaces: from here on, mounts, hostname, IPC, network and the cgroup tree seen are
    #    the container's own. First those to join, by path, while this process is the host's
    #    root, who may join any; then a bundle's user namespace; then the new ones. (The PID
    #    namespace was settled by the fork: see fork.) CLONE_NEWCGROUP makes the cgroup
    #    the child is in at that moment the root of what it sees: hence after the join above.
    for kind, path in config.namespaces.items():
        if path and kind not in ("pid", "user"):
            namespaces.join(path, namespaces.BY_TYPE[kind])
            say("setns", f"the {kind} namespace at {path}")
    if enter_user_namespace:
        enter_user_namespace()
    new = [kind for kind, path in config.namespaces.items()
           if not path and kind not in ("pid", "user")]
    flags = 0
    for kind in new:
        flags |= namespaces.BY_TYPE[kind]
    # A cgroup filesystem mounted outside a cgroup namespace shows the host's whole tree:
    # with a cgroup mount, the container gets a cgroup namespace of its own, asked or not.
    if any(m.type in ("cgroup", "cgroup2") for m in config.mounts) \
            and "cgroup" not in config.namespaces:
        flags |= namespaces.CLONE_NEWCGROUP
    namespaces.unshare(flags)
    say("unshare", " | ".join(name for flag, name in namespaces.FLAG_NAMES.items() if flags & flag))
    if config.hostname:
        namespaces.sethostname(config.hostname)
        say("sethostname", config.hostname)
    for key, value in config.sysctl.items():    # /proc/sys/net follows the writer's namespace
        Path("/proc/sys", *key.split(".")).write_text(value)

    # 3-4. The root filesystem: its mounts made private, then the root put in place (run: the
    #    image's layers under a writable overlay; a bundle: the engine's directory), then, from
    #    config.json's data (rootfs.assemble), the mounts (the kernel's pseudo-filesystems, a
    #    minimal /dev, -v's volumes, --init's program), the root switch (pivot_root detaches the
    #    host's filesystem; --chroot only hides it), masks over what would reveal the host, and
    #    a read-only root if asked.
    rootfs.make_mounts_private()
    say("mount", "/ made rprivate: nothing mounted from here on propagates to the host")
    prepare_root()
    rootfs.assemble(config.root, config.mounts, config.masked, config.read_only_paths,
                    config.read_only, config.process.cwd, use_chroot=use_chroot,
                    user_namespace="user" in config.namespaces, devices=config.devices)
    if use_chroot:
        say("chroot", f"{config.root} (escapable: the host's mounts are still in this namespace)")
    else:
        say("pivot_root", f"{config.root} is now /; the old root is unmounted")
    if config.read_only:
        say("mount", "/ remounted read-only (--read-only)")

    # 5. The network: `lo` up (a new namespace has it down), in a namespace of the container's
    #    own. (On run's bridge, eth0 is the runtime's work meanwhile: see _wait_for_start.)
    if "network" in new or own_network:
        network.bring_up_loopback()
        say("network", "lo up" + ("" if own_network else "; no other device"))

    # 6-12. Where the command starts, the terminal, privileges, descriptors, the system call
    #       filter, and exec: the last steps of every process entering a container.
    last_steps(config.process, link, config.seccomp, say, gate, outlives_runtime)

def last_steps(process: Process, link: Link, seccomp_filter: bytes | None, say,
                gate=None, outlives_runtime: bool = False) -> None:
    """What every process entering a container does last, then exec: `run`'s PID 1, `minirun
    exec`'s command, `minirun create`'s and an engine's exec'd process (oci.py) alike.

    gate(): the start gate, where the process, ready, waits to be started: `minirun create`'s
    FIFO (oci.py), `run`'s `go` pipe (_wait_for_start).
    outlives_runtime: the minirun that forked it exits first (`create`, `exec --detach`) and
    the engine's subreaper adopts it: no parent-death signal then.
    """
    # 6. Where it starts (made by rootfs.assemble for a first process, before any --read-only),
    #    and the limits a bundle may give it: setrlimit(2), oom_score_adj (proc(5)), umask(2).
    os.makedirs(process.cwd, exist_ok=True)
    os.chdir(process.cwd)
    for number, soft, hard in process.rlimits:
        resource.setrlimit(number, (soft, hard))
    if process.oom_score_adj is not None:
        Path("/proc/self/oom_score_adj").write_text(str(process.oom_score_adj))
    if process.umask is not None:
        os.umask(process.umask)

    # 7. Its own session, so the host terminal's Ctrl-C reaches minirun, which passes it on
    #    once; with a terminal, a pty of the container's own as its controlling terminal.
    os.setsid()
    if link.console:
        terminal.open_in_container(link.console)
        if process.console_size:        # a bundle's: the engine's window, rows and columns
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", *process.console_size, 0, 0))
        say("terminal", f"{os.ttyname(0)} of the container's own /dev/pts; its master sent to the runtime")

    # 8. Give up what the command must not have: capabilities, any new privilege, and root
    #    itself if the image, -u or the bundle names another user. Without no_new_privs,
    #    installing a seccomp filter needs CAP_SYS_ADMIN (seccomp(2)): before the drop, then.
    if seccomp_filter and not process.no_new_privileges:
        _filter_system_calls(seccomp_filter, say)
    _give_up_privileges(process, link, say, outlives_runtime)
    env = dict(process.env)
    env.setdefault("HOME", security.home_directory(os.getuid()))   # as Docker, runc: from passwd

    # 9. Nothing of the runtime's crosses but stdin, stdout and stderr.
    security.close_inherited_descriptors()
    say("exec", "every descriptor above 2 is close-on-exec")

    # 10. Ready: wait at the start gate until started.
    if gate:
        gate()

    # 11. The last step before exec: a filter on the system calls themselves. Put on last, the
    #     runtime's own set-up above is not filtered; with --init, the init is.
    if seccomp_filter and process.no_new_privileges:
        _filter_system_calls(seccomp_filter, say)

    # 12. Become the command: exec it (as PID 1 for `run`), or exec the tiny init that runs it
    #     as PID 2.
    if process.init:
        _exec_init(process.args, env, link)
    _exec(process.args, env, link)


def _give_up_privileges(process: Process, link: Link, say, outlives_runtime: bool) -> None:
    if process.user:
        ids = security.resolve_user(process.user)       # the root has changed: the container's files
    elif process.user is None:
        ids = (process.uid, process.gid, tuple(process.groups))
    else:
        ids = None
    security.drop_privileges(process.capabilities, ids, process.no_new_privileges)
    say("security", security.describe(process.capabilities["bounding"], process.no_new_privileges))
    if process.user:
        uid, gid, groups = ids
        say("security", f"setgroups {list(groups)}, setgid {gid}, setuid {uid}: no capabilities "
            "left after the exec")
    # A change of IDs clears the parent-death signal (prctl(2), PR_SET_PDEATHSIG), which would
    # let this container outlive a killed runtime unseen. Arm it again, then check that the
    # runtime did not die in between; or, for a process meant to outlive it, disarm it.
    if outlives_runtime:
        security.stay_after_parent()
    elif ids is not None:
        security.die_with_parent()
        if link.runtime_is_gone():
            os._exit(RUNTIME_FAILED)


def _filter_system_calls(program: bytes, say) -> None:
    began = time.perf_counter()
    length = seccomp.install(program)
    say("seccomp", f"filter of {length} BPF instructions installed in "
        f"{1000 * (time.perf_counter() - began):.2f} ms"
        + ("; it refuses:" if program is seccomp.DEFAULT_FILTER else ""))
    if program is seccomp.DEFAULT_FILTER:
        for line in seccomp.describe():
            say("seccomp", line)


def _exec(command: list[str], env: dict[str, str], link: Link) -> None:
    """execve the command, searching PATH inside the container; on failure report the errno."""
    signals.reset_for_exec()
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        os.write(link.errors, f"exec {error.errno}".encode())
        os._exit(exec_failure(command, env, error.errno).exit_code)


def _exec_init(command: list[str], env: dict[str, str], link: Link) -> None:
    """--init: exec minirun/init.c's program as PID 1, as `docker run --init` runs tini.

    It forks the command, passes signals on, reaps orphans, and exits with the command's status
    (see init.c for why PID 1 needs that, and why it is not Python). The signals minirun holds
    stay blocked across this exec, so none sent meanwhile is lost: the init waits for them. Its
    descriptor 3 is our report pipe, for an exec of the command that fails.
    """
    if link.errors != 3:
        os.dup2(link.errors, 3)
    os.set_inheritable(3, True)
    try:
        os.execve(rootfs.INIT_PATH, [rootfs.INIT_PATH, "--", *command], env)
    except OSError as error:
        _fail(link.errors, RUNTIME_FAILED, f"cannot run {rootfs.INIT_PATH}: {error.strerror}")


def exec_failure(command: list[str], env: dict[str, str], error_number: int) -> RuntimeFailure:
    """The one line for a command that could not be exec'd: 127 not found, 126 not executable."""
    if error_number in (errno.ENOENT, errno.ENOTDIR):
        return RuntimeFailure(f"{command[0]!r} not found in the container "
                              f"(PATH={env.get('PATH', '')}): check the command and the image",
                              NOT_FOUND)
    return RuntimeFailure(f"{command[0]!r} cannot be executed in the container: "
                          f"{os.strerror(error_number)}", CANNOT_EXECUTE)


def _fail(errors: int, code: int, message: str) -> None:
    os.write(errors, f"{code}\n{message}".encode())
    os._exit(code)
