"""The guest's first filesystem: the image, packed as the initramfs the kernel unpacks into RAM.

A container sees the image through overlayfs on the host's disk. A VM cannot see the host's disk
at all; it sees only the virtual hardware it is given. The simplest way to hand it the image is the
initramfs: a cpio archive that QEMU puts in guest memory next to the kernel, and that the kernel
unpacks into a RAM filesystem before it starts PID 1 (Documentation/filesystems/ramfs-rootfs-
initramfs.rst). No disk, no block driver, no filesystem driver needed.

What the guest gets is two archives, one after the other (the kernel unpacks each in turn):
  1. the image's merged layers plus minivm's guest init and busybox under /.minivm/, cached by
     content, since the same image is booted again and again;
  2. a small archive with this run's settings (command, environment, hostname...) and the guest
     kernel modules its virtual hardware needs (minivm/modules.py), made per boot.
"""
import hashlib
import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path

from minirun.errors import RuntimeFailure
from minirun.image import BUSYBOX, Image
from minivm.cache import cache_dir, mark_used, write_atomically
from minivm.modules import Module

GUEST_INIT = Path(__file__).with_name("guest-init.sh")
WRITER = Path(__file__)          # this module: how an archive is packed is part of its cache key
INIT_PATH = "/.minivm/init"      # the kernel is told `rdinit=/.minivm/init`; the image's own
                                 # /init or /sbin/init, if any, is left alone
OPAQUE_XATTR = "trusted.overlay.opaque"


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
    become: list[str] | None = None   # UID GID GROUPS for /.minivm/become; None: stay root
    become_binary: bytes = b""
    modules: list[Module] = field(default_factory=list)   # to load, in order (minivm.modules)
    address: str = ""           # eth0's, as ADDRESS/PREFIX, and the gateway: "" without a NIC
    gateway: str = ""
    etc: dict[str, str] = field(default_factory=dict)     # /etc/hosts and its kin (minirun.hosts)

    def shell(self) -> str:
        """Shell assignments the guest init sources; every value quoted, so anything goes."""
        q = shlex.quote
        lines = [f"hostname={q(self.hostname)}", f"workdir={q(self.workdir)}",
                 f"interactive={'yes' if self.interactive else ''}",
                 f"rows={self.rows} columns={self.columns}",
                 "become=" + q(" ".join(["/.minivm/become", *self.become]) if self.become else ""),
                 "modules=" + q(" ".join(module.name for module in self.modules)),
                 f"address={q(self.address)} gateway={q(self.gateway)}",
                 "set -- " + " ".join(q(arg) for arg in self.command),
                 "environment=" + q(" ".join(q(f"{k}={v}") for k, v in self.environment.items()))]
        return "\n".join(lines) + "\n"


def build(image: Image, settings: RunSettings) -> bytes:
    """The whole initramfs for one boot: the cached image archive, then this run's settings."""
    return image_archive(image).read_bytes() + settings_archive(settings)


def image_archive(image: Image) -> Path:
    """The image plus minivm's guest files, packed once per (layers, init, busybox, packer).

    Layers in the store never change once committed and are named by the digest of their content,
    so their names identify the files. The same files packed by changed code (the merge, the cpio
    writer) are another archive: this module's own source is in the key, so no version number
    can be forgotten and a stale archive is never served.
    """
    key = hashlib.sha256()
    for layer in image.layers:
        key.update(str(layer).encode() + b"\0")
    for made_from in (GUEST_INIT, BUSYBOX, WRITER):
        key.update(hashlib.sha256(made_from.read_bytes()).digest())
    target = cache_dir() / "initramfs" / f"{key.hexdigest()[:32]}.cpio"
    if target.is_file():
        mark_used(target)
    else:
        archive = Cpio()
        for relative, source in merged_view(image.layers):
            archive.add_path(relative, source)
        archive.add_directory(".minivm")
        archive.add_file(".minivm/busybox", BUSYBOX.read_bytes(), 0o755)
        archive.add_file(INIT_PATH.lstrip("/"), GUEST_INIT.read_bytes(), 0o755)
        write_atomically(target, archive.finish())
    return target


def settings_archive(settings: RunSettings) -> bytes:
    archive = Cpio()
    archive.add_file(".minivm/run.sh", settings.shell().encode(), 0o644)
    # An entry of a later archive replaces the same path of an earlier one: the image's own
    # /etc/hosts, /etc/hostname and /etc/resolv.conf are shadowed for this boot only.
    if settings.etc:
        archive.add_directory("etc")
    for name, text in settings.etc.items():
        archive.add_file(f"etc/{name}", text.encode(), 0o644)
    if settings.become:
        archive.add_file(".minivm/become", settings.become_binary, 0o755)
    # The kernel's own modules for this machine's hardware: a few hundred kB, matched to the
    # kernel of this boot, so they travel here rather than in the image's cached archive.
    archive.add_directory(".minivm/modules")
    for module in settings.modules:
        archive.add_file(f".minivm/modules/{module.name}.ko", module.contents(), 0o644)
    return archive.finish()


