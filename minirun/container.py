"""The story of a container run, step by step.

`run` is what a runtime does, in order, on the host side; `_become` is what the forked child
does to turn itself into the container's PID 1, from the container as config.json's data
(`Config`): the same function makes an engine's bundle under `minirun create` (oci.py). Each
step is one call into the module that owns the mechanism: image, cgroups, rootfs, namespaces,
network, security, state. The chapters of docs/minirun.md follow the same order.

The fork into a PID namespace (`_fork_child`), the child's last steps before exec (`_last_steps`,
given a `Process` in the shape of config.json's) and the standing by (`_supervise`) are `minirun
exec`'s too (enter.py), as are `run`'s first checks; the fork and the last steps are also those
of the OCI commands, `create` and an engine's exec (oci.py). What happens to a container from
outside lives beside this file: found and stopped in lifecycle.py, and what killed runs left
behind removed in garbage.py.
"""
import errno
import fcntl
import json
import os
import re
import resource
import select
import signal
import socket
import stat
import struct
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# Everything the child uses must be imported here, before it forks: after pivot_root the host's
# files, Python's own modules among them, are out of its reach.
from minirun import (cgroups, garbage, namespaces, network, rootfs, seccomp, security, signals,
                     state, terminal)
from minirun.errors import (CANNOT_EXECUTE, NOT_FOUND, RUNTIME_FAILED, RuntimeFailure,
                            status_from_wait)
from minirun.image import Image, Store, store_root
from minirun.narrator import narrator
from minirun.units import format_size, parse_count, parse_cpus, parse_size

OCI_VERSION = "1.0.2"       # of the runtime spec whose config.json `run` writes, and oci.py reads


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
    seccomp: bool = True        # the default system call filter (seccomp.py)
    limits: cgroups.Limits = field(default_factory=cgroups.Limits)
    privileges: security.Privileges = field(default_factory=security.Privileges)
    read_only: bool = False
    interactive: bool = False
    remove: bool = False        # --rm: only `run -d` keeps an exited container (supervisor.py)
    id: str | None = None       # chosen by the caller (the supervisor), else at random
    notify_fd: int | None = None    # "s" is written here once the command has been exec'd
    network: str = "bridge"     # bridge, none or host (network.py)
    publish: list = field(default_factory=list)         # ports.Port, from -p
    add_hosts: list = field(default_factory=list)       # (name, address), from --add-host
    volumes: list[rootfs.Volume] = field(default_factory=list)     # -v HOST_DIR:DIR[:ro]

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
                   seccomp=seccomp.wanted(options.get("security_opt") or ()),
                   limits=cgroups.Limits(
                       memory=_memory_limit(memory) if memory is not None else None,
                       cpus=parse_cpus(cpus) if cpus is not None else None,
                       pids=parse_count(pids, "pids limit") if pids is not None else None),
                   privileges=security.Privileges.from_options(options.get("cap_add") or (),
                                                               options.get("cap_drop") or (),
                                                               bool(options.get("privileged"))),
                   read_only=bool(options.get("read_only")),
                   interactive=bool(options.get("interactive")),
                   remove=bool(options.get("remove")),
                   volumes=[rootfs.parse_volume(text) for text in options.get("volumes") or ()],
                   **_network_options(options))


def _network_options(options: dict) -> dict:
    """--network, -p and --add-host, checked: a bad one fails before anything is made."""
    from minirun import hosts, ports
    mode = network.check_mode(options.get("network") or "bridge")
    try:
        publish = [ports.parse(text) for text in options.get("publish") or ()]
        add_hosts = [hosts.check_add_host(text) for text in options.get("add_host") or ()]
    except ValueError as error:
        raise RuntimeFailure(str(error)) from None
    if publish and mode == "none":
        raise RuntimeFailure("-p publishes a port of the container's network: it has none with "
                             "--network none (use the default, --network bridge)")
    if publish and mode == "host":
        print("minirun: warning: published ports are discarded with --network host: the "
              "container's ports are the host's", file=sys.stderr)
        publish = []
    return {"network": mode, "publish": publish, "add_hosts": add_hosts}


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


