"""User namespaces: a root that is root only inside the container (user_namespaces(7)).

Every other namespace hides something from a process; a user namespace changes who the process
*is*. Inside it, user and group IDs are translated by two tables, /proc/PID/uid_map and
gid_map, each line "FIRST-INSIDE FIRST-OUTSIDE COUNT". An OCI bundle's

    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]

becomes the line "0 100000 65536": the container's uid 0 is the host's uid 100000, its uid
1000 the host's 101000. Files the container's root creates belong to host uid 100000; files of
host users outside the map (host root's, most of all) show up inside as the overflow ID, 65534
("nobody", /proc/sys/kernel/overflowuid).

The container's root has every capability, but over the namespace only: over what the user
namespace owns (the namespaces created after it, and the files of mapped IDs). Not over the
host's: it cannot override the permissions of a file of an unmapped owner (no
CAP_DAC_OVERRIDE there), nor make device nodes (mknod(2) needs CAP_MKNOD in the first user
namespace), nor load modules or set the clock. A process that escaped the container's other
walls would still be an unprivileged host user.

Who writes the maps, and why the runtime: a map is written once, by a process with CAP_SETUID
(CAP_SETGID for gid_map) in the *parent* user namespace, and a writer in the parent namespace
may map any of its IDs (user_namespaces(7), "Defining user and group ID mappings"). The
child, once inside its new namespace, has capabilities only there: it can map no more than its
own one ID. So the child makes the namespace, tells the runtime (host root) its PID, and waits;
the runtime writes /proc/CHILD/uid_map and gid_map; the child goes on. Unprivileged runtimes
(rootless podman) have the setuid programs newuidmap and newgidmap write the maps for them,
within /etc/subuid; a root runtime needs none. For the same reason gid_map needs no "deny" in
/proc/PID/setgroups: that is asked only of a writer without CAP_SETGID in the parent namespace,
and leaving setgroups(2) allowed keeps process.user.additionalGids working.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from minirun.errors import RuntimeFailure

# A map holds at most 340 lines (since Linux 4.15; 5 before), and (uid_t)-1 is no ID: to
# setresuid(2) and chown(2) it means "leave it unchanged" (user_namespaces(7)).
MAX_LINES = 340
NO_ID = 2**32 - 1


@dataclass(frozen=True)
class Mapping:
    container: int      # the first ID inside
    host: int           # the ID it is outside
    size: int

    def line(self) -> str:
        return f"{self.container} {self.host} {self.size}\n"


def check(mappings: list[Mapping], where: str) -> None:
    """The kernel's rules for one map, checked before anything is made, so that a bad bundle
    fails in one line naming the field: positive sizes, IDs below (uid_t)-1, and ranges that
    overlap neither inside nor outside (the map must be one-to-one)."""
    if len(mappings) > MAX_LINES:
        raise RuntimeFailure(f"config.json: {where} has {len(mappings)} ranges: the kernel "
                             f"takes at most {MAX_LINES}")
    for index, item in enumerate(mappings):
        name = f"{where}[{index}]"
        if item.size <= 0 or item.container < 0 or item.host < 0:
            raise RuntimeFailure(f"config.json: {name} needs IDs of 0 or more and a size of "
                                 "1 or more")
        if max(item.container, item.host) + item.size > NO_ID:
            raise RuntimeFailure(f"config.json: {name} runs past the last ID, {NO_ID - 1}")
        for other_index, other in enumerate(mappings[:index]):
            for side in ("container", "host"):
                first, other_first = getattr(item, side), getattr(other, side)
                if first < other_first + other.size and other_first < first + item.size:
                    raise RuntimeFailure(
                        f"config.json: {name} overlaps {where}[{other_index}] on the {side} "
                        "side: each ID may be mapped once")


def host_id(mappings: list[Mapping], inside: int) -> int | None:
    """The host's ID for `inside`, the container's; None if it is not mapped."""
    for item in mappings:
        if item.container <= inside < item.container + item.size:
            return item.host + inside - item.container
    return None


def _mapped_from_host(mappings: list[Mapping], outside: int) -> bool:
    return any(item.host <= outside < item.host + item.size for item in mappings)


def blocked_on_the_way(root: Path, uids: list[Mapping], gids: list[Mapping]) -> Path | None:
    """The first directory above `root` that the container's root may not pass through, if
    any. It sets the container up from inside its namespace (it mounts the root on itself), so
    it looks the path up as host uid 100000 (say), not as host root. Its capabilities count
    only on files whose owner and group are both mapped (capabilities(7), "Interaction with
    user namespaces"); elsewhere, the permission bits decide: search (x) for its uid, its gid,
    or anyone. runc has the same need: engines make their storage directories 0711."""
    uid, gid = host_id(uids, 0), host_id(gids, 0)
    for path in {root, Path(os.path.realpath(root))}:
        for directory in reversed(path.parents):
            info = os.stat(directory)
            if _mapped_from_host(uids, info.st_uid) and _mapped_from_host(gids, info.st_gid):
                continue
            bit = 0o100 if info.st_uid == uid else 0o010 if info.st_gid == gid else 0o001
            if not info.st_mode & bit:
                return directory
    return None


class Handshake:
    """The pipe on which the child asks the runtime for its maps, and later names the process
    that is the container (see oci._enter_user_namespace). Made before the fork: both ends are
    inherited, and each side closes the end it does not use."""

    def __init__(self, uids: list[Mapping], gids: list[Mapping]):
        self.uids, self.gids = uids, gids
        self.read, self.write = os.pipe2(os.O_CLOEXEC)

    # -- the child's side
    def tell(self, pid: int) -> None:
        os.write(self.write, f"{pid}\n".encode())

    def ask_for_maps(self, link) -> None:
        """In the child, just after unshare(CLONE_NEWUSER): give the runtime our PID (we are in
        its PID namespace still, so ours is the number it knows), then wait until it has
        written the maps. Until then our IDs read as 65534 inside and setuid(0) would fail."""
        self.tell(os.getpid())
        link.wait_for_runtime()

    # -- the runtime's side
    def write_maps(self) -> None:
        """In the runtime (host root), as spawn.fork's `after_go` work: wait for the child's
        PID, write its maps. If the child dies first, the pipe says end-of-file."""
        self._close_ours()
        pid = self._receive()
        for name, mappings in (("uid_map", self.uids), ("gid_map", self.gids)):
            try:
                Path(f"/proc/{pid}/{name}").write_text("".join(item.line() for item in mappings))
            except OSError as error:
                raise RuntimeFailure(f"writing the container's {name} failed: {error}") from None

    def container_pid(self) -> int:
        """In the runtime, once the container waits: the host PID of its process."""
        self._close_ours()
        try:
            return self._receive()
        finally:
            os.close(self.read)

    def _close_ours(self) -> None:
        """The runtime's copy of the writing end: closed, the child's copies are the only
        writers, and a child that dies reads as end-of-file instead of a wait for ever."""
        if self.write >= 0:
            os.close(self.write)
            self.write = -1

    def _receive(self) -> int:
        message = b""
        while not message.endswith(b"\n"):
            chunk = os.read(self.read, 32)
            if not chunk:
                raise RuntimeFailure("creating the container failed: its process ended before "
                                     "entering its user namespace")
            message += chunk
        return int(message)


def become_root() -> None:
    """In the child, once the maps are written: become the namespace's root. The process is
    still the host's uid 0, which is not mapped; setting the IDs to 0 *inside* makes it host
    uid 100000 (say), so that what it makes from here on (the /dev tmpfs, the mount points)
    belongs to the container's root. The capabilities stay: a process that changes to the
    namespace's root keeps them (capabilities(7), "Effect of user ID changes")."""
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)

