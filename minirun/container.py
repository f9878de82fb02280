"""The story of a container run, step by step.

`run` is what a runtime does, in order, on the host side: the image, a bundle, a cgroup, the
network, then the container as config.json's data (`_config`, written as BUNDLE/config.json),
created and started by spawn.py's `fork` and `become` -- the very steps `minirun create` takes
for an engine's bundle (oci.py) -- and stood by until it exits. Each step is one call into the
module that owns the mechanism: image, cgroups, rootfs, namespaces, network, security, state,
spawn. The chapters of docs/minirun.md follow the same order.

The standing by (`_supervise`) is `minirun exec`'s too (enter.py), as are `run`'s first checks.
What happens to a container from outside lives beside this file: found and stopped in
lifecycle.py, and what killed runs left behind removed in garbage.py.
"""
import json
import os
import select
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# Everything the child uses must be imported here, before it forks: after pivot_root the host's
# files, Python's own modules among them, are out of its reach.
from minirun import (cgroups, garbage, names, namespaces, network, rootfs, seccomp, security,
                     signals, spawn, state, terminal)
from minirun.errors import NOT_FOUND, RuntimeFailure, status_from_wait
from minirun.image import Image, Store, store_root
from minirun.narrator import narrator
from minirun.units import (PID_MAX_LIMIT, check_env_and_workdir, format_size, parse_count,
                           parse_cpus, parse_memory)

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
    keep_for: str | None = None     # run -d without --rm: the record that keeps the bundle
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
        workdir, hostname, name = options.get("workdir"), options.get("hostname"), options.get("name")
        check_env_and_workdir(options.get("env") or (), workdir)
        if command and not command[0]:
            raise RuntimeFailure("the command is empty: give a program to run, or none for the "
                                 "image's own", NOT_FOUND)
        if hostname:                    # it goes into /etc/hosts and sethostname(2)
            names.check_hostname(hostname)
        if name is not None:
            names.check_name(name, "container")
        memory, cpus, pids = options.get("memory"), options.get("cpus"), options.get("pids_limit")
        return cls(image=image, command=command, env=list(options.get("env") or ()),
                   workdir=workdir, hostname=hostname, name=name,
                   user=options.get("user"),
                   tty=bool(options.get("tty")), use_init=bool(options.get("use_init")),
                   use_chroot=bool(options.get("use_chroot")), explain=bool(options.get("explain")),
                   stats=bool(options.get("stats")),
                   seccomp=seccomp.wanted(options.get("security_opt") or ()),
                   limits=cgroups.Limits(
                       memory=parse_memory(memory, SMALLEST_MEMORY_LIMIT, "a container")
                       if memory is not None else None,
                       cpus=parse_cpus(cpus) if cpus is not None else None,
                       pids=parse_count(pids, "pids limit", PID_MAX_LIMIT) if pids is not None else None),
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
            #    With `keep_for` (a detached container's record), the bundle outlives the run,
            #    and a `minirun start` runs it again on the same writable layer.
            bundle = rootfs.create_bundle(store_root() / "containers", plan.id,
                                          state.record_path(plan.id), reuse=bool(spec.keep_for))
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
            #    bundle (spawn.become), with two of run's own (the image's overlay as its root; on the
            #    bridge, `lo` up in the namespace the runtime made), and waits at the start gate,
            #    the last step before exec, as a bundle's process waits after `create`. Meanwhile
            #    the runtime does what an engine does to a created container: it wires its network
            #    (veth, address, route). Then start: one byte on `go` opens the gate, and it execs.
            child, pty_master = spawn.fork(
                lambda: _new_pid_namespace(say),
                lambda link: spawn.become(config, cgroup, link, say,
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
            if bundle and spec.keep_for:
                rootfs.keep_bundle(bundle, Path(spec.keep_for))
            elif bundle:
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



def _config(plan: Plan, bundle: rootfs.Bundle, net: network.ContainerNetwork) -> spawn.Config:
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
    return spawn.Config(
        root=bundle.merged, mounts=plan.mounts, namespaces=chosen, hostname=plan.hostname,
        read_only=plan.spec.read_only, masked=plan.masked, read_only_paths=plan.read_only_paths,
        seccomp=seccomp.default_filter() if plan.seccomp else None,
        process=spawn.Process(args=plan.command, env=plan.env, cwd=plan.workdir, user=plan.user,
                        terminal=plan.spec.tty, capabilities=privileges.capability_sets(),
                        no_new_privileges=not privileges.privileged,
                        init=plan.init_binary is not None))


def _write_config(config: spawn.Config, plan: Plan, bundle: rootfs.Bundle) -> Path:
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
        "ociVersion": spawn.OCI_VERSION,
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



def _mount_overlay(plan: Plan, bundle: rootfs.Bundle, say) -> None:
    """run's root: the image's layers under the container's writable layer. An engine mounts
    its overlay before `create`, on the host; `run` mounts it here, in the container's own
    mount namespace, so that nothing of it shows on the host, and the kernel unmounts it when
    the container's last process ends."""
    privileged = plan.privileges.privileged
    rootfs.mount_overlay(plan.image.layers, bundle, hardened=not privileged,
                         volatile=not plan.spec.keep_for)
    say("mount", f"overlay on {bundle.merged} (upperdir {bundle.upper})"
        + ("" if privileged else ", nosuid and nodev"))
    say("mount", "/proc, /dev (null zero full random urandom tty pts shm), /sys "
        + ("writable (--privileged), " if privileged else "read-only, ")
        + "its own cgroups read-only on /sys/fs/cgroup"
        + (", masks" if plan.masked else "; no masks (--privileged)")
        + (", /dev/init" if plan.init_binary else ""))
    for volume in plan.spec.volumes:
        say("mount", f"{volume.source} bound on {volume.target}"
            + (" read-only" if volume.read_only else ""))


def _wait_for_start(net: network.ContainerNetwork, link: spawn.Link, say) -> None:
    """run's start gate: the second byte on `go` (spawn.Link.wait_for_runtime), which the runtime
    writes once its work for the created container is done: on the bridge, wiring eth0."""
    link.wait_for_runtime()
    say("start", "the runtime has said go" + (f": eth0 is {net.attachment.address}, wired"
                                             if net.attachment else ""))



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