class Plan(NamedTuple):     # (a NamedTuple: a third of a dataclass's cost to define)
    """What will run: the spec resolved against the image."""
    id: str
    image: Image
    command: list[str]
    env: dict[str, str]
    workdir: str
    hostname: str
    user: str                   # "" for root, else as -u takes it: name, uid, name:group, uid:gid
    privileges: security.Privileges
    seccomp: bool               # the default system call filter (seccomp.py), off if privileged
    init_binary: str | None     # --init: the host path of the program bind-mounted as /dev/init
    # The root filesystem as data, in the shape of an OCI bundle's (rootfs.assemble):
    mounts: list[rootfs.Mount]  # on the overlay, in order
    masked: list[str]           # hidden paths; none with --privileged
    read_only_paths: list[str]
    spec: ContainerSpec


def run(spec: ContainerSpec) -> int:
    """Run one container to completion and return its exit status (as `docker run --rm` would)."""
    say = narrator("minirun", spec.explain)
    _require_root()
    garbage.collect(everything=False)                       # what killed runs left behind
    if spec.use_chroot:
        print("minirun: warning: --chroot is escapable: a root process in the container can "
              "get back to the host's files (see docs/minirun.md)", file=sys.stderr)
    if spec.privileges.privileged:
        print("minirun: warning: --privileged: every capability, no seccomp filter, every "
              "device, /proc and /sys unmasked and writable: the container is root on this host",
              file=sys.stderr)

    # 1. The image: its layers, and its defaults for command, environment and working directory.
    image = Store().get(spec.image)
    plan = _plan(spec, image)
    say("image", f"{image.name}: {len(image.layers)} layer(s); command {plan.command}")

    record = state.ContainerRecord(id=plan.id, name=spec.name or plan.id[:12], image=image.name,
                                   command=plan.command, runtime_pid=os.getpid(),
                                   runtime_start=state.start_time(os.getpid()), created=time.time(),
                                   workdir=plan.workdir, user=plan.user,
                                   capabilities=sorted(plan.privileges.capabilities),
                                   privileged=plan.privileges.privileged,
                                   seccomp=plan.seccomp)
    bundle = cgroup = net = None
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
            cgroup = cgroups.create(plan.id, spec.limits,
                                    allow_all_devices=spec.privileges.privileged)
            say("cgroup", f"{cgroup}: {', '.join(cgroup.written) or 'no limits, usage counted'}")
            _stop_if_interrupted()

            # 4b. The network (network.py): with a bridge, an address and an empty network
            #     namespace; the /etc files naming the container; the published ports' sockets.
            net = network.ContainerNetwork(spec.network, spec.publish, spec.add_hosts)
            net.prepare(plan.id, record.name, plan.hostname, bundle.upper, say)
            _stop_if_interrupted()

            # 4c. The container as data in the shape of an OCI bundle's config.json (_config),
            #     written as BUNDLE/config.json too, so that a reader can `cat` what run asks for.
            config = _config(plan, bundle, net)
            say("bundle", f"{_write_config(config, plan, bundle)}: the container, as an engine's "
                "bundle says it")

            # 5. Create, then start. Fork the container's PID 1 into new namespaces; it becomes the
            #    container from that data by the very steps `minirun create` takes for an engine's
            #    bundle (_become), with two of run's own (the image's overlay as its root; on the
            #    bridge, `lo` up in the namespace the runtime made), and waits at the start gate,
            #    the last step before exec, as a bundle's process waits after `create`. Meanwhile
            #    the runtime does what an engine does to a created container: it wires its network
            #    (veth, address, route). Then start: one byte on `go` opens the gate, and it execs.
            child, pty_master = _fork_child(
                lambda: _new_pid_namespace(say),
                lambda link: _become(config, cgroup, link, say,
                                     lambda: _mount_overlay(plan, bundle, say),
                                     use_chroot=spec.use_chroot,
                                     own_network=net.attachment is not None,
                                     gate=lambda: _wait_for_start(net, link, say)),
                spec.tty, "setting up the container failed", plan.command, plan.env,
                after_go=lambda: net.wire(say) if net.attachment else None, born_in=cgroup)
            say("exec", f"container PID 1 is host PID {child}, running {plan.command}")
            record = record._replace(pid=child, pid_start=state.start_time(child))
            state.save(record)
            net.publish(say)
            if spec.notify_fd is not None:          # a supervisor's cue: the command runs
                os.write(spec.notify_fd, b"s")
                os.close(spec.notify_fd)

            # 6. Stand by: pass signals on (and with -t relay the terminal) until PID 1 exits.
            status = _supervise(child, pty_master)
            say("exit", f"PID 1 ended with status {status}; the kernel has killed the rest of its PID namespace")

            # 7. What the kernel counted in the cgroup: an OOM kill, and with --stats the usage.
            _report_usage(cgroup.usage(), spec)
            return status
        finally:
            # 8. Leave nothing behind. The mounts went away with the mount namespace. The cgroup
            #    goes too, after its last processes are killed (normally none: they died with PID 1).
            #    The veth, the address's lease and the published ports' sockets go here.
            #    The lock goes last, with the bundle: until then, no gc takes any of this for garbage.
            if net:
                net.close()
            if cgroup:
                cgroup.remove()
            state.release(state.record_path(plan.id))
            if bundle:
                rootfs.remove_bundle(bundle)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeFailure("creating namespaces and mounts needs root: run minirun with sudo")


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
    container_id = spec.id or os.urandom(32).hex()
    hostname = spec.hostname or container_id[:12]
    env = image.config.environment(spec.env)
    env.setdefault("HOSTNAME", hostname)
    if spec.tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    privileged = spec.privileges.privileged
    init_binary = _init_binary() if spec.use_init else None
    mounts = (rootfs.default_mounts(writable_sys=privileged)
              + [volume.mount() for volume in spec.volumes]
              + ([rootfs.init_mount(init_binary)] if init_binary else []))
    return Plan(id=container_id, image=image, command=command, env=env,
                workdir=spec.workdir or image.config.workdir or "/", hostname=hostname,
                user=spec.user if spec.user is not None else image.config.user,
                privileges=spec.privileges,
                seccomp=spec.seccomp and not privileged, init_binary=init_binary,
                mounts=mounts, masked=[] if privileged else rootfs.MASKED_PATHS,
                read_only_paths=[] if privileged else rootfs.READ_ONLY_PATHS, spec=spec)