# -- the image's layers, merged as overlayfs would ---------------------------------------------
def merged_view(layers: list[Path]) -> list[tuple[str, Path]]:
    """Every path of the stacked layers with the file that overlayfs would show for it.

    The rules (Documentation/filesystems/overlayfs.rst): an upper entry hides the same path below;
    a *whiteout* (a character device 0/0) deletes it; a directory marked *opaque* (xattr
    trusted.overlay.opaque=y) hides everything below it in lower layers. Only directories merge.
    Returned parents-first, as a cpio archive needs them.
    """
    shown: dict[str, Path] = {}       # path in the image -> the file on the host that provides it
    merges: set[str] = {""}           # directories whose lower layers still show through
    hidden: set[str] = set()          # paths deleted by a whiteout
    for layer in reversed(layers):                              # top layer first
        for top, dirs, files in os.walk(layer):
            base = os.path.relpath(top, layer).removeprefix(".").lstrip("/")
            for name in list(dirs) + files:
                relative = f"{base}/{name}".lstrip("/")
                path = Path(top, name)
                if relative in hidden or (relative in shown and relative not in merges):
                    _prune(dirs, name)
                    continue
                info = path.lstat()
                if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:       # a whiteout
                    hidden.add(relative)
                    continue
                is_dir = stat.S_ISDIR(info.st_mode)
                if relative in shown and not is_dir:     # an upper directory over a lower file:
                    merges.discard(relative)                # nothing further down shows through
                    continue
                shown.setdefault(relative, path)
                if is_dir and not _is_opaque(path):
                    merges.add(relative)
                else:
                    merges.discard(relative)
            dirs[:] = [d for d in dirs if f"{base}/{d}".lstrip("/") in merges
                       or shown.get(f"{base}/{d}".lstrip("/")) == Path(top, d)]
    return sorted(shown.items(), key=lambda item: item[0].split("/"))


def lookup(layers: list[Path], relative: str) -> Path | None:
    """The regular file the merged view shows at `relative` (e.g. "etc/passwd"), or None, by the
    rules of merged_view but without walking the whole image. Nothing is followed through a
    symbolic link: the image is untrusted, and a link could point at the host's own files."""
    parts = relative.split("/")
    for layer in reversed(layers):                              # top layer first
        hides_below = False
        for depth in range(1, len(parts)):
            parent = layer.joinpath(*parts[:depth])
            if not os.path.lexists(parent):
                break                                           # not in this layer
            if not stat.S_ISDIR(parent.lstat().st_mode):        # a file, link or whiteout
                return None
            hides_below = hides_below or _is_opaque(parent)
        else:
            path = layer.joinpath(*parts)
            if os.path.lexists(path):
                return path if stat.S_ISREG(path.lstat().st_mode) else None
        if hides_below:
            return None
    return None


def _prune(dirs: list[str], name: str) -> None:
    if name in dirs:
        dirs.remove(name)


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


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

    def add_path(self, name: str, source: Path) -> None:
        info = source.lstat()
        if stat.S_ISLNK(info.st_mode):
            data = os.readlink(source).encode()
        elif stat.S_ISREG(info.st_mode):
            _check_size(name, info.st_size)     # before reading gigabytes into memory for nothing
            data = source.read_bytes()
        else:
            data = b""
        self.add(name, info.st_mode, data, uid=info.st_uid, gid=info.st_gid, rdev=info.st_rdev)

    def add_directory(self, name: str, mode: int = 0o755) -> None:
        self.add(name, stat.S_IFDIR | mode, b"")

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.add(name, stat.S_IFREG | mode, data)

    def add(self, name: str, mode: int, data: bytes, uid: int = 0, gid: int = 0,
            rdev: int = 0) -> None:
        _check_size(name, len(data))
        self.inode += 1
        path = name.encode() + b"\0"
        fields = (self.inode, mode, uid, gid, 1, 0, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(path), 0)
        header = b"070701" + b"".join(b"%08x" % value for value in fields)
        self.chunks += [header, path, _padding(len(header) + len(path)), data, _padding(len(data))]

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0, b"")
        return b"".join(self.chunks)


def _check_size(name: str, size: int) -> None:
    """newc's fields are 8 hex digits: a size of 4 GiB or more would not fit, and `%08x` would
    write more digits and shift every byte after it. Of the 13 fields only the size can outgrow
    its 32 bits: uids, device numbers and name lengths are no wider in the kernel itself."""
    if size > 0xffffffff:
        raise RuntimeFailure(f"/{name} is {size} bytes, and an initramfs (cpio \"newc\") holds "
                             "files under 4 GiB only: run this image with `minirun run`")


def _padding(length: int) -> bytes:
    return b"\0" * (-length % 4)
