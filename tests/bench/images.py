"""Boot time and host memory of `minivm boot` for a tiny image and a big one, with the image in
the initramfs (the design before minivm/disks.py) and as read-only disks (now), in one run.

The big image is the host's own programs (tests/test_minivm_images.py) plus a copy of this
Python's standard library (thousands of small files) and a file of random bytes, about 250 MB in
all. Each design runs from its own source tree: the disks design from this checkout, the
initramfs design from a temporary git worktree of the commit before minivm/disks.py was added
(or --before REV). Each boot:
  - cold: a fresh minivm cache (only the kernel and its modules linked in, so the kernel's
    extraction is not counted), so the image is packed (initramfs) or its disks built first;
  - warm: the same cache again, everything built.
The two designs take turns, boot by boot.
For each boot: the wall time of the whole `minivm boot`, and QEMU's peak RSS and PSS (from
/proc/PID/smaps_rollup, sampled every 20 ms). The app is `sh -c :` (does nothing), and for the
big image also `cat /big >/dev/null` (reads the whole big file): host memory should follow what
the app touches, not the image's size. The initramfs design cannot boot the big image at the
default 512M (issue 13): it gets --memory 1G, and the table says so.

    .venv/bin/python tests/bench/images.py --warm 3

Not a test: pytest does not collect it (no test_ prefix).
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from test_minivm_images import import_image, native_rootfs  # noqa: E402  (after the path)

from minivm import kernel  # noqa: E402

BIG_FILE = 200 << 20


def big_rootfs(root: Path) -> Path:
    native_rootfs(root)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(stdlib, root / "usr/lib/stdlib", symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "dist-packages"))
    with open(root / "big", "wb") as big:
        chunk = os.urandom(1 << 20)
        for _ in range(BIG_FILE >> 20):
            big.write(chunk)
    return root


def tree_size(root: Path) -> tuple[int, int]:
    files = [path for path in root.rglob("*") if path.is_file() and not path.is_symlink()]
    return sum(path.stat().st_size for path in files), len(files)


class QemuWatcher(threading.Thread):
    """Peak RSS and PSS of the QEMU whose command line names `marker`, sampled until stopped."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker, self.stop, self.rss, self.pss = marker.encode(), threading.Event(), 0, 0

    def run(self) -> None:
        pid = None
        while not self.stop.is_set():
            if pid is None:
                pid = self._find()
            if pid is not None:
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        name, _, value = line.partition(":")
                        if name in ("Rss", "Pss"):
                            kib = int(value.split()[0]) * 1024
                            setattr(self, name.lower(), max(getattr(self, name.lower()), kib))
                except OSError:
                    pid = None
            self.stop.wait(0.02)

    def _find(self) -> int | None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:                    # the process may end while we look
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"qemu-system" in argv[0] and self.marker in b" ".join(argv):
                return int(pid)
        return None


def boot(source: Path, env: dict, image: str, memory: str, command: list[str]) -> tuple:
    """One `minivm boot`: (seconds, peak RSS, peak PSS), or None if it failed."""
    marker = f"bench{time.monotonic_ns()}"
    watcher = QemuWatcher(f"minivm-{marker}")
    watcher.start()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "minivm", "boot", "--memory", memory,
                             "--hostname", marker, image, *command],
                            env={**env, "PYTHONPATH": str(source)}, cwd=source,
                            capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    watcher.stop.set()
    watcher.join()
    if result.returncode != 0:
        print(f"  failed ({source.name}, {image}): {result.stderr.strip()[-200:]}",
              file=sys.stderr)
        return None
    return seconds, watcher.rss, watcher.pss


def fresh_cache(scratch: Path, modules_dir: Path) -> Path:
    cache = Path(tempfile.mkdtemp(dir=scratch, prefix="cache-"))
    (cache / "kernels").mkdir()
    (cache / "kernels" / modules_dir.name).symlink_to(modules_dir)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=3, help="warm boots of each kind")
    parser.add_argument("--before", help="the commit of the initramfs design [default: the "
                        "parent of the commit that added minivm/disks.py]")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # so the worktree is removed
    before = args.before or subprocess.run(
        ["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--",
         "minivm/disks.py"], capture_output=True, text=True, check=True).stdout.split()[-1] + "^"

    vmlinux = kernel.bootable_vmlinux(kernel.find_kernel())
    modules_dir = kernel.modules_directory(vmlinux)
    with tempfile.TemporaryDirectory(prefix="minivm-bench-images-") as scratch_name:
        scratch = Path(scratch_name)
        old = scratch / "initramfs-design"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), before],
                       check=True, capture_output=True)
        try:
            store = scratch / "store"
            env = dict(os.environ, MINIRUN_ROOT=str(store), MINIVM_KERNEL=str(vmlinux))
            import_image(native_rootfs(scratch / "small"), "small", str(store))
            size, files = tree_size(big_rootfs(scratch / "big"))
            import_image(scratch / "big", "big", str(store))
            shutil.rmtree(scratch / "big")
            print(f"kernel {vmlinux}; big image: {size / 1e6:.0f} MB in {files} files; "
                  f"initramfs design from {before}")
            runs = [("small", "sh -c :"), ("big", "sh -c :"), ("big", "cat /big")]
            rows = []
            designs = (("initramfs", old), ("disks", REPO))
            for image, app in runs:
                command = ["sh", "-c", ":"] if app == "sh -c :" else \
                    ["sh", "-c", "cat /big >/dev/null"]
                memory = {design: "1G" if design == "initramfs" and image == "big" else "512M"
                          for design, _ in designs}
                caches = {design: fresh_cache(scratch, modules_dir) for design, _ in designs}
                cold, warm = {}, {design: [] for design, _ in designs}
                # The designs take turns, so that a machine busy with other work slows both.
                for turn in range(1 + args.warm):
                    for design, source in designs:
                        result = boot(source, {**env, "MINIVM_CACHE": str(caches[design])},
                                      image, memory[design], command)
                        if turn == 0:
                            cold[design] = result
                            # `python -m` puts its working directory first on sys.path: check
                            # that each design's own code ran, by what it left in its cache.
                            built = caches[design] / ("initramfs" if design == "initramfs"
                                                      else "disks")
                            assert built.is_dir(), f"the {design} design did not run"
                        elif result:
                            warm[design].append(result)
                for design, _ in designs:
                    rows.append((image, app, design, memory[design], cold[design], warm[design]))
                    shutil.rmtree(caches[design])
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                           capture_output=True)

    print(f"{'image':6} {'app':10} {'design':10} {'memory':6} {'cold s':>7} {'warm s':>7} "
          f"{'cold/warm':>9} {'RSS MB':>7} {'PSS MB':>7}")
    warm_of = {}
    for image, app, design, memory, cold, warm in rows:
        warm_s = statistics.median(result[0] for result in warm) if warm else float("nan")
        rss = statistics.median(result[1] for result in warm) / 1e6 if warm else float("nan")
        pss = statistics.median(result[2] for result in warm) / 1e6 if warm else float("nan")
        cold_s = cold[0] if cold else float("nan")
        warm_of[image, app, design] = warm_s
        print(f"{image:6} {app:10} {design:10} {memory:6} {cold_s:7.2f} {warm_s:7.2f} "
              f"{cold_s / warm_s:9.2f} {rss:7.0f} {pss:7.0f}")
    for design in ("initramfs", "disks"):
        ratio = warm_of["big", "sh -c :", design] / warm_of["small", "sh -c :", design]
        print(f"{design}: big image's warm boot / small image's warm boot = {ratio:.2f}")


if __name__ == "__main__":
    main()