def _init_binary() -> str:
    """--init's program (minirun/init.c), compiled on first use and kept in the store."""
    from minirun import static_build
    return str(static_build.build(Path(__file__).with_name("init.c"), store_root() / "helpers",
                                  "--init"))


def _new_pid_namespace(say) -> None:
    namespaces.unshare(namespaces.CLONE_NEWPID)
    say("unshare", "CLONE_NEWPID: the next child will be PID 1 of a new PID namespace")


# -- The child: forked into a PID namespace, tied to the runtime until it execs ------------------

class _Link:
    """The child's ends of what ties it to the runtime that forked it (see _fork_child)."""

    def __init__(self, go: int, errors: int, console: socket.socket | None):
        self.go = go                # read end: "g" when the runtime is ready; hung up if it died
        self.errors = errors        # write end, close-on-exec: why setup or exec failed
        self.console = console      # with -t: where the child sends its pty's master end

    def wait_for_runtime(self) -> None:
        """The second go (see _fork_child): block until the runtime's work for us is done."""
        if os.read(self.go, 1) != b"n":         # end-of-file: the runtime failed, or died
            os._exit(RUNTIME_FAILED)

    def runtime_is_gone(self) -> bool:
        """The runtime keeps its end of `go` open until the exec: a hang-up means it died."""
        poller = select.poll()
        poller.register(self.go, select.POLLIN)
        return any(events & select.POLLHUP for _, events in poller.poll(0))


