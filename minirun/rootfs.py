"""The container's filesystem: an overlay over the image, the kernel's pseudo-filesystems, a new root.

Everything here runs inside the container's own mount namespace (after unshare(CLONE_NEWNS)),
so the host's mount table never changes: when the container's last process exits, the kernel
tears the namespace down and every mount below goes with it. Only the overlay's upper and work
directories live on the host's disk, in the container's bundle directory, and `remove_bundle`
deletes them.
"""
import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple

from minirun import cgroups, state
from minirun.errors import RuntimeFailure
from minirun.namespaces import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
                                MS_RDONLY, MS_REC, MS_REMOUNT, mount, pivot_root, umount2)

# Character devices every program expects (devices.txt in the kernel docs): (name, major, minor).
# The host's disks, consoles and everything else in its /dev stay out of reach.
DEVICES = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
           ("tty", 5, 0)]

# What a root process in the container could read the host's secrets through, or poke its
# kernel with: runc's default spec's linux.maskedPaths and linux.readonlyPaths, the lists `run`
# gives `assemble` (an OCI bundle brings its own). A masked file is covered by /dev/null, a
# masked directory by an empty read-only tmpfs; the read-only ones are bound read-only on
# themselves (--privileged: neither).
MASKED_PATHS = ["/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/sched_debug", "/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap"]    # (power readings: a side channel, RAPL)
READ_ONLY_PATHS = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"]
# overlayfs refuses more lower layers than this (OVL_MAX_STACK in the kernel's fs/overlayfs; Docker
# itself stops images at 127 layers).
OVERLAY_MAX_LOWER = 500


class Bundle:
    """The container's directory on the host: the overlay's upper and work dirs and the mount point.

    Beside it, ID.lock: its owner, the minirun that runs the container, holds a flock on it for
    as long as it lives (state.hold_for_life). A bundle whose lock is free, or gone, belongs to
    no living minirun, whichever state directory recorded it: gc removes it.
    """

    def __init__(self, path: Path, lock: int | None = None):
        self.path = path
        self.lock = lock        # the descriptor of the lock, while we hold it

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.lock")

    @property
    def upper(self) -> Path:        # the container's writes land here (copy-on-write)
        return self.path / "upper"

    @property
    def work(self) -> Path:         # overlayfs's scratch space, on the same filesystem as upper
        return self.path / "work"

    @property
    def merged(self) -> Path:       # where the stacked view is mounted; becomes the container's /
        return self.path / "merged"

    @property
    def layers(self) -> Path:       # short names for the image's layers: see layer_links
        return self.path / "layers"


def create_bundle(containers_dir: Path, container_id: str, record: Path,
                  reuse: bool = False) -> Bundle:
    """Take the container's lock, note in it where its record is kept (for a gc run from
    another state directory), then make the bundle. The lock comes first, so that no moment
    exists when the bundle is there and unowned. On failure (a full or read-only store), remove
    what was made and say so in one line.

    `reuse`: a kept bundle (keep_bundle) may be there already, from the container's last life
    (`minirun start`): its upper directory is taken as it is; only the links to the image's
    layers are made anew, as the image may have been re-imported meanwhile."""
    bundle = Bundle(containers_dir / container_id)
    try:
        containers_dir.mkdir(parents=True, exist_ok=True)
        bundle.lock = state.hold_for_life(bundle.lock_path)
        os.ftruncate(bundle.lock, 0)
        os.write(bundle.lock, str(record).encode())
        if reuse:
            _remove_tree(bundle.layers)
        for directory in (bundle.upper, bundle.work, bundle.merged):
            directory.mkdir(parents=True, exist_ok=reuse)
    except OSError as error:
        remove_bundle(bundle)
        raise RuntimeFailure(f"cannot make the container's directory in {containers_dir}: "
                             f"{error.strerror}; free space (or inodes) there, or point "
                             "MINIRUN_ROOT at another store") from None
    return bundle


def remove_bundle(bundle: Bundle) -> None:
    """Remove the bundle, then its lock, which must be ours (held): never a living owner's."""
    _remove_tree(bundle.path)
    if bundle.lock is not None:
        try:
            bundle.lock_path.unlink(missing_ok=True)
        except OSError:
            pass                # a read-only store: the lock stays, free, for a later gc
        os.close(bundle.lock)
        bundle.lock = None


