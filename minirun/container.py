"""The story of a container run, step by step.

`run` is what a runtime does, in order, on the host side; `_become_container` is what the
forked child does to turn itself into the container's PID 1. Each step is one call into the
module that owns the mechanism: image, cgroups, rootfs, namespaces, network, security, state. The
chapters of docs/minirun.md follow the same order.
"""
import os
import re
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Everything the child uses must be imported here, before it forks: after pivot_root the host's
# files, Python's own modules among them, are out of its reach.
from minirun import cgroups, namespaces, network, rootfs, security, signals, state, terminal
from minirun.errors import (CANNOT_EXECUTE, NOT_FOUND, RUNTIME_FAILED, RuntimeFailure,
                            status_from_wait)
from minirun.image import Image, Store, store_root
from minirun.units import format_size, parse_count, parse_cpus, parse_size

# Everything but the PID namespace, which the parent asks for on the child's behalf (see _start).
# CLONE_NEWCGROUP makes the cgroup the child is in at that moment the root of what it sees, so
# the child unshares only after it has joined the container's cgroup.
CONTAINER_NAMESPACES = (namespaces.CLONE_NEWNS | namespaces.CLONE_NEWUTS | namespaces.CLONE_NEWIPC
                        | namespaces.CLONE_NEWNET | namespaces.CLONE_NEWCGROUP)


@dataclass
class ContainerSpec:
    """What the user asked for: `minirun run [OPTIONS] IMAGE [COMMAND...]`."""
    image: str
    command: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    hostname: str | None = None
    name: str | None = None
    user: str | None = None
    tty: bool = False
    use_init: bool = False
    use_chroot: bool = False
    explain: bool = False
    stats: bool = False
    limits: cgroups.Limits = field(default_factory=cgroups.Limits)

    @classmethod
    def from_options(cls, image: str, command: list[str], options: dict) -> "ContainerSpec":
        """Check every flag before anything is created, so a bad one leaves nothing behind.
        A flag given empty (`--memory ''`) is a mistake, not the same as leaving it out."""
        workdir = options.get("workdir")
        check_env_and_workdir(options.get("env") or (), workdir)
        if command and not command[0]:
            raise RuntimeFailure("the command is empty: give a program to run, or none for the "
                                 "image's own", NOT_FOUND)
        name = options.get("name")
        if name is not None and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name, re.ASCII):
            raise RuntimeFailure(f"invalid container name {name!r}: use two or more letters, "
                                 "digits, '_', '.' or '-', starting with a letter or digit")
        memory, cpus, pids = options.get("memory"), options.get("cpus"), options.get("pids_limit")
        return cls(image=image, command=command, env=list(options.get("env") or ()),
                   workdir=workdir, hostname=options.get("hostname"), name=name,
                   user=options.get("user"),
                   tty=bool(options.get("tty")), use_init=bool(options.get("use_init")),
                   use_chroot=bool(options.get("use_chroot")), explain=bool(options.get("explain")),
                   stats=bool(options.get("stats")),
                   limits=cgroups.Limits(
                       memory=_memory_limit(memory) if memory is not None else None,
                       cpus=parse_cpus(cpus) if cpus is not None else None,
                       pids=parse_count(pids, "pids limit") if pids is not None else None))


# Docker's floor for --memory: below it the runtime's own steps and the first exec of the
# command do not fit, and the kernel's OOM killer ends the container before it starts.
SMALLEST_MEMORY_LIMIT = 6 * 1024 ** 2


def _memory_limit(text: str) -> int:
    limit = parse_size(text)
    if limit < SMALLEST_MEMORY_LIMIT:
        raise RuntimeFailure(f"--memory {text} is too little for a container: give at least "
                             f"{format_size(SMALLEST_MEMORY_LIMIT)}")
    with open("/proc/meminfo") as meminfo:        # "MemTotal:  24591468 kB", first line
        total = int(meminfo.readline().split()[1]) * 1024
    if limit > total:
        raise RuntimeFailure(f"--memory {text} is more than this machine has "
                             f"({format_size(total)}): give less")
    return limit