def _fork_child(enter_pid_namespace, become, tty: bool, failed: str,
                command: list[str], env: dict[str, str], after_go=None,
                born_in: cgroups.Cgroup | None = None) -> tuple[int, int | None]:
    """Fork a child into a PID namespace and let `become(link)` turn it into a container
    process that execs `command`; return its host PID and, with `tty`, its pty's master end.
    Used by `run` (a new PID namespace) and by `exec` (a running container's).

    `enter_pid_namespace()` runs just before the fork: unshare(CLONE_NEWPID) or setns() into a
    PID namespace does not move the caller, it decides where the caller's *next* child is born
    (pid_namespaces(7)). Right after the fork the runtime goes back to its own. With `born_in`,
    the child is also born in that cgroup, where the kernel can (Cgroup.fork), so that its
    join() is quick.

    Three channels tie runtime and child together until the exec:
    - `go`: the child waits on it until the runtime is ready for it; end-of-file instead means
      the runtime died before the child's parent-death signal was armed, and the child gives up.
      The runtime holds its end open until the exec, so the child can ask again later whether
      the runtime is still there (after a user switch, see _give_up_privileges);
    - `errors`: close-on-exec, so it reaches end-of-file exactly when the command has been
      exec'd; if setup or exec fails instead, the child writes why into it first;
    - `after_go()`, if given, is work the runtime does while the child sets itself up (wiring
      its network); then a second byte, "n", on `go` tells the child it may exec
      (_Link.wait_for_runtime);
    - with -t, `console`: a unix socket on which the child sends the master end of a pty that it
      opened inside the container (SCM_RIGHTS, unix(7)), as runc's --console-socket does: the
      pty then belongs to the container's own /dev/pts, where `tty` can name it.
    """
    go_read, go_write = os.pipe()
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    console, console_child = socket.socketpair() if tty else (None, None)
    own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    enter_pid_namespace()
    pid = born_in.fork() if born_in else os.fork()
    if pid == 0:
        try:
            os.close(go_write)
            os.close(errors_read)
            if console:
                console.close()
            security.die_with_parent()
            if os.read(go_read, 1) != b"g":           # the runtime died before saying go
                os._exit(RUNTIME_FAILED)
            become(_Link(go_read, errors_write, console_child))     # ends in exec
        except OSError as error:
            _fail(errors_write, RUNTIME_FAILED, f"{failed}: {error}")
        except RuntimeFailure as error:
            _fail(errors_write, error.exit_code, str(error))
        except Exception as error:      # a bug: still one line, and the runtime cleans up
            _fail(errors_write, RUNTIME_FAILED, f"internal error: {failed}: {error!r}")
        finally:
            os._exit(RUNTIME_FAILED)    # never fall back into the runtime's code
    namespaces.setns(own_pid_namespace, namespaces.CLONE_NEWPID)
    for fd in (own_pid_namespace, go_read, errors_write):
        os.close(fd)
    if console_child:
        console_child.close()
    try:
        os.write(go_write, b"g")
        if after_go:
            _second_go(go_write, after_go)
        master = terminal.receive_master(console) if console else None
        _wait_for_exec(pid, errors_read, command, env)
    finally:
        os.close(go_write)
    return pid, master


def _second_go(go_write: int, work) -> None:
    """Do `work` while the child sets itself up, then tell it to go on (see _fork_child). If the
    work fails, the exception goes up and `go` is closed on the way: the child reads end-of-file
    instead of "n" and exits before its exec, and run's cleanup removes its cgroup."""
    work()
    try:
        os.write(go_write, b"n")
    except BrokenPipeError:
        pass                            # the child has failed already: _wait_for_exec says why


