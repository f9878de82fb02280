"""`minirun exec`: one more process inside a running container, by joining what it is made of.

There is no "inside" apart from namespaces and a cgroup: a process that joins all of a
container's is in that container, as much as its PID 1 is. setns(2) joins a namespace through
the file the kernel keeps for it in /proc/PID/ns/ (namespaces(7)), as nsenter(1) does. The rest
is `run`'s own: the same fork (here through an intermediate process, see exec_in) and the
same last steps before exec (container.py), so an exec'd process gets what PID 1 got: the
capabilities, no_new_privs, the user, the seccomp filter.
"""
import os

# Everything the child uses must be imported here, before it forks: after it joins the mount
# namespace, the host's files, Python's own modules among them, are out of its reach.
from minirun import cgroups, container, namespaces, seccomp, security, signals, spawn
from minirun.lifecycle import confirm_still_running, find_running
from minirun.narrator import narrator
from minirun.units import check_env_and_workdir

# The namespaces `exec` joins besides the PID namespace. The mount namespace comes last: joining
# it also moves the process's root and working directory to that namespace's root (setns(2)),
# after which the host's /proc and /sys/fs/cgroup are out of its reach.
JOINED_NAMESPACES = ("cgroup", "ipc", "uts", "net", "mnt")


def exec_in(target: str, command: list[str], env: list[str], workdir: str | None = None,
            user: str | None = None, tty: bool = False, explain: bool = False) -> int:
    """Run `command` inside the running container `target` (a name or id); return its status.

    An intermediate process joins the container's cgroup and namespaces, then clones the
    process that appears in the container's PID namespace (spawn.fork, by_intermediate): until
    its exec that process is the runtime's Python, but never the host's root on the host's
    files, as a process that joined the mount namespace after its birth would be for a moment.
    """
    say = narrator("minirun", explain)
    check_env_and_workdir(env, workdir)
    container._require_root()
    record = find_running(target)
    pid1 = record.pid
    joined = {name: os.open(f"/proc/{pid1}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
              for name in (*JOINED_NAMESPACES, "pid")}
    confirm_still_running(record)         # the fds are PID 1's own, not a later holder of its PID's
    environment = dict(_environment_of(pid1), **dict(item.split("=", 1) for item in env))
    if tty:
        environment.setdefault("TERM", os.environ.get("TERM", "xterm"))
    cgroup = cgroups.of_container(record.id)
    privileges = security.Privileges.from_record(record.capabilities, record.privileged)

    def enter() -> None:
        # In spawn.fork's intermediate process, in the host's PID namespace: the cgroup (born in
        # it already, in the cgroup2 tree), the namespaces, then the PID namespace, for the
        # child it clones next, which is thus born inside all of them.
        cgroup.join()
        say("cgroup", f"joined {cgroup}")
        for name in JOINED_NAMESPACES:
            namespaces.setns(joined[name])
        namespaces.setns(joined["pid"], namespaces.CLONE_NEWPID)
        say("setns", f"{', '.join(JOINED_NAMESPACES)} namespaces of PID {pid1}, and its PID "
            "namespace for the next child: the child is born inside")

    def become(link: spawn.Link) -> None:
        spawn.last_steps(
            spawn.Process(args=command, env=environment, cwd=workdir or record.workdir,
                          user=record.user if user is None else user, terminal=tty,
                          capabilities=privileges.capability_sets(),
                          no_new_privileges=not privileges.privileged),
            link, seccomp.default_filter() if record.seccomp else None,  # as `docker exec`: PID 1's filter
            say)

    with signals.held():                 # as in `run`: see signals.py and container._supervise
        try:
            pid, master = spawn.fork(enter, become, tty,
                                     "joining the container failed", command, environment,
                                     born_in=cgroup, by_intermediate=True)
        finally:
            for fd in joined.values():
                os.close(fd)
        return container._supervise(pid, master)


def _environment_of(pid: int) -> dict[str, str]:
    """The environment PID 1 started with, the base of an exec'd command's (as docker exec)."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        pairs = [item.decode(errors="replace").partition("=") for item in environ.read().split(b"\0") if item]
    return {key: value for key, _, value in pairs}