def check_env_and_workdir(env, workdir: str | None) -> None:
    for item in env:
        if "=" not in item or item.startswith("="):
            raise RuntimeFailure(f"invalid environment variable {item!r}: use -e KEY=VALUE")
    if workdir is not None and not workdir.startswith("/"):
        raise RuntimeFailure(f"invalid working directory {workdir!r}: give an absolute path")


@dataclass
class Plan:
    """What will run: the spec resolved against the image."""
    id: str
    image: Image
    command: list[str]
    env: dict[str, str]
    workdir: str
    hostname: str
    user: str                   # "" for root, else as -u takes it: name, uid, name:group, uid:gid
    spec: ContainerSpec


def run(spec: ContainerSpec) -> int:
    """Run one container to completion and return its exit status (as `docker run --rm` would)."""
    say = _narrator(spec.explain)
    _require_root()
    collect_garbage(everything=False)                       # what killed runs left behind

    # 1. The image: its layers, and its defaults for command, environment and working directory.
    image = Store().get(spec.image)
    plan = _plan(spec, image)
    say("image", f"{image.name}: {len(image.layers)} layer(s); command {plan.command}")

    record = state.ContainerRecord(id=plan.id, name=spec.name or plan.id[:12], image=image.name,
                                   command=plan.command, runtime_pid=os.getpid(),
                                   runtime_start=state.start_time(os.getpid()), created=time.time(),
                                   workdir=plan.workdir, user=plan.user)
    bundle = cgroup = None
    # From here to the end of the cleanup, signals sent to minirun wait, held, until step 6
    # passes them on to the container: none can cut a step, or the cleanup, short. (They have
    # been held since minirun started, see cli.py; one that came before the container exists
    # ends the run between two steps, in _stop_if_interrupted.)
    with signals.held():
        try:
            _stop_if_interrupted()

            # 2. A bundle directory on the host for the container's writes (overlayfs upper/work),
            #    and beside it a lock this minirun holds as long as it lives: the proof, for any
            #    later gc, that the container is not garbage.
            bundle = rootfs.create_bundle(store_root() / "containers", plan.id,
                                          state.record_path(plan.id))
            say("bundle", f"{bundle.path} holds the writable layer; {bundle.lock_path.name} is held")

            # 3. A record in the state directory, so `minirun ps` and `minirun gc` can find it,
            #    under a name no running container has.
            state.claim(record)
            _stop_if_interrupted()

            # 4. A cgroup with the container's limits, made before the fork: the child's first
            #    step is to join it, so nothing of the container ever runs outside its limits.
            cgroup = cgroups.create(plan.id, spec.limits)
            say("cgroup", f"{cgroup}: {', '.join(cgroup.written) or 'no limits, usage counted'}")
            _stop_if_interrupted()

            # 5. Fork the container's PID 1 into new namespaces; it builds its own root and execs.
            child, pty_master = _start(plan, bundle, cgroup, say)
            record.pid, record.pid_start = child, state.start_time(child)
            state.save(record)

            # 6. Stand by: pass signals on (and with -t relay the terminal) until PID 1 exits.
            status = _supervise(child, pty_master)
            say("exit", f"PID 1 ended with status {status}; the kernel has killed the rest of its PID namespace")

            # 7. What the kernel counted in the cgroup: an OOM kill, and with --stats the usage.
            _report_usage(cgroup.usage(), spec)
            return status
        finally:
            # 8. Leave nothing behind. The mounts went away with the mount namespace. The cgroup
            #    goes too, after its last processes are killed (normally none: they died with PID 1).
            #    The lock goes last, with the bundle: until then, no gc takes any of this for garbage.
            if cgroup:
                cgroup.remove()
            state.release(state.record_path(plan.id))
            if bundle:
                rootfs.remove_bundle(bundle)


def _stop_if_interrupted() -> None:
    """A Ctrl-C (or `kill`) that came before the container exists ends the run, here, between
    two steps; the cleanup then removes what the steps made. (Once the container runs, such a
    signal is passed on to it instead, and its status is the run's.)"""
    pending = signal.sigpending() & set(signals.FORWARDED)
    if pending:
        sig = min(pending)
        raise RuntimeFailure(f"interrupted by {signal.Signals(sig).name} before the container "
                             "started", 128 + sig)


