"""Privileges: what root inside a container may still do: capabilities(7) by number, with
prctl(2) and capset(2) themselves, and the process's flags through python-prctl.

Root in a container is the host's root (there is no user namespace here), so the runtime takes
away what a container has no business doing before it starts the app (capabilities(7)):
- the capability bounding set keeps only Docker's default list; on execve(2) root's permitted
  set becomes its bounding set, so everything else is gone for good for this process tree,
  CAP_SYS_ADMIN (mount, pivot_root, ...) and CAP_SYS_MODULE among them;
- no_new_privs: no execve can gain privileges again, set-user-ID files included
  (Documentation/userspace-api/no_new_privs.rst);
- the user: an image (or -u) may name an unprivileged user to run as instead of root;
- parent-death signal: if minirun itself dies, the kernel SIGKILLs the container's PID 1, and
  with it the whole PID namespace, so a killed runtime cannot leave a container running;
- descriptors: nothing the caller of minirun had open crosses into the container.

`--cap-add` and `--cap-drop` change the kept set as Docker's do; `--privileged` keeps every
capability and sets no no_new_privs (and the container turns off its other protections too).
"""
import ctypes
import errno
import os
import signal
from typing import NamedTuple

import prctl

from minirun.errors import RuntimeFailure
from minirun.namespaces import libc

# The capabilities, by number, as <linux/capability.h> defines them (capabilities(7) describes
# each). minirun keeps its own table: python-prctl's is fixed when it is built, and here lacks
# checkpoint_restore (40) and lists a "last_cap" that is no capability at all.
CAPABILITY_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill",                 # 0-5
    "setgid", "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",  # 6-11
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",            # 12-17
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",          # 18-23
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",         # 24-29
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",       # 30-35
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",                 # 36-40
)
NUMBER = {name: number for number, name in enumerate(CAPABILITY_NAMES)}
# The last one this kernel knows (proc(5)): an older kernel knows fewer, a newer one more, which
# have no name here and are dropped from every set, as everything not asked for.
with open("/proc/sys/kernel/cap_last_cap") as _file:
    LAST_CAP = int(_file.read())
ALL_CAPABILITIES = frozenset(CAPABILITY_NAMES[:LAST_CAP + 1])

# Docker's default capability set (moby's oci/caps/defaults.go lists the same fourteen).
DEFAULT_CAPABILITIES = frozenset({
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap",
})


class Privileges(NamedTuple):   # (a NamedTuple: a third of a dataclass's cost to define)
    """What root in the container keeps: its capabilities, and whether no_new_privs is set."""
    capabilities: frozenset[str] = DEFAULT_CAPABILITIES
    privileged: bool = False

    @classmethod
    def from_options(cls, add, drop, privileged: bool) -> "Privileges":
        """--cap-add/--cap-drop take Docker's names (NET_ADMIN, CAP_NET_ADMIN, ALL), in any case.
        ALL in --cap-drop starts from nothing, ALL in --cap-add from everything; then the named
        ones are dropped, then added."""
        added, dropped = _capability_names(add, "--cap-add"), _capability_names(drop, "--cap-drop")
        if privileged:
            return cls(ALL_CAPABILITIES, privileged=True)
        base = ALL_CAPABILITIES if "all" in added else \
            frozenset() if "all" in dropped else DEFAULT_CAPABILITIES
        return cls((base - dropped) | (added - {"all"}))

    @classmethod
    def from_record(cls, capabilities: list[str] | None, privileged: bool) -> "Privileges":
        if capabilities is None:
            return cls(privileged=privileged)
        return cls(frozenset(capabilities), privileged)

    def capability_sets(self) -> dict[str, frozenset]:
        """The kept set as config.json's process.capabilities (config.md): root keeps it in its
        bounding, permitted and effective sets; nothing is inheritable or ambient, as in
        Docker's (since CVE-2022-24769, inheritable capabilities crossed an exec unasked)."""
        return {"bounding": self.capabilities, "permitted": self.capabilities,
                "effective": self.capabilities, "inheritable": frozenset(), "ambient": frozenset()}


def describe(kept: frozenset, no_new_privs: bool) -> str:
    """--explain's line for what a process keeps."""
    if not no_new_privs and kept >= ALL_CAPABILITIES:
        return "--privileged: every capability kept, no no_new_privs"
    names = "Docker's default set" if kept == DEFAULT_CAPABILITIES else \
        (", ".join(sorted(kept)) or "none")
    return f"capabilities cut to {names}; " + ("no_new_privs set" if no_new_privs else
                                                "no no_new_privs")


