"""Import throughput: `minirun import` of an OCI layout against `tar -x` of the same layers.

    sudo .venv/bin/python tests/bench/import.py [--runs 3]

Three layers are made from directories of this host (many small headers, some large files,
symlinks and hard links, as a distribution image has), and written as two OCI layouts: plain
tars and gzip-compressed tars. Then, in one run and alternating, each layout is imported with
`python -m minirun import` into an empty store, and the same layer blobs are extracted with GNU
tar (`tar -xf`, or `tar -xzf`, which runs gzip in a second process) into empty directories.
The import does more than tar does: two sha256 digests per layer, whiteout conversion, the
careful path walk. Prints the median of each and their ratio (the goal: within 1.5x of tar).
Not collected by pytest (the file's name does not start with test_).
"""
import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_helpers import layer_blobs, oci_layout  # noqa: E402

SOURCES = ["/usr/include", "/usr/lib/python3", "/usr/share/zoneinfo"]


def timed(command, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    sources = [s for s in SOURCES if os.path.isdir(s)]
    work = Path(tempfile.mkdtemp(prefix="minirun-bench-"))
    try:
        tars = [subprocess.run(["tar", "-C", s, "-cf", "-", "."], check=True,
                               capture_output=True).stdout for s in sources]
        entries = sum(int(subprocess.run(f"find {s} | wc -l", shell=True, capture_output=True,
                                         text=True).stdout) for s in sources)
        print(f"{len(tars)} layers from {', '.join(sources)}: "
              f"{sum(map(len, tars)) / 2**20:.0f} MiB of tar, {entries} entries")
        layouts = {
            "plain": (oci_layout(work / "plain", tars, compress=lambda t: t,
                                 media_type="application/vnd.oci.image.layer.v1.tar"), "-xf"),
            "gzip": (oci_layout(work / "gzip", tars, compress=lambda t: gzip.compress(t, 6)), "-xzf"),
        }
        for kind, (layout, tar_flags) in layouts.items():
            ours, theirs = [], []
            for run in range(runs):
                store = work / "store"
                env = dict(os.environ, MINIRUN_ROOT=str(store), MINIRUN_STATE=str(work / "state"))
                import_time = timed([sys.executable, "-m", "minirun", "import", str(layout), "bench"],
                                    env=env)
                shutil.rmtree(store)
                start = time.perf_counter()
                for number, blob in enumerate(layer_blobs(layout)):
                    target = work / "tar" / str(number)
                    target.mkdir(parents=True)
                    subprocess.run(["tar", "-C", str(target), tar_flags, str(blob)], check=True)
                tar_time = time.perf_counter() - start
                shutil.rmtree(work / "tar")
                ours.append(import_time)
                theirs.append(tar_time)
            ours_median, tar_median = statistics.median(ours), statistics.median(theirs)
            print(f"{kind:6} minirun import {ours_median * 1000:7.0f} ms   tar -x {tar_median * 1000:7.0f} ms"
                  f"   ratio {ours_median / tar_median:.2f}x   (medians of {runs})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
