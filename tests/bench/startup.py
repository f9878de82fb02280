#!/usr/bin/env python3
"""How long does it take to start a container? minirun against its peers, in one run.

    .venv/bin/python tests/bench/startup.py [--runs 50] [--baseline DIR]

Every command runs /bin/true in the same busybox root filesystem (a copy of the `hello` image's
layer). The commands take turns, run by run, so a busy moment on this shared machine hits all
of them alike. Printed: the median and spread of each, and its ratio to runc; then the import
budget of minirun's run path (`python -X importtime`), the modules that cost the most, so that a
new import that slows every start shows here.

minirun runs with `--network none`, as runc's bundle has no network either (the bridged start is
measured against it in tests/bench/network.py).

Peers:
  unshare+chroot  util-linux's unshare(1) and chroot(1): namespaces and a changed root, no more.
  runc            the OCI reference runtime, with a cgroup (cgroupsPath set) as minirun has.
  python -c pass  the interpreter's own start: the floor under any Python program.
  import click    the interpreter plus the command-line library: the floor under any Python
                  CLI built on click, minirun included, before it does any work.
  import minirun  the interpreter plus everything `run` imports (cli, container and theirs).

The differences between those make the breakdown printed last: the interpreter, click, the
rest of minirun's imports, and the run's own work (minirun's time less `import minirun`).
--baseline DIR also times the minirun of another checkout (e.g. a `git worktree` of the
main branch) in the same turns, so a change is measured against what it changes.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def runc_bundle(rootfs: Path, workdir: Path) -> Path | None:
    """An OCI bundle for runc: `runc spec`'s config with our command, no terminal, a cgroup."""
    if not shutil.which("runc"):
        return None
    bundle = workdir / "runc-bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(args=["/bin/true"], terminal=False)
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["linux"]["cgroupsPath"] = "/minirun-bench/runc"     # removed again at the end
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time `minirun run` from this checkout (its PYTHONPATH)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("startup.py: run as root")

    from minirun.image import Store
    workdir = Path(tempfile.mkdtemp(prefix="minirun-bench-"))
    try:
        rootfs = workdir / "rootfs"
        shutil.copytree(Store().get("hello").layers[0], rootfs, symlinks=True)
        for mountpoint in ("dev/pts", "dev/shm", "dev/mqueue", "sys/fs/cgroup"):
            (rootfs / mountpoint).mkdir(parents=True, exist_ok=True)   # runc wants them in a read-only root
        commands = {
            "minirun": [str(VENV_BIN / "minirun"), "run", "--network", "none", "hello", "/bin/true"],
            "unshare+chroot": ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net",
                               "chroot", str(rootfs), "/bin/true"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "import click": [sys.executable, "-c", "import click"],
            "import minirun": [sys.executable, "-c", "import minirun.cli, minirun.container"],
        }
        environments = {}                                   # a command's own, if not ours
        if args.baseline:
            commands["baseline"] = commands["minirun"]
            environments["baseline"] = dict(os.environ, PYTHONPATH=str(Path(args.baseline).resolve()))
        bundle = runc_bundle(rootfs, workdir)
        if bundle:
            commands["runc"] = ["runc", "run", "--bundle", str(bundle), "minirun-bench"]
        else:
            print("runc is not installed (apt-get install runc): comparing without it")

        times = {name: [] for name in commands}
        for _ in range(3):                                  # warm caches, build the image
            for name, command in commands.items():
                subprocess.run(command, check=True, env=environments.get(name))
        for _ in range(args.runs):
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, check=True, env=environments.get(name))
                times[name].append(1000 * (time.perf_counter() - start))

        reference = statistics.median(times["runc"]) if bundle else None
        print(f"\n{args.runs} runs each of /bin/true, interleaved; milliseconds")
        print(f"{'command':<16}{'median':>8}{'p10':>8}{'p90':>8}{'vs runc':>9}")
        for name, samples in times.items():
            deciles = statistics.quantiles(samples, n=10)
            median = statistics.median(samples)
            ratio = f"{median / reference:.2f}x" if reference else "-"
            print(f"{name:<16}{median:>8.1f}{deciles[0]:>8.1f}{deciles[-1]:>8.1f}{ratio:>9}")
        print_breakdown({name: statistics.median(samples) for name, samples in times.items()})
        print_import_budget()
    finally:
        shutil.rmtree(workdir)
        for parent in Path("/sys/fs/cgroup").glob("*/minirun-bench"):   # runc's cgroupsPath parent
            try:
                parent.rmdir()
            except OSError:
                pass


def print_breakdown(median: dict[str, float]) -> None:
    """Where minirun's time goes, as differences of the medians above."""
    parts = {"the interpreter (python -c pass)": median["python -c pass"],
             "click's import": median["import click"] - median["python -c pass"],
             "minirun's other imports": median["import minirun"] - median["import click"],
             "the run's work (image to exit)": median["minirun"] - median["import minirun"]}
    print("\nminirun's median, in parts (differences of medians, ms):")
    for part, milliseconds in parts.items():
        print(f"  {milliseconds:6.1f}  {part}")


def print_import_budget(shown: int = 12) -> None:
    """What importing the run path costs (cli, click, container and all they import), by the
    interpreter's own account, and the modules that take most of it (their own time)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c",
                             "import minirun.cli, minirun.container"],
                            capture_output=True, text=True, check=True)
    rows = []                                   # "import time: self | cumulative | name"
    for line in result.stderr.splitlines()[1:]:
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        rows.append((int(self_us), int(cumulative_us), name.strip()))
    total = sum(self_us for self_us, _, _ in rows)
    print(f"\nimports of the run path: {total / 1000:.1f} ms in {len(rows)} modules; "
          f"the {shown} costliest (own time, ms):")
    for self_us, _, name in sorted(rows, reverse=True)[:shown]:
        print(f"  {self_us / 1000:6.1f}  {name}")


if __name__ == "__main__":
    main()