@dataclass
class Process:
    """A process entering a container, in the shape of config.json's `process` (the OCI
    runtime spec's config.md): `run`'s PID 1, `minirun exec`'s command, a bundle's process
    (`minirun create`) and an engine's `minirun exec --process` are each one of these, and all
    take the same last steps (_last_steps)."""
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
    what the forked child becomes (_become). `minirun create` reads one from an engine's bundle
    (oci.load, whose Plan adds what the runtime does on the host); `run` makes one from its
    plan (_config)."""
    root: Path
    process: Process
    mounts: list[rootfs.Mount]                  # on the root, in order
    namespaces: dict[str, str | None]           # config.json's type -> a path to join, or None: new
    hostname: str | None = None
    read_only: bool = False
    masked: list[str] = field(default_factory=list)
    read_only_paths: list[str] = field(default_factory=list)
    sysctl: dict[str, str] = field(default_factory=dict)
    seccomp: bytes | None = None                # an assembled filter (seccomp.py)
    uid_map: list = field(default_factory=list)     # userns.Mapping, with a new user namespace
    gid_map: list = field(default_factory=list)


def _config(plan: Plan, bundle: rootfs.Bundle, net: network.ContainerNetwork) -> Config:
    """The plan in config.json's shape, as an engine would write it for its bundle."""
    chosen = {"pid": None, "mount": None, "uts": None, "ipc": None, "cgroup": None}
    # The network namespace: a new one (--network none); the one the runtime has made and wires
    # for it (bridge), joined through the child's own copy of the runtime's descriptor on it,
    # inherited across the fork (/proc/self/fd/N, a path setns can open); or none of its own
    # (--network host: the host's).
    if net.mode == "none":
        chosen["network"] = None
    elif net.attachment:
        chosen["network"] = f"/proc/self/fd/{net.netns}"
    privileges = plan.privileges
    return Config(
        root=bundle.merged, mounts=plan.mounts, namespaces=chosen, hostname=plan.hostname,
        read_only=plan.spec.read_only, masked=plan.masked, read_only_paths=plan.read_only_paths,
        seccomp=seccomp.default_filter() if plan.seccomp else None,
        process=Process(args=plan.command, env=plan.env, cwd=plan.workdir, user=plan.user,
                        terminal=plan.spec.tty, capabilities=privileges.capability_sets(),
                        no_new_privileges=not privileges.privileged,
                        init=plan.init_binary is not None))


def _write_config(config: Config, plan: Plan, bundle: rootfs.Bundle) -> Path:
    """The plan as an engine would write it: BUNDLE/config.json, in the runtime spec's format
    (config.md, config-linux.md), so that a reader can `cat` what `run` asked the runtime for.

    Three things config.json has no words for go in annotations (free for the runtime's own,
    config.md "Annotations"): -u's user by name (config.json's IDs are numbers: an engine
    looks a name up itself; `run` looks it up in the container's own /etc/passwd, once its root
    is in place), minirun's default seccomp filter (a program of its own, seccomp.py, not a
    profile of names) and --init.
    """
    process, limits = config.process, plan.spec.limits
    resources = {}
    if limits.memory:
        resources["memory"] = {"limit": limits.memory}
    if limits.cpus:
        resources["cpu"] = {"quota": round(limits.cpus * cgroups.CPU_PERIOD_US),
                            "period": cgroups.CPU_PERIOD_US}
    if limits.pids:
        resources["pids"] = {"limit": limits.pids}
    if plan.privileges.privileged:      # every device (config-linux.md, "Allowed Device Cgroup")
        resources["devices"] = [{"allow": True, "access": "rwm"}]
    annotations = {"org.minirun.image": plan.image.name}
    if process.user:
        annotations["org.minirun.user"] = process.user
    if config.seccomp:
        annotations["org.minirun.seccomp"] = "the default filter (seccomp.py)"
    if process.init:
        annotations["org.minirun.init"] = f"{rootfs.INIT_PATH} runs process.args as PID 2"
    document = {
        "ociVersion": OCI_VERSION,
        "root": {"path": config.root.name, "readonly": config.read_only},
        "hostname": config.hostname,
        "process": {
            "terminal": process.terminal, "args": process.args, "cwd": process.cwd,
            "env": [f"{key}={value}" for key, value in process.env.items()],
            **({"user": {"uid": process.uid, "gid": process.gid}} if process.user is None else {}),
            "capabilities": {kind: [f"CAP_{name.upper()}" for name in sorted(names)]
                             for kind, names in process.capabilities.items()},
            "noNewPrivileges": process.no_new_privileges},
        "mounts": [mount.as_config() for mount in config.mounts],
        "linux": {
            "namespaces": [{"type": kind, **({"path": path} if path else {})}
                           for kind, path in config.namespaces.items()],
            "resources": resources, "cgroupsPath": f"/{cgroups.PARENT}/{plan.id}",
            "maskedPaths": config.masked, "readonlyPaths": config.read_only_paths},
        "annotations": annotations}
    path = bundle.path / "config.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _become(config: Config, cgroup: cgroups.Cgroup, link: _Link, say, prepare_root, *,
            use_chroot: bool = False, own_network: bool = False, enter_user_namespace=None,
            gate=None, outlives_runtime: bool = False) -> None:
    """In the forked child: become the container `config` describes, then exec. `run`'s PID 1
    and `minirun create`'s process (oci.py) alike, in the order runc takes these steps.

    prepare_root(): puts the root in place at config.root, a mount point, in the container's
    mount namespace. own_network: the network namespace, joined, is one the runtime made for
    this container (run's bridge): `lo` is the child's to bring up, as in a new one.
    enter_user_namespace(): a bundle's user namespace (oci.py). gate, outlives_runtime: see
    _last_steps.
    """
    # 1. Resources: join the container's cgroup (in the cgroup2 tree this process was born in
    #    it already: Cgroup.fork). Every process forked from here on is born in it, counted and
    #    limited with the rest of the container.
    cgroup.join()
    say("cgroup", f"joined {cgroup}")

    # 2. Namespaces: from here on, mounts, hostname, IPC, network and the cgroup tree seen are
    #    the container's own. First those to join, by path, while this process is the host's
    #    root, who may join any; then a bundle's user namespace; then the new ones. (The PID
    #    namespace was settled by the fork: see _fork_child.) CLONE_NEWCGROUP makes the cgroup
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
                    user_namespace="user" in config.namespaces)
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
    _last_steps(config.process, link, config.seccomp, say, gate, outlives_runtime)


