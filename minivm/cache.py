"""minivm's cache: Debian's kernel and its modules, the vmlinux taken out of it, the images'
layers as disks.

Everything here can be rebuilt from its inputs, so deleting the directory is always safe. Entries
are named after what they were made from and written under a temporary name then renamed, so two
boots building the same entry at once do not see each other's half-written file.

A temporary's name carries its writer's PID and start time (`.NAME.PID-START.RANDOM`, as
minirun's records: minirun/state.py, "Files written whole or not at all"): a writer killed
half-way leaves it behind, and the next write or boot removes every temporary whose writer is gone.

The cache only grows by itself (a Debian image's layers make disks of about 250 MB), so each
boot marks the entries it uses (their modification time is the last use), and `minivm cache
prune` removes those unused for a while.
"""
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from minirun import state

DEFAULT_CACHE = "/var/cache/minivm"
REBUILT = ("disks", "vmlinux")          # what prune may remove: rebuilt by the next boot
                                        # (a fetched kernel needs a download: it stays)


def cache_dir() -> Path:
    return Path(os.environ.get("MINIVM_CACHE", DEFAULT_CACHE))


def write_atomically(path: Path, data: bytes) -> None:
    """A new entry, whole or not at all; first, what killed writers left beside it goes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state.remove_abandoned_temporaries(path.parent)
    state.write_atomically(path, data)


@contextmanager
def scratch_directory(parent: Path):
    """A temporary directory inside the cache (on the same filesystem, so that what is built in
    it can be renamed into place), removed afterwards, or by the next write if we are killed."""
    parent.mkdir(parents=True, exist_ok=True)
    state.remove_abandoned_temporaries(parent)
    scratch = parent / state.temporary_name("scratch")
    scratch.mkdir(mode=0o700)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def tidy() -> None:
    """At each boot: the temporaries that killed writers left in any part of the cache."""
    for part in cache_dir().iterdir() if cache_dir().is_dir() else ():
        if part.is_dir():
            state.remove_abandoned_temporaries(part)


def mark_used(entry: Path) -> None:
    """Record that a boot used this entry now (prune keeps the recently used ones)."""
    try:
        os.utime(entry)
    except OSError:         # a cache we may read but not write (another user's): prune is theirs
        pass


def entries() -> list[tuple[Path, int, float]]:
    """Every entry of the cache (a file, or a directory such as a kernel's modules) with its
    size and last use (its modification time), part by part."""
    listed = []
    for part in sorted(cache_dir().iterdir()) if cache_dir().is_dir() else ():
        for entry in sorted(part.iterdir()) if part.is_dir() else ():
            files = [entry] if not entry.is_dir() else \
                [path for path in entry.rglob("*") if path.is_file()]
            listed.append((entry, sum(path.lstat().st_size for path in files),
                           entry.lstat().st_mtime))
    return listed


def prune(unused_for: float) -> list[tuple[Path, int]]:
    """Remove rebuildable entries not used for `unused_for` seconds, and stale temporaries."""
    removed = []
    tidy()
    now = time.time()
    for part in REBUILT:
        for path in sorted((cache_dir() / part).glob("*")):
            if path.is_file() and not path.name.startswith("."):
                info = path.stat()
                if now - info.st_mtime > unused_for:
                    path.unlink()
                    removed.append((path, info.st_size))
    return removed
