"""Safe extraction of one layer: an untrusted tar stream becomes an overlayfs lower directory.

A layer is a tar archive of the changes one build step made (OCI image spec, layer.md). Two
things make unpacking one more than `tar -x`:

1. It is untrusted input. A hostile archive can name `../../etc/cron.d/x` or `/etc/passwd`, or
   plant a symlink `lib -> /etc` and then write `lib/passwd` through it, or hard-link `/etc/shadow`
   in to read it later, or create a device node that opens the host's disk. So every path is
   walked here one component at a time from a file descriptor of the layer's root, with
   O_NOFOLLOW, creating with O_EXCL, and links are made relative to directory fds (the *at()
   system calls: see openat(2), linkat(2), mknodat(2)). Nothing is resolved by path through a
   link the archive made, so nothing can land, or be read, outside the layer's directory.
   (Linux's openat2(2) with RESOLVE_BENEATH does the same in one call; Python 3.11 has no
   binding for it.)

2. Deletions. A layer cannot contain "the absence of a file", so OCI writes a marker instead:
   `.wh.NAME` means "NAME of the layers below is deleted" and `.wh..wh..opq` in a directory means
   "hide everything the layers below have in this directory". overlayfs has its own markers for
   the same two ideas (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
   directories"): a character device with device number 0/0 named NAME, and the extended
   attribute trusted.overlay.opaque="y" on the directory. We convert at import, once, so that the
   layer directory can be given to overlayfs as it is, at every container start.
"""
import errno
import os
import shutil
import stat
import tarfile

from minirun.errors import RuntimeFailure

WHITEOUT_PREFIX = ".wh."                 # OCI: `.wh.NAME` deletes NAME from the layers below
OPAQUE_MARKER = ".wh..wh..opq"           # OCI: this directory hides the lower layers' contents
OPAQUE_XATTR = "trusted.overlay.opaque"  # overlayfs: the same idea, as an attribute
XATTR_PAX_PREFIX = "SCHILY.xattr."       # how tar's pax headers carry extended attributes

# Open a path component without ever following a symlink, and never leak the fd to a child.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
HEADER_MAX = 1 << 20        # bytes of one pax or GNU long-name header: names, xattrs, ACLs


class UnsafeEntry(RuntimeFailure):
    def __init__(self, name: str, why: str):
        super().__init__(f"entry {name!r} {why}")


