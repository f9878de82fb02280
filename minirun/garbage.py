"""What killed runs leave behind, found and removed: `minirun gc`, and the first step of every run.

A minirun killed with SIGKILL runs no cleanup: its container's cgroup, bundle and record stay.
Nothing needs a daemon to find them, because every run proves it is alive the whole time: it
holds a lock (flock(2)) on a file beside its bundle, and the kernel lets go of a lock when its
holder dies, however it dies. A lock that can be taken is a dead run's, with one exception:
a detached container's bundle that its run let go of on purpose, so that `minirun start` can
run it again on the same writable layer. Its lock's note then names the record that keeps it
(rootfs.keep_bundle), and the bundle is garbage again only once that record is gone.
"""
import os
from pathlib import Path

from minirun import cgroups, network, rootfs, state
from minirun.errors import RuntimeFailure
from minirun.image import Store, store_root


def collect(everything: bool = True) -> list[str]:
    """Remove what minirun processes killed with SIGKILL left behind: their cgroups, bundles
    and records. Return the ids of the containers removed.

    Every run starts with the quick pass (everything=False): each bundle in the store sits
    beside a lock its minirun holds for life, so the locks that can be taken are exactly the
    dead containers, whichever state directory recorded them; each one's cgroup is removed by
    its id, without reading the cgroup trees. A running container costs this pass three system
    calls (open, flock, close: about 10 to 20 µs here), and nothing else; an exited container's
    kept layer two more (pread of the lock's note, stat of the record it names).

    `minirun gc` (everything=True) also looks for what that pass cannot see: records of dead
    minirun processes in this state directory (with a bundle in another store, or none yet),
    cgroups under minirun/ that no one owns, half-written records, names of gone records.
    """
    network.collect_leases(everything)     # leases of dead runs; gc: the idle bridge too
    containers_dir = store_root() / "containers"
    removed, held = set(), set()
    names = set(os.listdir(containers_dir)) if containers_dir.is_dir() else set()
    for name in names - {name for name in names if name.startswith(".")}:
        container_id = name.removesuffix(".lock")
        if name != container_id:
            lock = state.take_if_free(containers_dir / name)
            if lock is None:
                held.add(container_id)          # its minirun is alive (or just removed it)
                continue
        elif f"{name}.lock" in names or (containers_dir / f"{name}.lock").exists():
            continue                            # the bundle's lock decides, above
        else:
            # A bundle without its lock: the lock is made before the bundle and removed after
            # it, so this is a bundle whose removal was cut short.
            lock = None
        note = os.pread(lock, 4096, 0).decode(errors="replace") if lock else ""
        if rootfs.is_kept(note):            # an exited detached container's writable layer,
            os.close(lock)                  # kept for `minirun start` until `minirun rm`
            continue
        bundle = rootfs.Bundle(containers_dir / container_id, lock)
        note = Path(note) if note else None
        record_file = note if note and note.is_absolute() and note.name == f"{container_id}.json" \
            else None
        if _remove_container(container_id, bundle, record_file):
            removed.add(container_id)
    if everything:
        for record in state.containers():
            if record.id not in held and not state.is_alive(record):
                bundle = rootfs.Bundle(containers_dir / record.id)
                bundle.lock = state.take_if_free(bundle.lock_path)
                if bundle.lock is None and bundle.lock_path.exists():
                    continue                # its lock is held: not dead yet (its --init, dying)
                if _remove_container(record.id, bundle, state.record_path(record.id)):
                    removed.add(record.id)
        live = held | {record.id for record in state.containers() if state.is_alive(record)}
        removed.update(cgroups.remove_stale(live, dead_ids=removed))
        state.tidy()
    Store().remove_stale_scratch()                          # of killed imports and builds
    return sorted(removed)


def _remove_container(container_id: str, bundle: rootfs.Bundle, record_file: Path | None) -> bool:
    """What a dead minirun left of one container: its cgroup (killing what still runs in it),
    its record, then its bundle and, last, its lock. If the cgroup will not go yet (its
    processes still exiting), all of it stays, the lock let go, for the next pass."""
    try:
        cgroups.of_container(container_id).remove()
    except RuntimeFailure:
        if bundle.lock is not None:
            os.close(bundle.lock)
        return False
    if record_file:
        state.release(record_file)
    rootfs.remove_bundle(bundle)
    return True