def keep_bundle(bundle: Bundle, owner: Path) -> None:
    """Let go of the bundle but keep it: `minirun start` will mount its upper directory again.
    The lock's note now names `owner`, the record that keeps it (a detached container's
    record.json): while that file exists, gc leaves the bundle alone; once it is gone (`rm`,
    or gc of a killed supervisor's directory), the bundle is garbage like any other."""
    os.ftruncate(bundle.lock, 0)
    os.pwrite(bundle.lock, str(owner).encode(), 0)
    os.close(bundle.lock)
    bundle.lock = None


def is_kept(note: str) -> bool:
    """Whether a free bundle's lock note names a record that keeps it (keep_bundle): a
    detached container's record.json, still there. (A running container's note names its
    state record, ID.json, which a dead run leaves behind: garbage.)"""
    owner = Path(note)
    return owner.is_absolute() and owner.name == "record.json" and owner.exists()


def _remove_tree(top: Path) -> None:
    """`rm -rf top`: each directory's files and links, then the directory, deepest first; what
    cannot go stays, for a later gc. (Not shutil.rmtree: importing shutil imports bz2 and lzma
    too, 3 ms of every run. Nothing races this walk: the container's processes died with its
    cgroup, which goes first.)"""
    for directory, subdirectories, files in os.walk(top, topdown=False):
        for name in files:
            with suppress(OSError):
                os.unlink(os.path.join(directory, name))
        for name in subdirectories:         # emptied already, or a link to a directory
            path = os.path.join(directory, name)
            with suppress(OSError):
                (os.unlink if os.path.islink(path) else os.rmdir)(path)
    with suppress(OSError):
        os.rmdir(top)