def _report_usage(usage: cgroups.Usage, spec: ContainerSpec) -> None:
    """One line if the kernel OOM-killed a process of the container; the usage with --stats."""
    if usage.oom_killed and spec.limits.memory:
        print(f"minirun: the container ran out of memory at its limit of "
              f"{format_size(spec.limits.memory)} and the kernel killed a process in it "
              "(give it more with --memory)", file=sys.stderr)
    elif usage.oom_killed:
        print("minirun: the machine ran out of memory and the kernel killed a process in the "
              "container", file=sys.stderr)
    if spec.stats:
        print(_stats_line(usage), file=sys.stderr)


def _stats_line(usage: cgroups.Usage) -> str:
    parts = []
    if usage.peak_memory is not None:
        parts.append(f"peak memory {format_size(usage.peak_memory)}")
    if usage.cpu_seconds is not None:
        parts.append(f"CPU time {usage.cpu_seconds:.3f}s")
    if usage.throttled_periods:
        parts.append(f"throttled in {usage.throttled_periods} periods "
                     f"({usage.throttled_seconds:.3f}s waiting)")
    if usage.pids_refused:
        parts.append(f"{usage.pids_refused} forks refused by the pids limit")
    return "minirun: stats: " + ", ".join(parts)


def _plan(spec: ContainerSpec, image: Image) -> Plan:
    command = image.config.command(spec.command)
    if not command:
        raise RuntimeFailure(f"image {image.name!r} has no default command: "
                             f"give one, as in `minirun run {image.name} /bin/sh`")
    container_id = os.urandom(32).hex()
    hostname = spec.hostname or container_id[:12]
    env = image.config.environment(spec.env)
    env.setdefault("HOSTNAME", hostname)
    if spec.tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    return Plan(id=container_id, image=image, command=command, env=env,
                workdir=spec.workdir or image.config.workdir or "/", hostname=hostname,
                user=spec.user if spec.user is not None else image.config.user, spec=spec)


def _start(plan: Plan, bundle: rootfs.Bundle, cgroup: cgroups.Cgroup,
           say) -> tuple[int, int | None]:
    """Fork the child that becomes the container; return its host PID and the pty master, if any.

    The child is forked straight into a new PID namespace: unshare(CLONE_NEWPID) does not move
    the caller, it makes the caller's *next* child PID 1 of a new namespace. Right after the
    fork the parent goes back to its own PID namespace for any later children.

    Two pipes tie parent and child together:
    - `go`: the child waits on it until the parent has done its part, so nothing of the
      container runs before the parent is ready for it; end-of-file instead means the parent
      died before the child's parent-death signal was armed, and the child gives up;
    - `errors`: close-on-exec, so it reaches end-of-file exactly when the command has been
      exec'd; if setup or exec fails instead, the child writes why into it first.
    """
    go_read, go_write = os.pipe()
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    master, slave = os.openpty() if plan.spec.tty else (None, None)
    own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    namespaces.unshare(namespaces.CLONE_NEWPID)
    say("unshare", "CLONE_NEWPID: the next child will be PID 1 of a new PID namespace")
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.close(errors_read)
        if master is not None:
            os.close(master)
        try:
            _become_container(plan, bundle, cgroup, go_read, errors_write, slave, say)  # no return
        finally:
            os._exit(RUNTIME_FAILED)    # never fall back into the parent's code
    namespaces.setns(own_pid_namespace, namespaces.CLONE_NEWPID)
    os.close(own_pid_namespace)
    os.close(go_read)
    os.close(errors_write)
    if slave is not None:
        os.close(slave)

    # (The parent's work between fork and go goes here: the child is paused, not yet confined.)
    os.write(go_write, b"g")
    os.close(go_write)

    _wait_for_exec(pid, errors_read)
    say("exec", f"container PID 1 is host PID {pid}, running {plan.command}")
    return pid, master


