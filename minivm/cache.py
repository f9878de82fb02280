"""minivm's cache: Debian's kernel, the vmlinux taken out of it, and packed initramfs images.

Everything here can be rebuilt from its inputs, so deleting the directory is always safe. Entries
are named after what they were made from and written under a temporary name then renamed, so two
boots building the same entry at once do not see each other's half-written file.
"""
import os
import tempfile
from pathlib import Path

DEFAULT_CACHE = "/var/cache/minivm"


def cache_dir() -> Path:
    return Path(os.environ.get("MINIVM_CACHE", DEFAULT_CACHE))


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
