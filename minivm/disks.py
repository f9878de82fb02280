"""The image's layers as read-only virtual disks: the container's layer stack, reached through a
guest kernel.

A container's root is an overlay of the image's layer directories on the host's disk
(minirun/rootfs.py:mount_overlay). A guest cannot see the host's directories, only its own
hardware, so each layer becomes a disk: a file holding a read-only filesystem, attached as a
virtio-blk device (read-only). The guest init mounts each disk and stacks them with overlayfs
under a writable tmpfs, in the same order, so the app sees the same merged tree as in a container.

The filesystem is EROFS (Documentation/filesystems/erofs.rst), built with Debian's `erofs-utils`:
  - it was made for exactly this, read-only images of system files: uncompressed (the default
    of mkfs.erofs, and what is used here), a file's blocks sit in one extent and the guest reads
    them straight into its page cache, with no decompression under TCG;
  - it keeps what overlayfs needs of a layer: owners, modes, device nodes (a whiteout is a
    character device 0/0) and extended attributes, trusted.* included (an opaque directory is
    marked trusted.overlay.opaque=y);
  - mkfs.erofs writes an image about the size of the files, in about the time it takes to read
    them; squashfs (mksquashfs) would compress by default, which a guest pays for on every read.
Both are modules in Debian's kernel (minivm/modules.py).

Each disk is cached under minivm's cache, named after the ids of the layers it holds (a layer's
id in the store is the digest of its content): a layer shared by two images, or booted again,
is built once. `minivm cache prune` removes the disks no boot has used lately.

A machine has only so many device slots (minivm.hardware.VIRTIO_TRANSPORTS): an image with more
layers than free slots gets its bottom layers merged into one disk, built from an overlay mount
of them on the host, which applies their whiteouts once and for all.
"""
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from minirun.errors import RuntimeFailure
from minirun.image import Image
from minirun.rootfs import layer_links
from minivm.cache import cache_dir, mark_used, scratch_directory

# Uncompressed; every file keeps its own modification time (without it mkfs.erofs gives each
# file the build time, which `ls -l` in the guest would show).
MKFS = ["mkfs.erofs", "--quiet", "--preserve-mtime"]
FILESYSTEM = "erofs"
SMALLEST_DISK = 1 << 20         # bytes; and every disk is a whole number of these


@dataclass(frozen=True)
class Disk:
    path: Path              # the filesystem image, in the cache
    serial: str             # the guest tells the disks apart by it: /sys/block/vdX/serial
    layers: tuple[str, ...]  # ids of the layers it holds, bottom first


def for_image(image: Image, slots: int) -> list[Disk]:
    """One read-only disk per layer, bottom first, built if not in the cache yet; the bottom
    layers merged into one disk if there are more layers than `slots`."""
    if slots < 1:
        raise RuntimeFailure("the machine has no device slot left for the image's disks: "
                             "use fewer -v volumes")
    groups = stack(image.layers, slots)
    return [_disk(group, f"minivm.layer{number}") for number, group in enumerate(groups)]


def stack(layers: list[Path], slots: int) -> list[list[Path]]:
    """The layers grouped into at most `slots` disks: one each, but the bottom ones together."""
    merged = max(1, len(layers) - slots + 1)
    return [layers[:merged]] + [[layer] for layer in layers[merged:]]


def _disk(layers: list[Path], serial: str) -> Disk:
    key = hashlib.sha256(" ".join([*MKFS, *(layer.name for layer in layers)]).encode())
    path = cache_dir() / "disks" / f"{key.hexdigest()[:32]}.{FILESYSTEM}"
    if path.is_file():
        mark_used(path)
    else:
        with scratch_directory(path.parent) as scratch:
            built = scratch / path.name
            _mkfs(layers, built)
            # A layer of a few files makes a disk of a block or two, and the guest kernel's
            # partition scan reads past the end of so small a disk, with an I/O error for each
            # read ("unable to read RDB block 8"): a sparse tail costs nothing and ends that.
            size = built.stat().st_size
            os.truncate(built, max(size + -size % SMALLEST_DISK, SMALLEST_DISK))
            built.rename(path)      # whole or not at all, even with two boots building it
    return Disk(path, serial, tuple(layer.name for layer in layers))


def _mkfs(layers: list[Path], target: Path) -> None:
    if len(layers) == 1:
        command, cwd = [*MKFS, str(target), str(layers[0])], None
    else:
        # The merged view of the bottom layers, mounted read-only in a private mount namespace
        # that ends with the command, so nothing stays mounted whatever happens.
        cwd = target.with_suffix(".layers")
        lowerdir = layer_links(layers, cwd)         # as a container's overlay is mounted
        merged = target.with_suffix(".merged")
        merged.mkdir()
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t overlay overlay -o "ro,lowerdir=$1" "$2" && shift 2 && exec "$@"', "sh",
                   lowerdir, str(merged), *MKFS, str(target), str(merged)]
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeFailure("booting an image needs mkfs.erofs, to make its layers into disks: "
                             "apt-get install erofs-utils") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeFailure(f"making the image's layers into a disk failed ({last})")