def _become_container(plan: Plan, bundle: rootfs.Bundle, cgroup: cgroups.Cgroup, go: int,
                      errors: int, slave: int | None, say) -> None:
    """In the forked child, now PID 1 of a new PID namespace: become the container, then exec."""
    try:
        security.die_with_parent()
        if os.read(go, 1) != b"g":               # the parent died before saying go
            os._exit(RUNTIME_FAILED)
        os.close(go)

        # 1. Resources: join the container's cgroup. Every process forked from here on is
        #    born in it, counted and limited with the rest of the container.
        cgroup.join()
        say("cgroup", f"joined {cgroup}")

        # 2. Namespaces: from here on, mounts, hostname, IPC, network and the cgroup tree seen
        #    are the container's own.
        namespaces.unshare(CONTAINER_NAMESPACES)
        say("unshare", "CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP")
        namespaces.sethostname(plan.hostname)
        say("sethostname", plan.hostname)

        # 3. The root filesystem: the image's layers under a writable overlay, then the kernel's
        #    pseudo-filesystems, a minimal /dev, and masks over what would reveal the host.
        rootfs.make_mounts_private()
        say("mount", "/ made rprivate: nothing mounted from here on propagates to the host")
        rootfs.mount_overlay(plan.image.layers, bundle)
        say("mount", f"overlay on {bundle.merged} (upperdir {bundle.upper})")
        root = bundle.merged
        rootfs.mount_proc(root)
        rootfs.mount_dev(root)
        rootfs.mount_sys(root)
        cgroups.mount_view(str(root / "sys/fs/cgroup"))
        rootfs.mask_host_paths(root)
        say("mount", "/proc, /dev (null zero full random urandom tty pts shm), /sys read-only, "
            "its own cgroups read-only on /sys/fs/cgroup, masks")

        # 4. Change root: pivot_root detaches the host's filesystem; chroot only hides it.
        if plan.spec.use_chroot:
            rootfs.chroot_into(root)
            say("chroot", f"{root} (escapable: the host's mounts are still in this namespace)")
        else:
            rootfs.pivot_into(root)
            say("pivot_root", f"{root} is now /; the old root is unmounted")

        # 5. The network namespace holds only `lo`; bring it up.
        network.bring_up_loopback()
        say("network", "lo up; no other device")

        # 6. Where the command starts, on which terminal.
        os.makedirs(plan.workdir, exist_ok=True)
        os.chdir(plan.workdir)
        _attach_stdio(slave)

        # 7. Give up what the command must not have: most capabilities, any new privilege, and
        #    root itself if the image or -u names another user.
        _give_up_privileges(plan.user, say)
    except OSError as error:
        _fail(errors, RUNTIME_FAILED, f"setting up the container failed: {error}")
    except RuntimeFailure as error:
        _fail(errors, error.exit_code, str(error))
    except Exception as error:   # a bug: still one line, and the parent cleans up
        _fail(errors, RUNTIME_FAILED, f"internal error while setting up the container: {error!r}")

    # 8. Become the command: exec it as PID 1, or run a tiny init that execs it as PID 2.
    if plan.spec.use_init:
        _run_init(plan, errors)
    _exec(plan.command, plan.env, errors)


def _give_up_privileges(user: str, say) -> None:
    security.drop_privileges()
    say("security", "capabilities cut to Docker's default set; no_new_privs set")
    if user:
        uid, gid, groups = security.switch_user(user)
        say("security", f"setgroups {list(groups)}, setgid {gid}, setuid {uid}: no capabilities left")


def _attach_stdio(slave: int | None) -> None:
    """Put the container in a session of its own, so the host terminal's Ctrl-C reaches
    minirun, which forwards it once. With -t, the pty becomes its controlling terminal."""
    os.setsid()
    if slave is not None:
        terminal.become_controlling_terminal(slave)


