"""The guest's first filesystem: the guest init, its tools and the kernel modules, in RAM.

The kernel unpacks an initramfs, a cpio archive that QEMU puts in guest memory next to the
kernel, into a RAM filesystem before it starts PID 1 (Documentation/filesystems/ramfs-rootfs-
initramfs.rst). minivm's holds only what it takes to reach the image, about 3 MB whatever the
image's size: busybox and the guest init (minivm/guest-init.sh), become (minivm/become.c, the
step into the app), for a detached VM the relay (minivm/relay.c, the guest's half of `minivm
exec`), the modules of the virtual hardware (minivm/modules.py), and this run's settings. The
image itself comes as disks (minivm/disks.py), read on demand; everything here is under
/.minivm, and the app never sees it.
"""
import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path

from minirun import static_build
from minirun.image import BUSYBOX
from minivm.cache import cache_dir
from minivm.modules import Module

GUEST_INIT = Path(__file__).with_name("guest-init.sh")
INIT_PATH = "/.minivm/init"      # the kernel is told `rdinit=/.minivm/init`
RELAY = Path(__file__).with_name("relay.c")


@dataclass
class RunSettings:
    """What this boot runs and how: written into the guest as /.minivm/run.sh."""
    command: list[str]
    environment: dict[str, str]
    workdir: str
    hostname: str
    interactive: bool = False
    rows: int = 0
    columns: int = 0
    user: list[str] = field(default_factory=list)    # become's -u, or none to stay root
    become_binary: bytes = b""      # minivm/become.c, compiled: the step into the app
    modules: list[Module] = field(default_factory=list)   # to load, in order (minivm.modules)
    disks: list[str] = field(default_factory=list)  # serials of the layers' disks, bottom first
    volumes: list[tuple[str, str, bool]] = field(default_factory=list)  # (tag, target, read-only)
    address: str = ""           # eth0's, as ADDRESS/PREFIX, and the gateway: "" without a NIC
    gateway: str = ""
    etc: dict[str, str] = field(default_factory=dict)     # /etc/hosts and its kin (minirun.hosts)
    detached: bool = False      # boot -d: the guest answers the power button, runs an agent

    def shell(self) -> str:
        """Shell assignments the guest init sources; every value quoted, so anything goes."""
        q = shlex.quote
        lines = [f"hostname={q(self.hostname)}", f"workdir={q(self.workdir)}",
                 f"interactive={'yes' if self.interactive else ''}",
                 f"detached={'yes' if self.detached else ''}",
                 f"rows={self.rows} columns={self.columns}",
                 "user=" + q(" ".join(q(arg) for arg in self.user)),
                 "modules=" + q(" ".join(module.name for module in self.modules)),
                 "disks=" + q(" ".join(self.disks)),
                 "shared_folders() {",
                 *(f"    share {q(tag)} {q(target)} {'ro' if read_only else 'rw'}"
                   for tag, target, read_only in self.volumes),
                 "    :",
                 "}",
                 f"address={q(self.address)} gateway={q(self.gateway)}",
                 "set -- " + " ".join(q(arg) for arg in self.command),
                 "environment=" + q(" ".join(q(f"{k}={v}") for k, v in self.environment.items()))]
        return "\n".join(lines) + "\n"


def build(settings: RunSettings) -> bytes:
    """The whole initramfs of one boot."""
    archive = Cpio()
    archive.add_directory(".minivm")
    archive.add_file(".minivm/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.add_file(INIT_PATH.lstrip("/"), GUEST_INIT.read_bytes(), 0o755)
    archive.add_file(".minivm/become", settings.become_binary, 0o755)
    if settings.detached:       # the agent of `minivm exec` runs each command through it
        archive.add_file(".minivm/relay", relay_binary(), 0o755)
    archive.add_file(".minivm/run.sh", settings.shell().encode(), 0o644)
    # The image's own /etc/hosts, /etc/hostname and /etc/resolv.conf are shadowed for this boot
    # only: the guest init copies these into the writable layer of its root.
    archive.add_directory(".minivm/etc")
    for name, text in settings.etc.items():
        archive.add_file(f".minivm/etc/{name}", text.encode(), 0o644)
    archive.add_directory(".minivm/modules")
    for module in settings.modules:
        archive.add_file(f".minivm/modules/{module.name}.ko", module.contents(), 0o644)
    return archive.finish()


def relay_binary() -> bytes:
    """minivm/relay.c, compiled statically as become.c is (minivm/guest_user.py), cached by its
    source."""
    return static_build.build(RELAY, cache_dir() / "relay", "booting a detached VM").read_bytes()


# -- the cpio "newc" format --------------------------------------------------------------------
class Cpio:
    """A writer for the "newc" cpio format, the one the kernel's initramfs unpacker reads.

    Each entry is a 110-byte ASCII header ("070701" and 13 fields of 8 hex digits), the path,
    a NUL, padding to 4 bytes, then the data padded to 4 bytes; the archive ends with an entry
    named TRAILER!!! (Documentation/driver-api/early-userspace/buffer-format.rst).
    Owners are kept, times are zeroed, so the same files always give the same bytes.
    """

    def __init__(self):
        self.chunks: list[bytes] = []
        self.inode = 0

    def add_directory(self, name: str, mode: int = 0o755) -> None:
        self.add(name, stat.S_IFDIR | mode, b"")

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.add(name, stat.S_IFREG | mode, data)

    def add(self, name: str, mode: int, data: bytes, uid: int = 0, gid: int = 0,
            rdev: int = 0) -> None:
        self.inode += 1
        path = name.encode() + b"\0"
        fields = (self.inode, mode, uid, gid, 1, 0, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(path), 0)
        header = b"070701" + b"".join(b"%08x" % value for value in fields)
        self.chunks += [header, path, _padding(len(header) + len(path)), data, _padding(len(data))]

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0, b"")
        return b"".join(self.chunks)


def _padding(length: int) -> bytes:
    return b"\0" * (-length % 4)