class Budget:
    """What one import may write: bytes of file data and entries, for all its layers together.

    A layer is small on the wire and may be huge unpacked: gzip shrinks a run of zeros about
    1000 times, and a sparse tar member (GNU tar --sparse) stores only the data of a file that is
    mostly holes. Unpacking writes a file at its full, *apparent* size (tar's header says it:
    tarfile's `size` of a sparse member is its real size), so that is what is counted, before a
    byte of the file is written: a bomb is stopped at its header, however it is compressed."""

    def __init__(self, max_bytes: int, max_entries: int):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.bytes = self.entries = 0

    def spend(self, entry: tarfile.TarInfo) -> None:
        from minirun.units import format_size
        self.entries += 1
        if self.entries > self.max_entries:
            raise RuntimeFailure(f"entry {entry.name!r} is one more than the {self.max_entries:,} "
                                 "entries an import may write: if the image is right, raise the "
                                 "limit with `minirun import --max-files N`")
        if entry.isreg():
            self.bytes += entry.size
        if self.bytes > self.max_bytes:
            raise RuntimeFailure(f"entry {entry.name!r} ({format_size(entry.size)}) takes the image "
                                 f"past the {format_size(self.max_bytes)} of file data an import "
                                 "may write: if the image is right, raise the limit with "
                                 "`minirun import --max-size SIZE`")


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax header (extended attributes, long names) or a GNU long name whole
    into memory before it yields the entry it describes: a gzip'd run of zeros that claims to be
    an 8 GB header would fill the memory, not the disk, out of reach of the Budget. Such headers
    hold names and attributes: one larger than HEADER_MAX is refused before it is read.
    (`_proc_member` is where tarfile dispatches on a header's type, TarFile(tarinfo=...) the
    documented way to give it another TarInfo class.)"""

    def _proc_member(self, archive):
        if self.type in _HEADER_TYPES and self.size > HEADER_MAX:
            from minirun.units import format_size
            raise UnsafeEntry(self.name, f"is a tar header of {format_size(self.size)}: headers "
                                         f"hold names and attributes, at most "
                                         f"{format_size(HEADER_MAX)} here")
        return super()._proc_member(archive)


_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                 tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


def unpack_layer(stream, dest: str, budget: Budget) -> None:
    """Apply the layer tar read from `stream` to the empty directory `dest`, within `budget`.

    Raises UnsafeEntry for the first entry that could reach outside `dest`; RuntimeFailure when
    the budget is spent; tarfile.TarError (or the decompressor's error) for a damaged archive;
    OSError when the disk is full. Either way `dest` is then half-written, and the caller throws
    it away: it is a scratch directory, never a layer of the store.
    """
    root = os.open(dest, _DIR_FLAGS)
    directories = []        # (path parts, entry): their times are set last, as writing into a
    try:                    # directory changes its mtime
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as archive:
            for entry in archive:
                budget.spend(entry)
                try:
                    _apply(archive, entry, root, directories)
                except OSError as error:
                    if error.errno in (None, errno.ENOSPC, errno.EDQUOT):
                        raise       # a decompressor's complaint (a damaged layer) or a full disk:
                                    # the caller says what to do about those
                    raise RuntimeFailure(f"entry {entry.name!r} could not be created: "
                                         f"{error.strerror}") from None
                # tarfile keeps every entry it has read, pax headers and all, for getmembers():
                # 300 entries of 1 MiB gzip'd comments held 333 MB. A stream is read once.
                archive.members.clear()
        for parts, entry in reversed(directories):
            _set_directory_time(root, parts, entry)
    finally:
        os.close(root)


def _apply(archive: tarfile.TarFile, entry: tarfile.TarInfo, root: int, directories: list) -> None:
    parts = _path_parts(entry.name)
    if not parts:                                   # "./": the layer's root directory itself
        if entry.isdir():
            _set_owner_and_mode(root, entry)
            directories.append((parts, entry))
        return
    name = parts[-1]
    try:
        parent = _open_path(root, parts[:-1], entry.name)
    except UnsafeEntry:
        if name.startswith(WHITEOUT_PREFIX):
            return      # a whiteout below a file of this layer: that file already hides it all
        raise           # (umoci writes these when a directory became a file)
    try:
        if name == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
        elif name.startswith(WHITEOUT_PREFIX):
            _whiteout(parent, name[len(WHITEOUT_PREFIX):], entry.name)
        else:
            _create(archive, entry, root, parent, name, parts, directories)
    finally:
        os.close(parent)


def _path_parts(name: str) -> list[str]:
    """The entry's path as components; refused if it could name something outside the layer."""
    if name.startswith("/"):
        raise UnsafeEntry(name, "is an absolute path: layer paths are relative to the image's root")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntry(name, "contains '..': it would reach outside the image")
    return parts


def _open_path(root: int, parts: list[str], name: str) -> int:
    """Open the directory root/parts[0]/parts[1]/..., one component at a time, following no symlink.

    A missing directory is created (archives may omit parents, and overlayfs merges it with the
    same directory of the layers below). A component that exists but is not a directory, a
    symlink in particular, is refused: writing through it is exactly the symlink escape.
    """
    fd = os.dup(root)
    for part in parts:
        try:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOTDIR, errno.ELOOP):
                raise UnsafeEntry(name, f"goes through {part!r}, which is a symlink or a file in this "
                                        "layer: writing through it could leave the image") from None
            raise
        os.close(fd)
        fd = child
    return fd