def _mount_overlay(plan: Plan, bundle: rootfs.Bundle, say) -> None:
    """run's root: the image's layers under the container's writable layer. An engine mounts
    its overlay before `create`, on the host; `run` mounts it here, in the container's own
    mount namespace, so that nothing of it shows on the host, and the kernel unmounts it when
    the container's last process ends."""
    privileged = plan.privileges.privileged
    rootfs.mount_overlay(plan.image.layers, bundle, hardened=not privileged)
    say("mount", f"overlay on {bundle.merged} (upperdir {bundle.upper})"
        + ("" if privileged else ", nosuid and nodev"))
    say("mount", "/proc, /dev (null zero full random urandom tty pts shm), /sys read-only, "
        "its own cgroups read-only on /sys/fs/cgroup"
        + (", masks" if plan.masked else "; no masks (--privileged)")
        + (", /dev/init" if plan.init_binary else ""))
    for volume in plan.spec.volumes:
        say("mount", f"{volume.source} bound on {volume.target}"
            + (" read-only" if volume.read_only else ""))


def _wait_for_start(net: network.ContainerNetwork, link: _Link, say) -> None:
    """run's start gate: the second byte on `go` (_Link.wait_for_runtime), which the runtime
    writes once its work for the created container is done: on the bridge, wiring eth0."""
    link.wait_for_runtime()
    say("start", "the runtime has said go" + (f": eth0 is {net.attachment.address}, wired"
                                             if net.attachment else ""))


