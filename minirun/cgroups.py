"""cgroups: how one shared kernel keeps one container from starving the others.

Namespaces decide what a container can *see*; control groups decide how much it can *use*.
A cgroup is a directory in a special filesystem: make the directory, write limits into its
files, write a process ID into its `cgroup.procs`, and from then on that process and every
child it forks are counted and limited together (cgroups(7)).

Two versions of that filesystem exist, and minirun speaks both:

    v2, one unified tree                 v1, one tree per controller
    (Documentation/admin-guide/          (Documentation/admin-guide/cgroup-v1/*.rst)
     cgroup-v2.rst)
    /sys/fs/cgroup/minirun/ID/           /sys/fs/cgroup/memory/minirun/ID/
        memory.max                           memory.limit_in_bytes
        cpu.max                          /sys/fs/cgroup/cpu/minirun/ID/cpu.cfs_quota_us
        pids.max                         /sys/fs/cgroup/pids/minirun/ID/pids.max

Most machines today are pure v2. Hybrid hosts (controllers on v1, an empty cgroup2 tree at
/sys/fs/cgroup/unified) still exist, and a controller bound to a v1 tree cannot be used from v2,
so there the v1 driver runs. Both drivers offer the same small interface:

    cgroup = create(container_id, Limits(memory=..., cpus=..., pids=...))   # before fork
    pid = cgroup.fork()              # os.fork(), the child born in the cgroup2 tree's cgroup
    cgroup.join()                    # in the child, first: its command never runs unconfined
    mount_view(new_root + "/sys/fs/cgroup")   # in the child, after unshare(CLONE_NEWCGROUP)
    usage = cgroup.usage()           # after the container exited: peak memory, CPU time, OOM
    cgroup.remove()                  # kill what is left, rmdir

The container gets its own cgroup in EVERY hierarchy the host mounts, not only in those whose
controllers limit it: freezer, devices, cpuset, blkio, named ones like name=systemd, and the
cgroup2 tree of a hybrid host too. A cgroup namespace (cgroup_namespaces(7)) makes the cgroup a
process is in the root of what it can name and mount, in each hierarchy separately: one left in
the host's root cgroup would let a process that makes a new cgroup namespace mount a writable
view of the host's whole tree there and freeze or kill anything in it. The container's cgroups
also carry its device allow-list (devices.py).

minirun only ever makes, changes and removes directories under a parent named `minirun` in
each tree, and that parent itself, which goes with the last container's cgroup in it. The one
write above it is on v2, and only if missing: enabling the controllers in the
root's cgroup.subtree_control, without which no cgroup below could use them.
"""
import errno
import os
import signal
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

from minirun import devices, namespaces
from minirun.errors import RuntimeFailure

PARENT = "minirun"          # every cgroup minirun creates lives in <hierarchy>/minirun/<id>
CPU_PERIOD_US = 100_000     # the kernel's default CFS period: quotas are counted per 100 ms
MIN_CPU_QUOTA_US = 1_000    # the smallest quota the kernel accepts (sched-bwc.rst): 0.01 CPU
STALE_GRACE_SECONDS = 10    # an unowned empty cgroup younger than this may be one being set up

V2_CONTROLLERS = ("memory", "cpu", "pids")      # the v2 controllers minirun enables, to limit


@dataclass(frozen=True)
class Limits:
    """What a container may use. None means no limit (the parent's limits still apply)."""
    memory: int | None = None       # bytes of RAM; there is no swap beyond it
    cpus: float | None = None       # CPU time per period, in CPUs: 0.5 is half of one core
    pids: int | None = None         # processes (and threads) alive at once
    swap: int | None = None         # memory + swap, bytes (an OCI bundle's memory.swap); None:
                                    # as much as `memory`, so no swap at all

    def __post_init__(self):
        if self.cpus is not None:
            if self.cpus * CPU_PERIOD_US < MIN_CPU_QUOTA_US:
                raise RuntimeFailure(f"--cpus {self.cpus:g} is too small: the kernel's smallest "
                                     f"CPU quota is {MIN_CPU_QUOTA_US / CPU_PERIOD_US:g} CPU")
            if self.cpus > os.cpu_count():
                raise RuntimeFailure(f"--cpus {self.cpus:g} is more than the {os.cpu_count()} "
                                     "CPUs of this machine, so it would limit nothing")