def _whiteout(parent: int, target: str, name: str) -> None:
    """OCI `.wh.TARGET` → overlayfs whiteout: a 0/0 character device called TARGET.

    A whiteout deletes TARGET from the layers *below* only (layer.md, "Whiteouts"). If this layer
    itself has TARGET, it stays; a directory is then made opaque, so that the lower TARGET's
    contents do not show through it.
    """
    if target in ("", ".", "..") or "/" in target:
        raise UnsafeEntry(name, "is a whiteout of no valid name")
    try:
        existing = os.stat(target, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        return
    if stat.S_ISDIR(existing.st_mode):
        _make_opaque(parent, target)


def _make_opaque(parent: int, directory: str) -> None:
    fd = os.open(directory, _DIR_FLAGS, dir_fd=parent)
    try:
        os.setxattr(fd, OPAQUE_XATTR, b"y")
    finally:
        os.close(fd)


def _create(archive, entry, root, parent, name, parts, directories) -> None:
    """Create one entry: a directory, file, symlink, hard link or fifo. Device nodes are refused."""
    if entry.ischr() or entry.isblk():
        raise UnsafeEntry(entry.name, "is a device node: an image may not carry devices "
                                      "(a container gets its own minimal /dev at run time)")
    replaced_whiteout = _make_room(parent, name, keep_directory=entry.isdir())
    if entry.isdir():
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass                            # a directory over a directory: keep it
        if replaced_whiteout:               # deleted below, recreated here: hide the old contents
            _make_opaque(parent, name)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            _set_owner_and_mode(fd, entry)
            _set_xattrs(fd, entry)
        finally:
            os.close(fd)
        directories.append((parts, entry))
    elif entry.isreg():
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        with open(fd, "wb", closefd=True) as out:
            shutil.copyfileobj(archive.extractfile(entry), out, _COPY_CHUNK)
            out.flush()                     # before the mtime is set, or a late write changes it
            _set_owner_and_mode(fd, entry)
            _set_xattrs(fd, entry)
            os.utime(fd, (entry.mtime, entry.mtime))
    elif entry.issym():
        # The target is stored as written, and only ever resolved inside the container's own
        # root (after pivot_root), never by this importer: a symlink to /etc/passwd is harmless.
        os.symlink(entry.linkname, name, dir_fd=parent)
        os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(name, (entry.mtime, entry.mtime), dir_fd=parent, follow_symlinks=False)
    elif entry.islnk():
        _hard_link(root, parent, name, entry)
    elif entry.isfifo():
        os.mkfifo(name, 0o600, dir_fd=parent)
        os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(name, entry.mode, dir_fd=parent)
    else:
        raise UnsafeEntry(entry.name, f"has an unsupported tar type {entry.type!r}")


def _make_room(parent: int, name: str, keep_directory: bool) -> bool:
    """Clear the way for an entry, as layer.md says ("Changeset over existing files"): a directory
    over a directory keeps it (its attributes are replaced); anything else removes what was there.
    Returns True if what was removed was a whiteout."""
    try:
        existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(existing.st_mode):
        if not keep_directory:
            shutil.rmtree(name, dir_fd=parent)      # fd-based: follows no symlink inside
        return False
    os.unlink(name, dir_fd=parent)
    return stat.S_ISCHR(existing.st_mode) and existing.st_rdev == 0


def _hard_link(root: int, parent: int, name: str, entry: tarfile.TarInfo) -> None:
    """A hard link names a file earlier in the same archive; it is looked up inside the layer
    the same careful way, so it can never reach a file of the host."""
    try:
        target = _path_parts(entry.linkname)
    except UnsafeEntry:
        raise UnsafeEntry(entry.name, f"is a hard link to {entry.linkname!r}, outside the image: "
                                      "it would let the image read or change a host file") from None
    if not target:
        raise UnsafeEntry(entry.name, "is a hard link to the image's root")
    source_dir = _open_path(root, target[:-1], entry.name)
    try:
        os.link(target[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        raise UnsafeEntry(entry.name, f"is a hard link to {entry.linkname!r}, which is not in "
                                      "this layer") from None
    finally:
        os.close(source_dir)


def _set_directory_time(root: int, parts: list[str], entry: tarfile.TarInfo) -> None:
    try:
        fd = _open_path(root, parts, entry.name)
    except UnsafeEntry:
        return              # replaced by a file or symlink later in the archive: not a directory
    try:
        os.utime(fd, (entry.mtime, entry.mtime))
    finally:
        os.close(fd)


def _set_owner_and_mode(fd: int, entry: tarfile.TarInfo) -> None:
    os.fchown(fd, entry.uid, entry.gid)
    os.fchmod(fd, entry.mode)               # after chown, which clears the set-id bits


def _set_xattrs(fd: int, entry: tarfile.TarInfo) -> None:
    """Extended attributes from pax headers, e.g. security.capability (file capabilities, as
    Debian's ping has). trusted.* is refused: trusted.overlay.* steers overlayfs itself
    (opaque, redirect, metacopy), and only this importer may set those."""
    for key, value in entry.pax_headers.items():
        if not key.startswith(XATTR_PAX_PREFIX):
            continue
        attribute = key[len(XATTR_PAX_PREFIX):]
        if attribute.startswith("trusted."):
            raise UnsafeEntry(entry.name, f"carries the attribute {attribute}: trusted.* attributes "
                                          "control overlayfs and are not taken from images")
        os.setxattr(fd, attribute, value.encode("utf-8", "surrogateescape"))

