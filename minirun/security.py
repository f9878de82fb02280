"""Privileges: what root inside a container may still do, through python-prctl.

Root in a container is the host's root (there is no user namespace here), so the runtime takes
away what a container has no business doing before it starts the app (capabilities(7)):
- the capability bounding set keeps only Docker's default list; on execve(2) root's permitted
  set becomes its bounding set, so everything else is gone for good for this process tree,
  CAP_SYS_ADMIN (mount, pivot_root, ...) and CAP_SYS_MODULE among them;
- no_new_privs: no execve can gain privileges again, set-user-ID files included
  (Documentation/userspace-api/no_new_privs.rst);
- the user: an image (or -u) may name an unprivileged user to run as instead of root;
- parent-death signal: if minirun itself dies, the kernel SIGKILLs the container's PID 1, and
  with it the whole PID namespace, so a killed runtime cannot leave a container running.
"""
import os
import signal

import prctl

from minirun.errors import RuntimeFailure

# Docker's default capability set (moby's oci/caps/defaults.go lists the same fourteen).
DEFAULT_CAPABILITIES = frozenset({
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap",
})


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: SIGKILL this process when the process that forked it exits."""
    prctl.set_pdeathsig(signal.SIGKILL)


def drop_privileges(keep: frozenset[str] = DEFAULT_CAPABILITIES) -> None:
    """Shrink the bounding, inheritable, permitted and effective sets to `keep`; set no_new_privs."""
    for name in prctl.ALL_CAP_NAMES:                   # e.g. "sys_admin"
        if name not in keep:
            prctl.capbset.drop(name)
    kept = [name for name in prctl.ALL_CAP_NAMES if name in keep]
    prctl.cap_inheritable.limit()
    prctl.cap_effective.limit(*kept)        # effective must stay a subset of permitted: shrink it first
    prctl.cap_permitted.limit(*kept)
    prctl.set_no_new_privs(1)


def switch_user(spec: str) -> tuple[int, int, tuple[int, ...]]:
    """Become `spec` -- "name", "uid", "name:group" or "uid:gid" -- as `docker run -u` does.

    Names are looked up in the container's own /etc/passwd and /etc/group (the root has already
    changed: the host's users mean nothing here). The order is forced: setgroups and setgid need
    CAP_SETGID, which the setuid to a non-zero UID takes away along with every other capability
    (capabilities(7), "Effect of user ID changes on capabilities").
    """
    uid, gid, supplementary = resolve_user(spec)
    os.setgroups(list(supplementary))
    os.setgid(gid)
    os.setuid(uid)
    return uid, gid, supplementary


def resolve_user(spec: str, passwd: str | os.PathLike | None = "/etc/passwd",
                 group_file: str | os.PathLike | None = "/etc/group") -> tuple[int, int, tuple[int, ...]]:
    """The UID, GID and supplementary groups `spec` names, by the given passwd and group files
    (None: the image has none). A UID the image does not list is used as is, with group 0, as
    Docker does. minivm calls this on the host with the image's files, for its guest."""
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
