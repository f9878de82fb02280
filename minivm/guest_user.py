"""The app's user in the guest: the image's `User`, or -u, exactly as minirun would run it;
and the small program that makes the guest init's last step into the app.

A container runtime switches to the image's user from Python just before exec
(minirun/security.py). A guest has no Python, only minivm's busybox, and Debian builds busybox
with nothing that switches to numeric IDs (its setpriv has no --reuid; chpst and setuidgid are
left out). Nor can busybox's `env` be the last step: it runs its own applets before it looks at
PATH, so `ls` would be busybox's, not the image's. So minivm carries become.c, a page of C that
enters the image's root, switches user, and execs the command by minirun's PATH rule. It is
compiled once, statically (the guest has no libraries to link against), with the host's C
compiler, and cached by its source.

The names are resolved here, on the host, with minirun's own code and the image's own
/etc/passwd and /etc/group as the guest will see them.
"""
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from minirun import static_build
from minirun.image import Image
from minirun.security import home_directory, resolve_user
from minivm.cache import cache_dir

SOURCE = Path(__file__).with_name("become.c")
ROOT_SPECS = ("", "root", "0", "0:0")       # the guest init is root already: nothing to switch
OPAQUE_XATTR = "trusted.overlay.opaque"


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]

    def become_args(self) -> list[str]:
        """The arguments of /.minivm/become that switch to this user."""
        return ["-u", f"{self.uid}:{self.gid}:{','.join(map(str, self.groups))}"]


def resolve(image: Image, spec: str) -> Identity | None:
    """Who the app runs as; None for root."""
    if spec in ROOT_SPECS:
        return None
    passwd = lookup(image.layers, "etc/passwd")
    group = lookup(image.layers, "etc/group")
    return Identity(*resolve_user(spec, passwd, group))


def home(image: Image, uid: int) -> str:
    """$HOME when neither the image nor -e sets it: from the image's passwd, as minirun does."""
    return home_directory(uid, lookup(image.layers, "etc/passwd"))


def become_binary() -> bytes:
    """The compiled helper, built on first use and cached by the digest of its source."""
    return static_build.build(SOURCE, cache_dir() / "become", "booting a guest").read_bytes()


def lookup(layers: list[Path], relative: str) -> Path | None:
    """The regular file the image's merged layers show at `relative` (e.g. "etc/passwd"), or
    None, by overlayfs's rules (Documentation/filesystems/overlayfs.rst): an upper entry hides
    the same path below, a whiteout (a character device 0/0) deletes it, and a directory marked
    opaque (xattr trusted.overlay.opaque=y) hides everything below it. Only the path's own
    directories are looked at, not the whole image. Nothing is followed through a symbolic link:
    the image is untrusted, and a link could point at the host's own files."""
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


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False