def _last_steps(process: Process, link: _Link, seccomp_filter: bytes | None, say,
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


def _give_up_privileges(process: Process, link: _Link, say, outlives_runtime: bool) -> None:
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


def _exec(command: list[str], env: dict[str, str], link: _Link) -> None:
    """execve the command, searching PATH inside the container; on failure report the errno."""
    signals.reset_for_exec()
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        os.write(link.errors, f"exec {error.errno}".encode())
        os._exit(_exec_failure(command, env, error.errno).exit_code)


def _exec_init(command: list[str], env: dict[str, str], link: _Link) -> None:
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


def _exec_failure(command: list[str], env: dict[str, str], error_number: int) -> RuntimeFailure:
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


def _wait_for_exec(pid: int, errors_read: int, command: list[str], env: dict[str, str]) -> None:
    """Block until the child has exec'd its command (the close-on-exec pipe reaches end of
    file) or has written why it could not; in that case reap it and raise its one line."""
    chunks = []
    while chunk := os.read(errors_read, 4096):
        chunks.append(chunk)
    os.close(errors_read)
    if not chunks:
        return
    os.waitpid(pid, 0)
    report = b"".join(chunks).decode(errors="replace")
    if report.startswith("exec "):
        raise _exec_failure(command, env, int(report.split()[1]))
    code, _, message = report.partition("\n")
    raise RuntimeFailure(message, int(code))


# -- Standing by: signals, the terminal, and the reader of our output --------------------------

def _supervise(pid: int, pty_master: int | None = None) -> int:
    """Until `pid` exits, pass on each signal sent to us, reap every child and, with -t, relay
    the terminal until its container side is closed, so that the last of the output is copied
    too. Return `pid`'s exit status.

    The signals have been held since before the fork; they arrive here through a signalfd, as
    events of the same poll() loop as the terminal's bytes (see signals.py for why).

    One more event: the reader of our stdout going away (`... | head -1`). On the host the
    writer would die of SIGPIPE, but a PID 1 ignores SIGPIPE like any signal it has no handler
    for (pid_namespaces(7)), so `yes` would fail its writes forever, or exit 1. So the runtime
    watches its stdout, when it is a pipe or socket, for the error poll(2) reports once the
    last reader is gone (POLLERR), then ends the container with SIGKILL and exits 141 (128 +
    SIGPIPE) as the pipeline on the host would.
    """
    watched = signals.SignalFd()
    relay = terminal.Relay(pty_master) if pty_master is not None else None
    stdout_is_pipe = _is_pipe(STDOUT)
    status, reader_gone = None, False
    try:
        while status is None or (relay and relay.container_side_open):
            interest = {watched.fileno(): select.POLLIN}
            if relay:
                for fd in relay.readers():
                    interest[fd] = interest.get(fd, 0) | select.POLLIN
                for fd in relay.writers():
                    interest[fd] = interest.get(fd, 0) | select.POLLOUT
            if stdout_is_pipe and not reader_gone:
                interest.setdefault(STDOUT, 0)      # no events asked: POLLERR comes anyway
            ready = _poll(interest)
            for sig in watched.read():  # first, so a signal acts before bytes typed after it
                if sig == signal.SIGCHLD:
                    status = _reap_children(pid, status)
                elif sig == signal.SIGWINCH:
                    if relay:
                        relay.copy_window_size()
                elif status is None:    # until reaped, `pid` cannot be another process's
                    os.kill(pid, sig)
            if relay:
                try:
                    relay.pump([fd for fd, ev in ready.items() if ev & (select.POLLIN | select.POLLHUP | select.POLLERR)],
                               [fd for fd, ev in ready.items() if ev & select.POLLOUT])
                except BrokenPipeError:
                    ready[STDOUT] = select.POLLERR
            if stdout_is_pipe and not reader_gone and ready.get(STDOUT, 0) & select.POLLERR:
                status = _reap_children(pid, status)    # it may have ended on its own already
                if status is None:
                    reader_gone = True
                    os.kill(pid, signal.SIGKILL)
                if relay:
                    relay.discard_output()
        code = status_from_wait(status)
        # An app that met EPIPE and exited with an error of its own before we noticed (`yes`
        # exits 1) ended because its reader went away: the same end.
        if reader_gone or (0 < code < 128 and stdout_is_pipe and _poll({STDOUT: 0}, 0)):
            return 128 + signal.SIGPIPE
        return code
    finally:
        watched.close()
        if relay:
            relay.close()


STDOUT = 1


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _poll(interest: dict[int, int], timeout: float | None = None) -> dict[int, int]:
    """poll(2) the descriptors in `interest` (fd -> events); return fd -> events that happened."""
    poller = select.poll()
    for fd, events in interest.items():
        poller.register(fd, events)
    return dict(poller.poll(None if timeout is None else timeout * 1000))


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