def _exec(command: list[str], env: dict[str, str], errors: int) -> None:
    """execve the command, searching PATH inside the container; on failure report 126 or 127."""
    signals.reset_for_exec()
    try:
        os.execvpe(command[0], command, env)
    except (FileNotFoundError, NotADirectoryError):
        _fail(errors, NOT_FOUND, f"{command[0]!r} not found in the container "
              f"(PATH={env.get('PATH', '')}): check the command and the image")
    except OSError as error:
        _fail(errors, CANNOT_EXECUTE, f"{command[0]!r} cannot be executed in the container: "
              f"{error.strerror}")


def _run_init(plan: Plan, errors: int) -> None:
    """--init: PID 1 is this tiny init, as with `docker run --init` (tini).

    A process that happens to be PID 1 has two jobs it may not know about: the kernel gives it
    every orphaned process to reap (or they stay zombies), and it ignores every signal it has
    no handler for, so a plain `sleep` as PID 1 shrugs off Ctrl-C. This init forks the command,
    passes signals on to it, reaps everything, and exits with the command's status.
    """
    command_pid = os.fork()             # signals are still held: the mask was inherited from minirun
    if command_pid == 0:
        _exec(plan.command, plan.env, errors)
    os.close(errors)                    # the parent's EOF must come from the command's exec
    os._exit(_supervise(command_pid))


def _fail(errors: int, code: int, message: str) -> None:
    os.write(errors, f"{code}\n{message}".encode())
    os._exit(code)


def _supervise(pid: int, pty_master: int | None = None) -> int:
    """Until `pid` exits, pass on each signal sent to us, reap every child (orphans too, when we
    are an init) and, with -t, relay the terminal until its container side is closed, so that
    the last of the output is copied too. Return `pid`'s exit status.

    The signals have been held since before the fork; they arrive here through a signalfd, as
    events of the same select() loop as the terminal's bytes (see signals.py for why).
    """
    watched = signals.SignalFd()
    relay = terminal.Relay(pty_master) if pty_master is not None else None
    status = None
    try:
        while status is None or (relay and relay.container_side_open):
            readers, writers = [watched], []
            if relay:
                readers, writers = readers + relay.readers(), relay.writers()
            readable, writable, _ = select.select(readers, writers, [])
            for sig in watched.read():  # first, so a signal acts before bytes typed after it
                if sig == signal.SIGCHLD:
                    status = _reap_children(pid, status)
                elif sig == signal.SIGWINCH:
                    if relay:
                        relay.copy_window_size()
                elif status is None:    # until reaped, `pid` cannot be another process's
                    os.kill(pid, sig)
            if relay:
                relay.pump(readable, writable)
        return status_from_wait(status)
    finally:
        watched.close()
        if relay:
            relay.close()


def _reap_children(pid: int, status: int | None) -> int | None:
    """Reap every child that has exited; return `pid`'s wait status once it is one of them."""
    while True:
        try:
            reaped, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:       # no children left
            return status
        if reaped == 0:
            return status
        if reaped == pid:
            status = wait_status


def _wait_for_exec(pid: int, errors_read: int) -> None:
    """Block until the child has exec'd its command (the close-on-exec pipe reaches end of
    file) or has written why it could not; in that case reap it and raise its one line."""
    chunks = []
    while chunk := os.read(errors_read, 4096):
        chunks.append(chunk)
    os.close(errors_read)
    if chunks:
        code, _, message = b"".join(chunks).decode(errors="replace").partition("\n")
        os.waitpid(pid, 0)
        raise RuntimeFailure(message, int(code))


# -- Joining a running container: `minirun exec` and `minirun stop` -----------------------------

# The namespaces `exec` joins besides the PID namespace, through the files the kernel keeps for
# every namespace of every process in /proc/PID/ns/ (namespaces(7)). The mount namespace comes
# last: joining it also moves the process's root and working directory to that namespace's root
# (setns(2)), after which the host's /proc and /sys/fs/cgroup are out of its reach.
JOINED_NAMESPACES = ("cgroup", "ipc", "uts", "net", "mnt")