class Usage(NamedTuple):     # (a NamedTuple: a third of a dataclass's cost to define)
    """What a container used, read from its cgroup after it exited. None: not counted here."""
    peak_memory: int | None         # bytes: the most memory it ever had charged at once
    cpu_seconds: float | None       # user + system CPU time of all its processes
    oom_killed: bool                # the kernel's OOM killer killed one of its processes
    throttled_periods: int          # CPU periods in which it used up its quota and had to wait
    throttled_seconds: float        # how long its runnable processes waited in total
    pids_refused: int               # forks refused because pids.max was reached


# --- Finding the hierarchies: once per process, from the mount table --------------------------

class _Mounts(NamedTuple):
    unified: Path | None            # where cgroup2 is mounted, if it is
    v1: dict[str, Path]             # v1 controller or name ("name=systemd") -> its tree's mount
    v1_options: dict[Path, str]     # each v1 tree's mount point -> what picks the tree when
                                    # mounting it: its controllers and name, "cpu,cpuacct"

    def hierarchies(self) -> list[Path]:
        """The mount point of every cgroup hierarchy: each v1 tree once, then cgroup2."""
        return list(self.v1_options) + ([self.unified] if self.unified else [])


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (proc(5))."""
    for escape, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escape, char)
    return field


def parse_mountinfo(text: str, known_controllers: set[str]) -> _Mounts:
    """Find the cgroup trees in /proc/self/mountinfo: the filesystem type says v1 or v2, the
    super options of a v1 mount say which controllers it carries ('rw,cpu,cpuacct'), among
    other options ('xattr'): the controllers are the names the kernel knows. A tree without a
    controller has a name instead ('name=systemd'). A tree mounted twice counts once."""
    unified, v1, v1_options = None, {}, {}
    for line in text.splitlines():
        fields, _, fs_fields = line.partition(" - ")
        mount_point = Path(_unescape(fields.split()[4]))
        fstype, _source, super_options = fs_fields.split()
        if fstype == "cgroup2" and unified is None:
            unified = mount_point
        elif fstype == "cgroup":
            names = [option for option in super_options.split(",")
                     if option in known_controllers or option.startswith("name=")]
            if names and names[0] not in v1:
                v1.update(dict.fromkeys(names, mount_point))
                v1_options[mount_point] = ",".join(names)
    return _Mounts(unified, v1, v1_options)


@cache
def _mounts() -> _Mounts:
    # Cached: the parent reads these small files once, and the forked child inherits the answer.
    # /proc/cgroups lists the controllers this kernel has, one a line after a header (cgroups(7)).
    with open("/proc/cgroups") as table:
        known = {line.split()[0] for line in table if not line.startswith("#")}
    with open("/proc/self/mountinfo") as mountinfo:
        return parse_mountinfo(mountinfo.read(), known)


@cache
def host_uses_v2() -> bool:
    """v2 if the unified tree offers the memory controller; v1 if a v1 tree carries it."""
    mounts = _mounts()
    if mounts.unified is not None:
        if "memory" in _read(mounts.unified / "cgroup.controllers").split():
            return True
    if "memory" in mounts.v1:
        return False
    raise RuntimeFailure("this host has no memory cgroup controller mounted: mount cgroup2 on "
                         "/sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)")


# --- The interface ----------------------------------------------------------------------------

def create(container_id: str, limits: Limits, allow_all_devices: bool = False,
           path: str | None = None, device_rules=devices.DEFAULT_RULES) -> "Cgroup":
    """Make the container's cgroups, one in every hierarchy, and write its limits (on whichever
    version holds the controllers) and its device allow-list, unless allow_all_devices (for a
    privileged container). On failure, raise RuntimeFailure and leave nothing behind.
    `path`: where in each hierarchy, if not minirun/ID (an OCI bundle's cgroupsPath, oci.py)."""
    driver = CgroupV2 if host_uses_v2() else CgroupV1
    return driver.create(container_id, limits, _mounts(), allow_all_devices, path, device_rules)


def of_container(container_id: str, path: str | None = None) -> "Cgroup":
    """The cgroups `create` made for a running container, for `minirun exec` to join."""
    return (CgroupV2 if host_uses_v2() else CgroupV1).at(container_id, _mounts(), path)


def mount_view(target_dir: str) -> None:
    """In the container: mount its own cgroups, of every hierarchy, read-only at target_dir.

    Called after unshare(CLONE_NEWCGROUP), so a cgroup filesystem mounted now has the
    container's cgroup as its root (cgroup_namespaces(7)): the container sees its own limits
    and usage, as /, and nothing of the host's tree. Read-only, so it cannot raise its own
    limits or make sub-cgroups that would escape them.
    """
    hardened = namespaces.MS_NOSUID | namespaces.MS_NODEV | namespaces.MS_NOEXEC
    read_only = hardened | namespaces.MS_RDONLY
    mounts = _mounts()
    if host_uses_v2():
        namespaces.mount("cgroup2", target_dir, "cgroup2", read_only)
        return
    # v1 has one tree per controller: a small tmpfs holds a mount point for each tree, named as
    # the host names them (memory/, systemd/, cpu,cpuacct/ with links cpu and cpuacct, ...).
    namespaces.mount("tmpfs", target_dir, "tmpfs", hardened, "mode=755,size=64k")
    for tree, names in mounts.v1_options.items():
        directory = os.path.join(target_dir, tree.name)
        os.mkdir(directory)
        # The data names the tree's controllers (or its name=), all of them: the kernel finds
        # the existing tree by that set (and refuses with EBUSY a set that matches no tree).
        namespaces.mount("cgroup", directory, "cgroup", read_only, names)
        for controller in names.split(","):
            if controller != tree.name and not controller.startswith("name="):
                os.symlink(tree.name, os.path.join(target_dir, controller))
    if mounts.unified:                              # a hybrid host's cgroup2 tree
        directory = os.path.join(target_dir, mounts.unified.name)
        os.mkdir(directory)
        namespaces.mount("cgroup2", directory, "cgroup2", read_only)
    namespaces.mount(None, target_dir, None, namespaces.MS_REMOUNT | read_only)


def remove_stale(live_ids: set[str], dead_ids: set[str] = frozenset()) -> list[str]:
    """Remove cgroups under minirun/ that no running minirun owns; return their ids.

    live_ids: containers whose minirun still runs; never touched.
    dead_ids: containers whose record says their minirun died (SIGKILL, a crash): their
              processes are killed and their cgroups removed.
    Any other cgroup may belong to a minirun that keeps its records elsewhere ($MINIRUN_STATE):
    it is only rmdir'ed, which the kernel refuses (EBUSY) while it has processes, and not in
    its first seconds, when its owner may have made it but not yet put a process in it. (Its
    owner may also find it gone between its container's exit and its own usage(): then the
    usage reads as zero, and remove() has nothing left to do.)
    """
    removed = set()
    for tree in _mounts().hierarchies():
        try:
            entries = list(os.scandir(tree / PARENT))   # minirun/'s own files, and its cgroups
        except FileNotFoundError:
            continue
        for entry in entries:
            name, directory = entry.name, Path(entry.path)
            if name in live_ids or not entry.is_dir():
                continue
            try:
                if name in dead_ids:
                    _remove(directory, kill=True)
                elif time.time() - entry.stat().st_mtime >= STALE_GRACE_SECONDS:
                    _remove(directory, kill=False, patience=0)
                else:
                    continue
            except (RuntimeFailure, FileNotFoundError):
                continue                    # still has processes (not stale), or gone already
            removed.add(name)
        _remove_if_unused(tree / PARENT)
    return sorted(removed)


class Cgroup:
    """A container's cgroups: the directory minirun/<id> in every hierarchy the host mounts.
    join() them all, remove() them all; the two drivers below write the limits and read the
    usage, each in the hierarchies that hold the controllers on its version of cgroups."""

    def __init__(self, paths: dict[str, Path], unified: Path | None):
        self.paths = paths          # v1 controller or name -> the container's directory there
        self.unified = unified      # its directory in the cgroup2 tree, if one is mounted
        self.written: list[str] = []    # "memory.max=33554432", in the order written
        self.born_in_unified = False    # this process was forked into `unified` (fork)

    @classmethod
    def at(cls, container_id: str, mounts: _Mounts, path: str | None = None) -> "Cgroup":
        relative = path.strip("/") if path else f"{PARENT}/{container_id}"
        return cls({name: tree / relative for name, tree in mounts.v1.items()},
                   mounts.unified / relative if mounts.unified else None)

    def directories(self) -> list[Path]:
        """One directory per hierarchy: each v1 tree's (cpu and cpuacct may share a tree), then
        the cgroup2 tree's."""
        v1 = list(dict.fromkeys(self.paths.values()))
        return v1 + [self.unified] if self.unified else v1

    def __str__(self) -> str:       # /sys/fs/cgroup/{cpu,...,unified}/minirun/ID, as a shell would
        directories = self.directories()
        if len(directories) == 1:
            return str(directories[0])
        trees = [directory.parent.parent for directory in directories]
        return f"{trees[0].parent}/{{{','.join(tree.name for tree in trees)}}}/{PARENT}/" \
               f"{directories[0].name}"

    @classmethod
    def create(cls, container_id: str, limits: Limits, mounts: _Mounts,
               allow_all_devices: bool = False, path: str | None = None,
               device_rules=devices.DEFAULT_RULES) -> "Cgroup":
        cls._require_controllers(limits, mounts)
        cgroup = cls.at(container_id, mounts, path)
        made = []
        try:
            for directory in cgroup.directories():
                if path:                # an engine's path: its parents may need making first
                    _make_ancestors(directory, cgroup._prepare_parent(directory))
                cgroup._make(directory)
                made.append(directory)
            if "cpuset" in cgroup.paths:                # v1 cpuset: no task may join it empty
                _inherit_cpuset(cgroup.paths["cpuset"])
            cgroup._write_limits(limits)
            if not allow_all_devices:
                cgroup._allow_only_default_devices(device_rules)
        except BaseException:
            for directory in made:          # only what we made: no process is in them yet
                os.rmdir(directory)
                _remove_if_unused(directory.parent)
            raise
        return cgroup

    def _make(self, directory: Path) -> None:
        """mkdir the container's cgroup in one hierarchy (and minirun/ above it if missing)."""
        _make_under_parent(directory, self._prepare_parent(directory))

    def _prepare_parent(self, directory: Path):
        return _inherit_cpuset if directory == self.paths.get("cpuset") else None

    def _allow_only_default_devices(self, rules=devices.DEFAULT_RULES) -> None:
        """The device allow-list (devices.py): in the v1 devices controller if the host mounts
        one, else as a BPF program on the cgroup2 directory (v2 has no devices controller)."""
        if "devices" in self.paths:
            for name, line in devices.v1_writes(rules):
                _write(self.paths["devices"] / name, line, f"restrict devices ({line})")
            self.written.append("devices.allow=the default allow-list")
        elif self.unified:
            devices.attach_program(self.unified, rules)
            self.written.append("BPF_CGROUP_DEVICE=the default allow-list")
        else:
            raise RuntimeFailure("this host mounts neither the devices cgroup controller nor "
                                 "cgroup2, so minirun cannot keep a container from its devices")

    def _limit(self, path: Path, value, what: str, missing_ok: bool = False) -> None:
        if _write(path, value, what, missing_ok):
            self.written.append(f"{path.name}={value}")

    def join(self) -> None:
        """Move the calling process, and so every child it forks from now on, into the
        container's cgroup of every hierarchy.

        In v1 trees it writes "0" (the writer itself) into `tasks`, which moves one thread,
        rather than into cgroup.procs, which moves a whole process: for a process just forked,
        with one thread, that is the same move. But a thread that moves only itself lets the
        kernel skip a global lock that a cgroup.procs write takes, and whose taking waits for an
        RCU grace period (cgroup_procs_write_start() in kernel/cgroup/cgroup.c): here 0.3 ms
        instead of 5 to 15 ms, half of a whole run. cgroup2 refuses such thread moves between
        ordinary cgroups, so there it is "0" into cgroup.procs, and that wait is paid once,
        unless the process was born there (fork).
        """
        for directory in self.directories():
            if directory != self.unified:
                _write(directory / "tasks", 0, "join the container's cgroup")
            elif not self.born_in_unified:
                _write(directory / "cgroup.procs", 0, "join the container's cgroup")

    def fork(self) -> int:
        """os.fork(), but the child is born in the container's cgroup of the cgroup2 tree,
        where the kernel can do that (namespaces.fork_into_cgroup): the wait that join() would
        pay there is not paid at all. The child still calls join(), for the v1 trees.

        Otherwise a plain fork, and join() writes cgroup.procs: with no cgroup2 tree, with a
        kernel before 5.7, under a seccomp filter that hides clone3 (as container engines'
        filters do), or while another thread runs (network.py's, ending: see fork_into_cgroup).
        """
        if self.unified and len(os.listdir("/proc/self/task")) == 1:
            cgroup_fd = os.open(self.unified, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                pid = namespaces.fork_into_cgroup(cgroup_fd)
                self.born_in_unified = pid == 0
                return pid
            except OSError:
                pass                        # clone3 cannot: fork, and the child writes
            finally:
                os.close(cgroup_fd)
        return os.fork()

    def remove(self) -> None:
        """Kill whatever still runs in the cgroups, and in any cgroup made below them, then
        remove them all, and each tree's minirun/ if they were the last. Safe to call twice."""
        for directory in self.directories():
            _remove(directory, kill=True)   # the first kills all: a process is in every tree
            if directory.parent.name == PARENT:     # never an engine's parent (oci.py)
                _remove_if_unused(directory.parent)


# --- cgroup v2 --------------------------------------------------------------------------------

class CgroupV2(Cgroup):
    """A container's cgroup in the unified tree: one directory holds every controller's files."""

    @property
    def path(self) -> Path:
        return self.unified

    @classmethod
    def _require_controllers(cls, limits: Limits, mounts: _Mounts) -> None:
        # The root's cgroup.controllers lists what this kernel offers.
        _require_controllers(limits, _read(mounts.unified / "cgroup.controllers").split())

    def _make(self, directory: Path) -> None:
        if directory != self.unified:
            return super()._make(directory)
        root = directory.parent.parent
        offered = _read(root / "cgroup.controllers").split()
        controllers = [name for name in V2_CONTROLLERS if name in offered]
        # A controller's files appear in a cgroup only if its parent lists the controller in
        # cgroup.subtree_control ("Enabling and Disabling", cgroup-v2.rst): enable them on the
        # way down, in the root (usually done already by systemd) and in minirun/.
        _enable_controllers(root, controllers)
        _make_under_parent(directory, lambda parent: _enable_controllers(parent, controllers))

    def _write_limits(self, limits: Limits) -> None:
        if limits.memory is not None:
            # Above memory.max the kernel reclaims the cgroup's memory; if that is not enough,
            # it OOM-kills a process in the cgroup ("memory.max", cgroup-v2.rst).
            self._limit(self.path / "memory.max", limits.memory, "set the memory limit")
            # And no swap on top of it: --memory means all the memory there is, as in a VM
            # (unless an OCI bundle gives memory.swap, memory + swap). The file exists only
            # when the kernel accounts swap.
            swap = (limits.swap or limits.memory) - limits.memory
            self._limit(self.path / "memory.swap.max", swap, "set the swap limit", missing_ok=True)
        if limits.cpus is not None:
            # "$MAX $PERIOD": the cgroup may run MAX microseconds in each PERIOD, summed over
            # all CPUs, then waits for the next period ("cpu.max", cgroup-v2.rst).
            quota = round(limits.cpus * CPU_PERIOD_US)
            self._limit(self.path / "cpu.max", f"{quota} {CPU_PERIOD_US}", "set the CPU limit")
        if limits.pids is not None:
            # fork() and clone() fail with EAGAIN once pids.max tasks exist ("PID", cgroup-v2.rst).
            self._limit(self.path / "pids.max", limits.pids, "set the pids limit")

    def usage(self) -> Usage:
        cpu = _read_keyed(self.path / "cpu.stat")       # usage_usec, nr_throttled, throttled_usec
        peak = _read(self.path / "memory.peak", missing_ok=True)    # since Linux 5.19
        return Usage(
            peak_memory=int(peak) if peak else None,
            cpu_seconds=cpu["usage_usec"] / 1e6 if "usage_usec" in cpu else None,
            oom_killed=_read_keyed(self.path / "memory.events").get("oom_kill", 0) > 0,
            throttled_periods=cpu.get("nr_throttled", 0),
            throttled_seconds=cpu.get("throttled_usec", 0) / 1e6,
            pids_refused=_read_keyed(self.path / "pids.events").get("max", 0),
        )


def _enable_controllers(cgroup: Path, controllers: list[str]) -> None:
    """Let the children of `cgroup` use `controllers`, writing only what is missing."""
    enabled = _read(cgroup / "cgroup.subtree_control", missing_ok=True).split()
    missing = [f"+{name}" for name in controllers if name not in enabled]
    if not missing:
        return
    is_root = not (cgroup / "cgroup.type").exists()      # only non-root cgroups have it
    if _pids_in(cgroup) and not is_root:
        # The no-internal-process rule (cgroup-v2.rst, "No Internal Process Constraint"): a
        # cgroup that holds processes cannot hand controllers to children. It happens when
        # minirun itself runs in a container or a systemd unit whose cgroup is our root.
        raise RuntimeFailure(f"cannot enable the {', '.join(controllers)} controllers below "
                             f"{cgroup}: processes live in it, and cgroup v2 allows controllers "
                             "only in cgroups without processes; run minirun from a leaf cgroup "
                             "of its own (e.g. systemd-run --scope -p Delegate=yes)")
    _write(cgroup / "cgroup.subtree_control", " ".join(missing),
           f"enable the {', '.join(controllers)} controllers")


# --- cgroup v1 --------------------------------------------------------------------------------

class CgroupV1(Cgroup):
    """A container's cgroups on a v1 host: memory, cpu, cpuacct and pids, each in its own tree,
    hold the limits and the counts."""

    @classmethod
    def _require_controllers(cls, limits: Limits, mounts: _Mounts) -> None:
        _require_controllers(limits, mounts.v1)

    def _write_limits(self, limits: Limits) -> None:
        if limits.memory is not None:
            memory = self.paths["memory"]
            # Above the limit the kernel reclaims, then OOM-kills (cgroup-v1/memory.rst, 2.5).
            self._limit(memory / "memory.limit_in_bytes", limits.memory, "set the memory limit")
            # memsw limits memory + swap; the same value means no swap (memory.rst, 2.4). It
            # exists only with swap accounting, and may never be below limit_in_bytes, so second.
            self._limit(memory / "memory.memsw.limit_in_bytes", limits.swap or limits.memory,
                        "set the swap limit", missing_ok=True)
        if limits.cpus is not None:
            cpu = self.paths["cpu"]
            # CFS bandwidth control: quota microseconds of CPU time per period, summed over
            # all CPUs (Documentation/scheduler/sched-bwc.rst).
            self._limit(cpu / "cpu.cfs_period_us", CPU_PERIOD_US, "set the CPU period")
            self._limit(cpu / "cpu.cfs_quota_us", round(limits.cpus * CPU_PERIOD_US),
                        "set the CPU limit")
        if limits.pids is not None:
            # fork() fails with EAGAIN once pids.max tasks exist (cgroup-v1/pids.rst).
            self._limit(self.paths["pids"] / "pids.max", limits.pids, "set the pids limit")

    def usage(self) -> Usage:
        memory, cpu = self.paths.get("memory"), self.paths.get("cpu")
        cpuacct = self.paths.get("cpuacct")
        throttling = _read_keyed(cpu / "cpu.stat") if cpu else {}    # nr_throttled, ..._time
        # memory.oom_control counts the kernel's OOM kills in the cgroup ("oom_kill N").
        oom = _read_keyed(memory / "memory.oom_control") if memory else {}
        peak = memory and _read(memory / "memory.max_usage_in_bytes", missing_ok=True)
        nanoseconds = cpuacct and _read(cpuacct / "cpuacct.usage", missing_ok=True)
        pids = self.paths.get("pids")
        return Usage(
            peak_memory=int(peak) if peak else None,
            cpu_seconds=int(nanoseconds) / 1e9 if nanoseconds else None,
            oom_killed=oom.get("oom_kill", 0) > 0,
            throttled_periods=throttling.get("nr_throttled", 0),
            throttled_seconds=throttling.get("throttled_time", 0) / 1e9,
            pids_refused=_read_keyed(pids / "pids.events").get("max", 0) if pids else 0,
        )


def _inherit_cpuset(cgroup: Path) -> None:
    """Give a v1 cpuset cgroup its parent's CPUs and memory nodes, if it has none yet.

    A new cpuset cgroup starts with both lists empty, and the kernel refuses to let a task join
    it (ENOSPC) until both are set (cgroup-v1/cpusets.rst). v1 also has cgroup.clone_children:
    set in a parent, the kernel copies both lists into each new child by itself. But minirun/
    would still need its own copy from the host's root, whose flag is the host's to set; so we
    copy at both levels, the same way. Copying into minirun/ only when it is empty also mends
    the moment in which another minirun has just made it and not yet copied."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(cgroup / name):
            _write(cgroup / name, _read(cgroup.parent / name), "give the cgroup its cpuset")


# --- Small helpers shared by both drivers -----------------------------------------------------

def _require_controllers(limits: Limits, offered) -> None:
    """Each limit needs its controller; without it, say so before anything is made."""
    for controller, wanted in (("memory", limits.memory), ("cpu", limits.cpus),
                               ("pids", limits.pids)):
        if wanted is not None and controller not in offered:
            raise RuntimeFailure(f"this host offers no {controller} cgroup controller, so "
                                 f"minirun cannot limit {controller}")


def _make_under_parent(cgroup: Path, prepare_parent=None) -> None:
    """mkdir a container's cgroup, and minirun/ above it first if it is missing.

    minirun/ goes when its last container's cgroup goes (_remove_if_unused), so another minirun
    may remove it between our two mkdirs. Then the second fails, and we go round again.
    `prepare_parent(parent)` runs in between, on each round (v2 enables controllers there,
    v1 cpuset gives it CPUs).
    """
    for attempt in range(3):
        _make_dir(cgroup.parent, exist_ok=True)
        try:
            if prepare_parent:
                prepare_parent(cgroup.parent)
            _make_dir(cgroup)
            return
        except RuntimeFailure:
            if attempt == 2 or cgroup.parent.exists():
                raise


def _make_ancestors(cgroup: Path, prepare=None) -> None:
    """The missing parents of an engine's cgroupsPath (e.g. /libpod_parent), top down; each
    `prepare`d (v1 cpuset: its CPUs) before a child is made in it."""
    missing = []
    for parent in cgroup.parents:
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        _make_dir(parent, exist_ok=True)
        if prepare:
            prepare(parent)


def _remove_if_unused(parent: Path) -> None:
    """rmdir minirun/ once no container's cgroup is left in it, so that minirun leaves nothing
    in the host's trees. While one is, the kernel refuses with EBUSY: that refusal is the
    check, with no window between looking and removing. (ENOTEMPTY: a plain directory, as in
    the tests' v2-shaped tree; ENOENT: gone already.)"""
    try:
        os.rmdir(parent)
    except OSError as error:
        if error.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
            raise RuntimeFailure(f"cannot remove {parent}: {error.strerror}") from None


def _make_dir(path: Path, exist_ok: bool = False) -> None:
    # mkdir in a cgroup filesystem creates a cgroup: the kernel fills it with interface files.
    try:
        path.mkdir(exist_ok=exist_ok)
    except PermissionError:
        raise RuntimeFailure(f"cannot create the cgroup {path}: minirun needs root") from None
    except FileExistsError:
        raise RuntimeFailure(f"the cgroup {path} exists already: another container has this "
                             "id, or it is stale (`minirun gc` removes stale ones)") from None
    except OSError as error:
        raise RuntimeFailure(f"cannot create the cgroup {path}: {error.strerror}") from None


def _write(path: Path, value, what: str, missing_ok: bool = False) -> bool:
    """Write one value into a cgroup file, in one write(2): the kernel parses each write whole.
    Return False if the file does not exist and missing_ok says that is fine."""
    try:
        # Never O_CREAT: the kernel makes every file of a cgroup, and a name it did not make
        # is a mistake. O_TRUNC is what `echo VALUE > FILE` does; cgroup files ignore it.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise RuntimeFailure(f"cannot {what}: {path} does not exist") from None
    except OSError as error:
        raise RuntimeFailure(f"cannot {what}: {path}: {error.strerror}") from None
    try:
        os.write(fd, str(value).encode())
    except OSError as error:
        raise RuntimeFailure(f"cannot {what}: writing {value} to {path} failed: "
                             f"{error.strerror}") from None
    finally:
        os.close(fd)
    return True


def _read(path: Path, missing_ok: bool = False) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise


def _read_keyed(path: Path) -> dict[str, int]:
    """Read a flat keyed file ("oom_kill 1" per line, cgroup-v2.rst "Format"); {} if absent."""
    try:
        text = _read(path)
    except FileNotFoundError:
        return {}
    pairs = (line.split() for line in text.splitlines())
    return {fields[0]: int(fields[1]) for fields in pairs if len(fields) == 2}


def _pids_in(cgroup: Path) -> set[int]:
    try:
        return {int(pid) for pid in _read(cgroup / "cgroup.procs").split()}
    except FileNotFoundError:
        return set()


def _kill_all_in(cgroup: Path) -> None:
    """SIGKILL every process in a cgroup.

    v2 (Linux 5.14+) does it in one write: "1" into cgroup.kill kills every process in the
    cgroup at once, even one forking right now ("cgroup.kill", cgroup-v2.rst).

    Elsewhere we kill what cgroup.procs lists, without ever hitting a stranger: a listed
    process may exit and its number go to an unrelated process. So we open a pidfd for each
    (pidfd_open(2): it stays bound to that one process), read the list again, and signal
    through the pidfd only the processes still listed: those are ours for certain. A child
    forked meanwhile is caught by the next sweep (see _remove).
    """
    if _write(cgroup / "cgroup.kill", 1, "kill the container's processes", missing_ok=True):
        return                              # otherwise: v1, or a v2 kernel before 5.14
    pidfds = {}
    try:
        for pid in _pids_in(cgroup):
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                pass
        still_here = _pids_in(cgroup)
        for pid, pidfd in pidfds.items():
            if pid in still_here:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def _remove(cgroup: Path, kill: bool, patience: float = 2.0) -> None:
    """rmdir a cgroup and every cgroup below it, deepest first, SIGKILLing what is in each
    if `kill`.

    The kernel refuses the rmdir (EBUSY) while a process is in the cgroup, or a cgroup below
    it: one made by systemd or a nested runtime in the container, or by the container itself
    through a cgroup filesystem of its own. Left there, it would keep the container's cgroup
    and minirun/ forever. So on EBUSY we kill what is in it, remove the cgroups below, each the
    same way, and try again. (The rmdir comes first because the usual cgroup, after its PID 1
    exited, is empty: then that one call is all.) A killed process leaves only once it has
    finished exiting, so we retry for up to `patience` seconds, killing again each time (a
    fork bomb's last children, bounded by pids.max).
    """
    deadline = time.monotonic() + patience
    pause = 0.0005
    while True:
        try:
            os.rmdir(cgroup)
            return
        except FileNotFoundError:
            return                          # removed already: remove() may run twice
        except OSError as error:
            refusal = RuntimeFailure(f"cannot remove the cgroup {cgroup}: {error.strerror}; "
                                     "`minirun gc` will try again")
            if error.errno != errno.EBUSY:
                raise refusal from None
        if kill:
            _kill_all_in(cgroup)
        below = _cgroups_below(cgroup)
        for child in below:
            _remove(child, kill, patience)
        if not below:                       # only processes, still exiting (or not ours to kill)
            if time.monotonic() >= deadline:
                raise refusal
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _cgroups_below(cgroup: Path) -> list[Path]:
    """The cgroups directly below `cgroup`: its subdirectories (its files are the kernel's)."""
    try:
        return [Path(entry.path) for entry in os.scandir(cgroup)
                if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