def _capability_names(names, flag: str) -> frozenset[str]:
    known = ALL_CAPABILITIES | {"all"}
    found = set()
    for name in names:
        short = name.lower().removeprefix("cap_")
        if short not in known:
            raise RuntimeFailure(f"{flag} {name}: no such capability; give a name from "
                                 "capabilities(7), e.g. NET_ADMIN, or ALL")
        found.add(short)
    return frozenset(found)


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG (prctl(2)): the kernel SIGKILLs this process when the thread that forked
    it ends, even by SIGKILL. A container's first process and QEMU (minivm/machine.py) take it
    between fork and exec, so neither outlives the program that started it."""
    prctl.set_pdeathsig(signal.SIGKILL)


def set_dumpable(dumpable: bool) -> bool:
    """PR_SET_DUMPABLE (prctl(2)); returns what it was. A process that is not dumpable keeps its
    /proc/PID files (environ, exe, fd, mem, ...) and ptrace(2) to itself against anyone without
    CAP_SYS_PTRACE, even a process of its own uid ("Ptrace access mode checking"). fork(2) keeps
    the flag; execve(2) of an ordinary program sets it again, for the new program."""
    was = bool(prctl.get_dumpable())
    prctl.set_dumpable(dumpable)
    return was


def stay_after_parent() -> None:
    """Undo die_with_parent: for a process the engine's subreaper adopts once minirun exits."""
    prctl.set_pdeathsig(0)


def drop_privileges(capabilities: dict[str, frozenset],
                    ids: tuple[int, int, tuple[int, ...]] | None, no_new_privs: bool) -> None:
    """Give up what the process must not keep, in the one order the kernel allows
    (capabilities(7)): `capabilities` as config.json's process.capabilities (set -> names),
    `ids` (uid, gid, supplementary gids) the user to become, or None to stay who it is.

    1. The bounding set first, while CAP_SETPCAP is still held: on execve(2) root's permitted
       set becomes its bounding set, so what is dropped here is gone for the whole tree.
    2. The user: setgroups and setgid need CAP_SETGID, which the setuid to a non-zero UID takes
       away with every other capability, unless PR_SET_KEEPCAPS keeps the permitted set across
       it ("Effect of user ID changes on capabilities"), so that step 3 still chooses.
    3. One capset(2) for the permitted, effective and inheritable sets; then the ambient set,
       one prctl(PR_CAP_AMBIENT_RAISE) each. The kernel keeps ambient capabilities only if
       inheritable too, so a bundle's ambient ones (`runc spec` asks for some) are made
       inheritable as well.
    4. no_new_privs: no execve can gain privileges again, set-user-ID files included
       (Documentation/userspace-api/no_new_privs.rst).
    Every set is handled by number (CAPABILITY_NAMES), with prctl(2) and capset(2) themselves.
    """
    bounding = _mask(capabilities["bounding"])
    for number in range(LAST_CAP + 1):
        if not bounding >> number & 1:
            _prctl(f"drop capability {number} from the bounding set", PR_CAPBSET_DROP, number)
    if ids is not None:
        uid, gid, groups = ids
        prctl.set_keepcaps(True)
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)
        prctl.set_keepcaps(False)
    # Raised only where still permitted: what minirun itself does not hold (a host's root may
    # lack some, see CapPrm in /proc/self/status) no capset can give.
    held = _capget()[1]
    inheritable = capabilities["inheritable"] | capabilities["ambient"]
    _capset(_mask(capabilities["effective"]) & held, _mask(capabilities["permitted"]) & held,
            _mask(inheritable) & held)
    for name in capabilities["ambient"]:
        _prctl(f"raise ambient capability {name}", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE,
               NUMBER[name])
    if no_new_privs:
        prctl.set_no_new_privs(1)


def _mask(names) -> int:
    """Capability names as the kernel's 64-bit mask: bit N is capability N."""
    return sum(1 << NUMBER[name] for name in names)


def _prctl(what: str, *arguments: int) -> None:
    """prctl(2) with a capability's number, which python-prctl takes only by its own names."""
    if libc.prctl(*arguments, *[0] * (5 - len(arguments))) != 0:
        raise OSError(ctypes.get_errno(), what)


# capget(2)/capset(2) take a header and, in version 3 of the interface, two 32-bit halves of
# each set (<linux/capability.h>: _LINUX_CAPABILITY_VERSION_3).
class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_VERSION_3 = 0x20080522