def exec_in(target: str, command: list[str], env: list[str], workdir: str | None = None,
            user: str | None = None, tty: bool = False, explain: bool = False) -> int:
    """`minirun exec`: run one more command inside a running container; return its status.

    There is no "inside" apart from namespaces and a cgroup: a process that joins all of a
    container's is in that container, as much as its PID 1 is. setns(2) joins them. As in
    `run`, the PID namespace is joined by the parent for its next child only.
    """
    say = _narrator(explain)
    check_env_and_workdir(env, workdir)
    _require_root()
    record = find_running(target)
    pid1 = record.pid
    joined = {name: os.open(f"/proc/{pid1}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
              for name in (*JOINED_NAMESPACES, "pid")}
    _confirm_still_running(record)        # the fds are PID 1's own, not a later holder of its PID's
    environment = dict(_environment_of(pid1), **dict(item.split("=", 1) for item in env))
    cgroup = cgroups.of_container(record.id)
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    master, slave = os.openpty() if tty else (None, None)
    own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    with signals.held():                 # as in `run`: see signals.py and _supervise
        namespaces.setns(joined.pop("pid"), namespaces.CLONE_NEWPID)
        say("setns", f"PID namespace of container {record.id[:12]} (for the next child)")
        pid = os.fork()
        if pid == 0:
            try:
                os.close(errors_read)
                security.die_with_parent()
                cgroup.join()
                say("cgroup", f"joined {cgroup}")
                for name in JOINED_NAMESPACES:
                    namespaces.setns(joined[name])
                say("setns", f"{', '.join(JOINED_NAMESPACES)} namespaces of PID {pid1}: now inside")
                os.makedirs(workdir or record.workdir, exist_ok=True)
                os.chdir(workdir or record.workdir)
                _attach_stdio(slave)
                _give_up_privileges(record.user if user is None else user, say)
                _exec(command, environment, errors_write)
            except RuntimeFailure as error:
                _fail(errors_write, error.exit_code, str(error))
            except Exception as error:
                _fail(errors_write, RUNTIME_FAILED, f"joining the container failed: {error}")
            finally:
                os._exit(RUNTIME_FAILED)
        namespaces.setns(own_pid_namespace, namespaces.CLONE_NEWPID)
        for fd in (own_pid_namespace, errors_write, *joined.values()):
            os.close(fd)
        if slave is not None:
            os.close(slave)
        _wait_for_exec(pid, errors_read)
        return _supervise(pid, master)


def stop(target: str, grace: float = 10.0) -> str:
    """`minirun stop`: SIGTERM, then SIGKILL if the container is still there after `grace`
    seconds, as `docker stop` does. Returns the container's id.

    SIGTERM goes to the runtime, which passes it on to PID 1 like any forwarded signal; a PID 1
    with no handler for it ignores it (see docs/minirun.md, "PID 1 is special"), which is what
    the SIGKILL is for: from outside its namespace, SIGKILL always reaches PID 1. Both go
    through pidfds (pidfd_open(2)), so a PID reused after the container ended cannot be hit.
    """
    import select
    record = find_running(target)
    runtime, pid1 = os.pidfd_open(record.runtime_pid), os.pidfd_open(record.pid)
    try:
        _confirm_still_running(record)    # a pidfd pins its process: check that it is ours
        signal.pidfd_send_signal(runtime, signal.SIGTERM)
        if not select.select([runtime], [], [], grace)[0]:     # readable when it has exited
            try:
                signal.pidfd_send_signal(pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            select.select([runtime], [], [], 30)
    finally:
        os.close(runtime)
        os.close(pid1)
    return record.id


def find_running(target: str) -> state.ContainerRecord:
    """The running container whose name is `target`, or whose id starts with it."""
    running = [r for r in state.containers() if state.is_alive(r) and state.pid1_is_running(r)]
    matches = [r for r in running if target and r.name == target] or \
              [r for r in running if target and r.id.startswith(target)]
    if len(matches) != 1:
        what = "no running container" if not matches else "more than one container matches"
        raise RuntimeFailure(f"{what} {target!r}: give a name or id from `minirun ps`")
    return matches[0]


def _confirm_still_running(record: state.ContainerRecord) -> None:
    """After a PID has been turned into a handle (a pidfd, a namespace fd), check that the
    process behind it is still the one the record names, by its start time."""
    if not (state.is_alive(record) and state.pid1_is_running(record)):
        raise RuntimeFailure(f"container {record.id[:12]} has just ended")


def _environment_of(pid: int) -> dict[str, str]:
    """The environment PID 1 started with, the base of an exec'd command's (as docker exec)."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        pairs = [item.decode(errors="replace").partition("=") for item in environ.read().split(b"\0") if item]
    return {key: value for key, _, value in pairs}


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeFailure("creating namespaces and mounts needs root: run minirun with sudo")


def collect_garbage(everything: bool = True) -> list[str]:
    """Remove what minirun processes killed with SIGKILL left behind: their cgroups, bundles
    and records. Return the ids of the containers removed.

    Every run starts with the quick pass (everything=False): each bundle in the store sits
    beside a lock its minirun holds for life, so the locks that can be taken are exactly the
    dead containers, whichever state directory recorded them; each one's cgroup is removed by
    its id, without reading the cgroup trees. A running container costs this pass three system
    calls (open, flock, close: about 10 to 20 µs here), and nothing else.

    `minirun gc` (everything=True) also looks for what that pass cannot see: records of dead
    minirun processes in this state directory (with a bundle in another store, or none yet),
    cgroups under minirun/ that no one owns, half-written records, names of gone records.
    """
    containers_dir = store_root() / "containers"
    removed, held = set(), set()
    names = set(os.listdir(containers_dir)) if containers_dir.is_dir() else set()
    for name in names - {name for name in names if name.startswith(".")}:
        container_id = name.removesuffix(".lock")
        if name != container_id:
            lock = state.take_if_free(containers_dir / name)
            if lock is None:
                held.add(container_id)          # its minirun is alive (or just removed it)
                continue
        elif f"{name}.lock" in names or (containers_dir / f"{name}.lock").exists():
            continue                            # the bundle's lock decides, above
        else:
            # A bundle without its lock: the lock is made before the bundle and removed after
            # it, so this is a bundle whose removal was cut short.
            lock = None
        bundle = rootfs.Bundle(containers_dir / container_id, lock)
        note = Path(os.pread(lock, 4096, 0).decode(errors="replace")) if lock else None
        record_file = note if note and note.is_absolute() and note.name == f"{container_id}.json" \
            else None
        if _remove_container(container_id, bundle, record_file):
            removed.add(container_id)
    if everything:
        for record in state.containers():
            if record.id not in held and not state.is_alive(record):
                bundle = rootfs.Bundle(containers_dir / record.id)
                bundle.lock = state.take_if_free(bundle.lock_path)
                if bundle.lock is None and bundle.lock_path.exists():
                    continue                # its lock is held: not dead yet (its --init, dying)
                if _remove_container(record.id, bundle, state.record_path(record.id)):
                    removed.add(record.id)
        live = held | {record.id for record in state.containers() if state.is_alive(record)}
        removed.update(cgroups.remove_stale(live, dead_ids=removed))
        state.remove_stale_temporaries()
    return sorted(removed)


def _remove_container(container_id: str, bundle: rootfs.Bundle, record_file: Path | None) -> bool:
    """What a dead minirun left of one container: its cgroup (killing what still runs in it),
    its record, then its bundle and, last, its lock. If the cgroup will not go yet (its
    processes still exiting), all of it stays, the lock let go, for the next pass."""
    try:
        cgroups.of_container(container_id).remove()
    except RuntimeFailure:
        if bundle.lock is not None:
            os.close(bundle.lock)
        return False
    if record_file:
        state.release(record_file)
    rootfs.remove_bundle(bundle)
    return True


def _narrator(explain: bool):
    """--explain: each step as it happens, on stderr, with the milliseconds since the run began."""
    if not explain:
        return lambda step, detail: None
    began = time.monotonic()

    def say(step: str, detail: str) -> None:
        elapsed = 1000 * (time.monotonic() - began)
        print(f"{elapsed:7.2f} ms  minirun[{os.getpid()}] {step:<12} {detail}", file=sys.stderr, flush=True)
    return say