def make_mounts_private() -> None:
    """Stop mount events from flowing back to the host.

    A new mount namespace starts as a copy whose mounts are usually *shared* with the host's
    (systemd makes / shared), so a mount made inside would appear outside too. MS_PRIVATE,
    recursively, cuts that propagation (mount_namespaces(7), "Shared subtrees").
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_overlay(layers: list[Path], bundle: Bundle, hardened: bool = True,
                  volatile: bool = True) -> None:
    """Stack the image's layers read-only under the container's own writable upper directory.

    overlayfs lists lower directories top first (Documentation/filesystems/overlayfs.rst); a
    write copies the file up into upperdir, so the image is never changed and starting a
    container copies nothing.

    `volatile` skips the sync of the upper filesystem that overlayfs otherwise does when it is
    unmounted (overlayfs.rst, "Volatile mount"): the upper directory is thrown away when the
    container ends, so there is nothing worth waiting for. Measured here, that sync cost about
    20 ms of every run's teardown. A kept upper directory (`run -d` without --rm, for `minirun
    start`) is mounted without it: overlayfs refuses to mount a volatile one's upper again
    (it leaves work/work/incompat/volatile behind, as a warning that the upper may be torn).

    `hardened`: nosuid and nodev. A set-user-ID file in the image, or one made in the container,
    grants nothing (no_new_privs already sees to that for the container's own processes; this
    holds for any process), and a device node made with mknod cannot be opened through the root
    filesystem: devices live only in /dev, where the cgroup's allow-list guards them.
    """
    lower = layer_links(layers, bundle.layers)
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(bundle.layers)         # the short names are relative to it
        mount("overlay", str(bundle.merged), "overlay", MS_NOSUID | MS_NODEV if hardened else 0,
              f"lowerdir={lower},upperdir={bundle.upper},workdir={bundle.work}"
              + (",volatile" if volatile else ""))
    finally:
        os.fchdir(here)
        os.close(here)


def layer_links(layers: list[Path], directory: Path) -> str:
    """Name the layers 0, 1, 2... (bottom first) by symbolic links in `directory`; the lowerdir
    option that stacks them, top first, for a mount made from inside `directory`.

    mount(2) copies its options into one page of memory (4096 bytes here), and overlayfs takes
    every lower directory from that one string: with the store's paths (a 64-digit layer id
    after /var/lib/minirun/layers/) about 40 layers fill it, and the mount fails. Docker's
    overlay2 driver meets the same limit with short links (its l/ directory) and mounts from
    inside that directory, with relative paths; this does both, with links named by position,
    so that even overlayfs's own limit of lower layers fits in a page many times over. Linux
    6.8 added `lowerdir+`, one option per layer (overlayfs.rst), but a guest kernel may be
    older. The links live in the container's bundle and go with it.
    """
    if len(layers) > OVERLAY_MAX_LOWER:
        raise RuntimeFailure(f"the image has {len(layers)} layers and overlayfs stacks at most "
                             f"{OVERLAY_MAX_LOWER}: flatten it into fewer layers (for instance "
                             "`docker export` of a container, then `minirun import`)")
    directory.mkdir(exist_ok=True)
    for number, layer in enumerate(layers):
        os.symlink(layer, directory / str(number))
    return ":".join(str(number) for number in reversed(range(len(layers))))


# -- the root as data: mounts in the OCI shape, and one function that assembles them -----------

class Mount(NamedTuple):
    """One entry of config.json's `mounts` (the OCI runtime spec, config.md "Mounts"), parsed:
    `run` makes its own list of them (default_mounts), oci.py reads a bundle's."""
    destination: str        # in the container, absolute
    type: str               # proc, tmpfs, bind, cgroup...
    source: str
    flags: int = 0          # mount(2) flags
    propagation: int = 0    # MS_PRIVATE, MS_SLAVE, ... (| MS_REC), applied after the mount
    data: str = ""          # what mount(2) passes to the filesystem (mode=755,size=...)
    copy_up: bool = False   # tmpcopyup: a tmpfs starts with what the image had there (copy_up)

    def as_config(self) -> dict:
        """Back into config.json's words: each flag by its mount(8) option (MOUNT_FLAGS)."""
        options = ["rbind" if self.flags & MS_REC else "bind"] if self.flags & MS_BIND else []
        options += [name for name, (bit, on) in MOUNT_FLAGS.items()
                    if on and bit not in (MS_BIND, MS_BIND | MS_REC) and self.flags & bit]
        options += [("r" if self.propagation & MS_REC else "") + name
                    for name, bit in PROPAGATION.items() if self.propagation & bit]
        options += [option for option in self.data.split(",") if option]
        options += ["tmpcopyup"] if self.copy_up else []
        return {"destination": self.destination, "type": self.type, "source": self.source,
                "options": options}


# mount(8)'s options that are flags of mount(2) (True sets the flag, False clears it).
MOUNT_FLAGS = {"ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False), "nosuid": (MS_NOSUID, True),
               "suid": (MS_NOSUID, False), "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
               "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
               "sync": (0x10, True), "async": (0x10, False), "dirsync": (0x80, True),
               "noatime": (0x400, True), "atime": (0x400, False),
               "nodiratime": (0x800, True), "diratime": (0x800, False),
               "relatime": (1 << 21, True), "norelatime": (1 << 21, False),
               "strictatime": (1 << 24, True), "nostrictatime": (1 << 24, False),
               "bind": (MS_BIND, True), "rbind": (MS_BIND | MS_REC, True)}
PROPAGATION = {"private": MS_PRIVATE, "slave": 1 << 19, "shared": 1 << 20, "unbindable": 1 << 17}
HARDENED = MS_NOSUID | MS_NODEV | MS_NOEXEC


def default_mounts(writable_sys: bool = False) -> list[Mount]:
    """`run`'s mounts, those of runc's default spec: a fresh procfs (it shows the PID namespace
    of the process that mounts it); a minimal /dev on a tmpfs, with a new devpts instance whose
    ptys are the container's own, numbered from 0 (devpts.rst), and shm; sysfs, read-only
    unless --privileged (mounted from the new network namespace, its /sys/class/net lists only
    the container's devices); and the container's own cgroups, read-only (cgroups.mount_view).
    The device nodes come after the mounts (assemble)."""
    return [Mount("/proc", "proc", "proc", HARDENED),
            Mount("/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, data="mode=755,size=65536k"),
            Mount("/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
                  data="newinstance,ptmxmode=0666,mode=0620"),
            Mount("/dev/shm", "tmpfs", "shm", HARDENED, data="mode=1777,size=65536k"),
            Mount("/sys", "sysfs", "sysfs", HARDENED | (0 if writable_sys else MS_RDONLY)),
            Mount("/sys/fs/cgroup", "cgroup", "cgroup", HARDENED | MS_RDONLY)]


def make_devices(dev: Path, bind: bool = False) -> None:
    """The few device nodes (DEVICES) and the links every program expects, in an empty /dev.
    Links whose name exists are left.

    bind: for a container in its own user namespace. mknod(2) of a device needs CAP_MKNOD in
    the first user namespace, which the container's root has not, so each node is an empty
    file with the host's node bind-mounted over it (as runc does). Opening it still passes the
    device cgroup's check."""
    for name, major, minor in DEVICES:
        if (dev / name).exists():
            continue
        if bind:
            (dev / name).touch()
            mount(f"/dev/{name}", str(dev / name), None, MS_BIND)
        else:
            os.mknod(dev / name, 0o666 | 0o020000, os.makedev(major, minor))   # S_IFCHR
            os.chmod(dev / name, 0o666)                                          # umask ignored
    links = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
    for name, target in links.items():
        if not os.path.lexists(dev / name):
            os.symlink(target, dev / name)


class Device(NamedTuple):
    """One entry of config.json's linux.devices (config-linux.md "Devices"): a node to make."""
    path: str               # in the container, absolute
    type: str               # c (or u, unbuffered: the same node), b, p (a FIFO)
    major: int = 0
    minor: int = 0
    mode: int = 0o666       # the permission bits (fileMode)
    uid: int = 0
    gid: int = 0


NODE_TYPES = {"c": 0o020000, "u": 0o020000, "b": 0o060000, "p": 0o010000}    # S_IFCHR, S_IFBLK, S_IFIFO


def make_device_nodes(root: Path, nodes: list[Device], bind: bool = False) -> None:
    """A bundle's linux.devices (`podman run --privileged` lists the host's every device,
    `--device` one), each made at its path under the new root, as make_devices makes the
    defaults (bind: the host's node bound over an empty file). A path already there is left, as
    runc leaves it; whether the node may be opened is still the device cgroup's to say."""
    for node in nodes:
        path = inside_root(root, os.path.dirname(node.path)) / os.path.basename(node.path)
        if os.path.lexists(path):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if bind:
            path.touch()
            mount(node.path, str(path), None, MS_BIND)
            continue
        os.mknod(path, NODE_TYPES[node.type] | 0o600, os.makedev(node.major, node.minor))
        os.chown(path, node.uid, node.gid)
        os.chmod(path, node.mode & 0o7777)                                       # umask ignored


# Where --init's program appears inside the container (/dev is always the container's own tmpfs,
# so nothing is added to the image's files, even with --read-only).
INIT_PATH = "/dev/init"


def init_mount(program: str) -> Mount:
    """--init: the host's compiled init (minirun/init.c), bound read-only on /dev/init. The bind
    mount carries its own flags: /dev's noexec does not apply to it."""
    return Mount(INIT_PATH, "bind", program, MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


# -- volumes: -v HOST_DIR:DIR[:ro] -------------------------------------------------------------
# Where the kernel's own filesystems and the runtime's /dev go: a volume over them would hide
# what the container needs (or, over /proc, what masks the host's secrets).
RESERVED = ("/proc", "/sys", "/dev")


class Volume(NamedTuple):
    source: Path        # on the host, as given (absolute)
    target: str         # in the container, absolute and normalized
    read_only: bool

    def mount(self) -> Mount:
        """The volume as a bind mount, recursive, as `docker run -v` binds."""
        return Mount(self.target, "bind", str(self.source),
                     MS_BIND | MS_REC | (MS_RDONLY if self.read_only else 0))


def parse_volume(text: str) -> Volume:
    """`-v HOST_DIR:DIR[:ro]`, checked before anything is made (minivm uses it too)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise RuntimeFailure(f"-v {text}: give HOST_DIR:DIR, or HOST_DIR:DIR:ro for a read-only "
                             "one")
    source, target = parts[0], parts[1]
    if not source.startswith("/") or not target.startswith("/"):
        raise RuntimeFailure(f"-v {text}: both paths must be absolute")
    if not os.path.exists(source):
        raise RuntimeFailure(f"-v {text}: {source} does not exist on the host: make it first")
    target = "/" + os.path.normpath(target).lstrip("/")
    if target == "/" or any(target == name or target.startswith(name + "/") for name in RESERVED):
        raise RuntimeFailure(f"-v {text}: {target} belongs to the kernel or the runtime (/, "
                             "/proc, /sys, /dev): mount the volume somewhere else")
    return Volume(Path(source), target, len(parts) == 3 and parts[2] == "ro")


def assemble(root: Path, mounts: list[Mount], masked: list[str], read_only_paths: list[str],
             read_only: bool, workdir: str, use_chroot: bool = False,
             user_namespace: bool = False, devices: list[Device] = ()) -> None:
    """Make `root` (a mount point already: run's overlay, a bundle's bind of itself) the
    container's /: the mounts in order, the device nodes if /dev is among them (and `devices`,
    a bundle's linux.devices), the root switch,
    then the masked and read-only paths, the working directory, and a read-only root.
    `minirun run` and OCI `create` both come here, with their own data.

    Where the two still differ, the difference is in the data, but for these: run's
    --chroot (chroot_into, to teach why pivot_root: a bundle always gets pivot_root); and an
    OCI bundle's user namespace, whose root may not mknod (user_namespace: the host's nodes
    are bound instead: make_devices). Masks and read-only paths come after the switch,
    on the container's own paths, so no path of theirs is resolved on the host's side.
    """
    for item in mounts:
        mount_one(root, item)
    if any(item.destination == "/dev" for item in mounts):
        make_devices(root / "dev", bind=user_namespace)
    make_device_nodes(root, devices, bind=user_namespace)
    if use_chroot:
        chroot_into(root)
    else:
        pivot_into(root)
    for path in masked:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY)
        elif os.path.exists(path):
            mount("/dev/null", path, None, MS_BIND)
    for path in read_only_paths:
        if os.path.exists(path):
            bind_read_only(Path(path))
    os.makedirs(workdir, exist_ok=True)     # made while the root can still be written
    if read_only:
        # A bind remount sets this mount's flags, all of them (mount(2)): those it has (the
        # overlay's nosuid and nodev) are given again, or they would be cleared. The mounts on
        # top (/dev, /dev/shm, volumes) keep their own, as with `docker run --read-only`.
        kept = os.statvfs("/").f_flag & HARDENED        # ST_NOSUID... are the MS_ values
        mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)


def mount_one(root: Path, item: Mount) -> None:
    target = mount_target(root, item)
    if item.type in ("cgroup", "cgroup2"):
        cgroups.mount_view(target)          # the container's own cgroups only, read-only
    elif item.flags & MS_BIND:
        mount(item.source, target, None, item.flags & (MS_BIND | MS_REC))
        others = item.flags & ~(MS_BIND | MS_REC)
        if others:      # a bind mount takes its flags in a second call (mount(2))
            mount(None, target, None, MS_BIND | MS_REMOUNT | others)
    elif item.copy_up:
        below = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mount(item.source, target, item.type, item.flags, item.data or None)
            copy_up(below, target)
        finally:
            os.close(below)
    else:
        mount(item.source, target, item.type, item.flags, item.data or None)
    if item.propagation:
        mount(None, target, None, item.propagation)


def copy_up(below: int, target: str) -> None:
    """tmpcopyup (crun's mount option, which podman asks for on --read-only's /run, /tmp and
    /var/tmp): fill the new tmpfs at `target` with what the directory under it held, owners,
    modes and times kept, so that an image's /run/lock or /var/tmp/x are still there, writable.
    `below` is that directory, opened before the mount hid it: a descriptor still reaches it."""
    for entry in os.scandir(below):
        info = entry.stat(follow_symlinks=False)
        path = os.path.join(target, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.name, dir_fd=below), path)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(path)
            inner = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=below)
            try:
                copy_up(inner, path)
            finally:
                os.close(inner)
        elif entry.is_file(follow_symlinks=False):
            source = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=below)
            copy = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                while os.sendfile(copy, source, None, 1 << 20):
                    pass
            finally:
                os.close(source)
                os.close(copy)
        else:                                           # a FIFO, a socket, a device node
            os.mknod(path, info.st_mode, info.st_rdev)
        os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)
        if not entry.is_symlink():
            os.chmod(path, stat.S_IMODE(info.st_mode))
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
    info = os.fstat(below)                              # and the top: the directory's own
    os.chown(target, info.st_uid, info.st_gid)
    os.chmod(target, stat.S_IMODE(info.st_mode))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


def mount_target(root: Path, item: Mount) -> str:
    """The destination under the new root, made if missing (a file for a file's bind mount).

    Mounting follows symbolic links, and these paths are resolved *before* the root changes, on
    the host's side: an image's /var/run -> ../run, or /data -> /etc, followed by the kernel
    from the host's /, could lead out of the root, to the host's own /etc. So every link is
    followed here, as if the root were / (inside_root), and the kernel gets a path with no link
    left in it. As runc, the kernel's own filesystems (proc, sysfs...) go only on a directory
    that is no link, and no directory's mount goes over a file."""
    bind = bool(item.flags & MS_BIND)
    wants_file = bind and not os.path.isdir(item.source)
    parent, name = os.path.split(item.destination.rstrip("/"))
    path = inside_root(root, item.destination) if bind else inside_root(root, parent) / name
    above = path.parent
    while not os.path.lexists(above):
        above = above.parent
    if not above.is_dir():
        how = "" if path == root.joinpath(item.destination.lstrip("/")) else "a symbolic link to "
        raise RuntimeFailure(f"the image's {item.destination} goes through {how}"
                             f"/{above.relative_to(root)}, which is not a directory: mount it "
                             "somewhere else")
    if path.is_symlink() or (path.exists() and not wants_file and not path.is_dir()):
        raise RuntimeFailure(f"the image's {item.destination} is not a directory: refusing to "
                             "mount over it")
    if not path.exists():
        if wants_file:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True)
    return str(path)


MAX_LINKS = 40      # links followed in one path before ELOOP (path_resolution(7))


def inside_root(root: Path, path: str) -> Path:
    """`path` as a process whose / is `root` would find it: each symbolic link on the way
    followed inside `root` (an absolute target starts again at `root`, and ".." stops there),
    never leaving it, as runc's filepath-securejoin does. What does not exist yet is taken as
    it is. The result has no link in it, so the host's kernel, from the host's /, cannot be led
    elsewhere by it (nor by a link made later in a directory it does not go through)."""
    todo = [part for part in path.split("/") if part not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        if not candidate.is_symlink():
            done.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise RuntimeFailure(f"the image's {path} has too many levels of symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        todo[:0] = [part for part in target.split("/") if part not in ("", ".")]
    return root.joinpath(*done)


def bind_read_only(path: Path) -> None:
    # A bind mount takes its flags from the mount it binds; read-only needs a second remount
    # (mount(2), "Creating a bind mount": MS_RDONLY is ignored on the first call).
    mount(str(path), str(path), None, MS_BIND | MS_REC)
    mount(None, str(path), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def pivot_into(root: Path) -> None:
    """Make `root` the root of this mount namespace and detach the host's filesystem entirely.

    pivot_root(".", ".") stacks the old root on top of the new one at "/"; unmounting "." then
    removes the old root (pivot_root(2), NOTES). After this no path leads back to the host:
    unlike chroot, it changes the mount namespace itself, not just this process's idea of "/".
    pivot_root needs the new root to be a mount point: our overlay is one.
    """
    os.chdir(root)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")


def chroot_into(root: Path) -> None:
    """The old way: change only this process's root directory (chroot(2)).

    The host's whole filesystem is still mounted in the namespace, just out of sight. A root
    process can get back out (chroot into a subdirectory while keeping its working directory
    outside it, then walk up with ".."): see tests/test_chroot_escape.py. Kept to teach why
    runtimes use pivot_root.
    """
    os.chdir(root)
    os.chroot(".")
    os.chdir("/")