def _capget() -> tuple[int, int, int]:
    """This process's effective, permitted and inheritable sets, as masks."""
    header, data = _Header(_VERSION_3, 0), (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    return tuple(getattr(data[0], kind) | getattr(data[1], kind) << 32
                 for kind in ("effective", "permitted", "inheritable"))


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    data = (_Data * 2)(*[_Data(effective >> shift & 0xFFFFFFFF, permitted >> shift & 0xFFFFFFFF,
                               inheritable >> shift & 0xFFFFFFFF) for shift in (0, 32)])
    if libc.capset(ctypes.byref(_Header(_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


PR_CAPBSET_DROP = 24                            # <linux/prctl.h>
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2     # <linux/prctl.h>


SYS_close_range = 436           # the same number on every architecture (asm-generic/unistd.h)
CLOSE_RANGE_CLOEXEC = 1 << 2


def close_inherited_descriptors() -> None:
    """Mark every descriptor above 2 close-on-exec, so that only stdin, stdout and stderr cross
    into the container.

    Whatever the caller of minirun had open is inherited by minirun and by every child it forks:
    a directory of the host opened as descriptor 9 (`exec 9</`) would be, inside the container,
    /proc/self/fd/9 — a way back to the host's root that no pivot_root can close. runc closes
    every descriptor above 2 for the same reason. close_range(2) with CLOSE_RANGE_CLOEXEC
    (Linux 5.11) marks them all in one call; they close at the exec itself, so the runtime's
    report pipe still works until that moment. Older kernels: one fcntl a descriptor.
    """
    if libc.syscall(SYS_close_range, 3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) == 0:
        return
    if ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL):
        raise OSError(ctypes.get_errno(), "close_range")
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.set_inheritable(int(name), False)
            except OSError:
                pass                    # the listing's own descriptor, closed by now


def resolve_user(spec: str, passwd: str | os.PathLike | None = "/etc/passwd",
                 group_file: str | os.PathLike | None = "/etc/group") -> tuple[int, int, tuple[int, ...]]:
    """The UID, GID and supplementary groups `spec` -- "name", "uid", "name:group" or "uid:gid",
    as `docker run -u` takes it -- names, by the given passwd and group files (None: the image
    has none). A UID the image does not list is used as is, with group 0, as Docker does.

    A container's process calls it once its root has changed, so that the names are the
    container's own (the host's users mean nothing there); minivm calls it on the host with
    the image's files, for its guest."""
    name, _, group = spec.partition(":")
    users = _table(passwd)
    entry = users.get(name) or next((row for row in users.values() if row[1] == name), None)
    if entry is None and not _is_id(name):
        raise RuntimeFailure(f"no user {name!r} in the image's /etc/passwd: "
                             "give a numeric UID, or a user the image has")
    if entry and not (_is_id(entry[1]) and _is_id(entry[2])):
        raise RuntimeFailure(f"the image's /etc/passwd line for {name!r} has no valid numeric "
                             "UID and GID")
    uid = _id(entry[1] if entry else name, "user")
    gid = _id(entry[2], "group") if entry else 0
    groups = _table(group_file)
    if group:
        if group in groups and _is_id(groups[group][1]):
            gid = _id(groups[group][1], "group")
        elif _is_id(group):
            gid = _id(group, "group")
        else:
            raise RuntimeFailure(f"no group {group!r} in the image's /etc/group: "
                                 "give a numeric GID, or a group the image has")
    login = entry[0] if entry else None
    supplementary = tuple(sorted({gid} | {_id(row[1], "group") for row in groups.values()
                                          if login and login in row[2].split(",")
                                          and _is_id(row[1])}))
    return uid, gid, supplementary


def home_directory(uid: int, passwd: str = "/etc/passwd") -> str:
    """The home directory the container's passwd file gives `uid`, "/" if none: Docker's HOME."""
    for row in _table(passwd).values():
        if row[1] == str(uid) and len(row) >= 5 and row[4]:
            return row[4]
    return "/"


# A UID or GID is a 32-bit number, but the last one, 4294967295, is (uid_t)-1: to setuid(2)
# and chown(2) it means "no change", never a user.
LAST_ID = 2**32 - 2


def _is_id(text: str) -> bool:
    """Written as an ID: ASCII digits only (str.isdigit and int() also take other scripts'
    digits, and '٣' must not become user 3)."""
    return text.isascii() and text.isdigit()


def _id(text: str, what: str) -> int:
    number = int(text)
    if number > LAST_ID:
        raise RuntimeFailure(f"invalid {what} ID {text}: IDs go from 0 to {LAST_ID}")
    return number


def _table(path: str | os.PathLike | None) -> dict[str, list[str]]:
    """/etc/passwd or /etc/group as {name: [name, id, third field...]} ({} if missing).

    passwd rows are name:password:uid:gid:..., group rows name:password:gid:members; the
    password field is dropped so that row[1] is the id either way.
    """
    if path is None:
        return {}
    try:
        with open(path) as table:
            rows = [line.rstrip("\n").split(":") for line in table
                    if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return {}
    return {row[0]: [row[0], *row[2:]] for row in rows if len(row) >= 3}
