"""The app's user in the guest: the image's `User`, or -u, exactly as minirun would run it.

A container runtime switches to the image's user from Python just before exec
(minirun/security.py). A guest has no Python, only minivm's busybox, and Debian builds busybox
with nothing that switches to numeric IDs (its setpriv has no --reuid; chpst and setuidgid are
left out). So minivm carries become.c, thirty lines of C that call setgroups, setgid, setuid and
exec. It is compiled once, statically (the guest has no libraries to link against), with the
host's C compiler, and cached by its source; only images that do not run as root need it.

The names are resolved here, on the host, with minirun's own code and the image's own
/etc/passwd and /etc/group as the guest will see them.
"""
from dataclasses import dataclass
from pathlib import Path

from minirun import static_build
from minirun.image import Image
from minirun.security import resolve_user
from minivm import initramfs
from minivm.cache import cache_dir

SOURCE = Path(__file__).with_name("become.c")
ROOT_SPECS = ("", "root", "0", "0:0")       # the guest init is root already: nothing to switch


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]

    def become_args(self) -> list[str]:
        """The arguments of /.minivm/become before the app's command."""
        return [str(self.uid), str(self.gid), ",".join(map(str, self.groups))]


def resolve(image: Image, spec: str) -> Identity | None:
    """Who the app runs as; None for root."""
    if spec in ROOT_SPECS:
        return None
    passwd = initramfs.lookup(image.layers, "etc/passwd")
    group = initramfs.lookup(image.layers, "etc/group")
    return Identity(*resolve_user(spec, passwd, group))


def become_binary() -> bytes:
    """The compiled helper, built on first use and cached by the digest of its source."""
    return static_build.build(SOURCE, cache_dir() / "become",
                              "running the app as a user other than root").read_bytes()
