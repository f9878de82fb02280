#!/usr/bin/env python3
"""Does a run cost more when many containers already run? And what does each one hold?

    .venv/bin/python tests/bench/scale.py [--levels 0,25,50,100] [--runs 15] [--runc 10]

1. Start cost: `minirun run hello /bin/true` with 0, 25, 50 and 100 containers running (each a
   `minirun run hello sleep` held in the background), and `minirun gc`, whose full scan of
   records, cgroup trees and store does grow with them. Beside each, in the same rounds, the
   interpreter with click imported: the floor under any minirun command, which shows how busy
   this shared machine was at that level. Printed: medians and spread, and minirun's start
   over that floor.
2. Memory per held container: the minirun process that holds it (RSS, and PSS from
   /proc/PID/smaps_rollup: shared pages split between their users) and the container's own
   cgroup usage; beside `runc run` holding the same busybox container (runc, like minirun,
   stays in the foreground as the container's parent).

Runs in a private store and state directory; every container, runc's included, and the cgroup
parent made for runc are removed at the end.
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
MINIRUN = [sys.executable, "-m", "minirun"]
RUNC_PARENT = "minirun-scale"         # runc's containers get /sys/fs/cgroup/*/minirun-scale/N


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return 1000 * (time.perf_counter() - start)


def hold_minirun(count: int, env: dict, held: list) -> None:
    """Start containers until `count` run, each waiting until its record has its PID 1."""
    while len(held) < count:
        process = subprocess.Popen([*MINIRUN, "run", "hello", "sleep", "3600"], env=env,
                                   stdout=subprocess.DEVNULL)
        held.append(process)
    state = Path(env["MINIRUN_STATE"])
    deadline = time.monotonic() + 120
    while len(_started(state)) < count:
        if time.monotonic() > deadline:
            sys.exit(f"scale.py: only {len(_started(state))} of {count} containers started")
        time.sleep(0.1)


def _started(state: Path) -> list[dict]:
    records = []
    for path in state.glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("pid"):
            records.append(record)
    return records


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss and Pss of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        if name in ("Rss", "Pss"):
            values[name] = int(value.split()[0]) * 1024
    return values


def cgroup_memory(relative: str) -> int:
    """Memory charged to a cgroup: v2's memory.current, or v1's memory.usage_in_bytes."""
    for path in (Path("/sys/fs/cgroup/unified") / relative / "memory.current",
                 Path("/sys/fs/cgroup") / relative / "memory.current",
                 Path("/sys/fs/cgroup/memory") / relative / "memory.usage_in_bytes"):
        if path.exists():
            return int(path.read_text())
    return 0


def runc_bundles(rootfs: Path, workdir: Path, count: int) -> list[Path]:
    """One OCI bundle per runc container (each its own cgroupsPath), on one read-only rootfs."""
    subprocess.run(["runc", "spec"], cwd=workdir, check=True)
    template = json.loads((workdir / "config.json").read_text())
    template["process"].update(args=["/bin/sleep", "3600"], terminal=False)
    template["root"] = {"path": str(rootfs), "readonly": True}
    bundles = []
    for number in range(count):
        bundle = workdir / f"runc-{number}"
        bundle.mkdir()
        config = json.loads(json.dumps(template))
        config["linux"]["cgroupsPath"] = f"/{RUNC_PARENT}/{number}"
        (bundle / "config.json").write_text(json.dumps(config))
        bundles.append(bundle)
    return bundles


def mib(count: float) -> str:
    return f"{count / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--levels", default="0,25,50,100")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--runc", type=int, default=10, help="runc containers to hold")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("scale.py: run as root")
    levels = [int(level) for level in args.levels.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="minirun-scale-"))
    env = {**os.environ, "MINIRUN_ROOT": str(workdir / "store"), "MINIRUN_STATE": str(workdir / "state")}
    held, runc_held, runc_root = [], [], workdir / "runc-state"
    try:
        subprocess.run([*MINIRUN, "run", "hello", "true"], env=env, check=True)   # build the image
        commands = {"minirun run": [*MINIRUN, "run", "hello", "/bin/true"],
                    "minirun gc": [*MINIRUN, "gc"],
                    "import click": [sys.executable, "-c", "import click"]}
        os.environ.update(MINIRUN_ROOT=env["MINIRUN_ROOT"], MINIRUN_STATE=env["MINIRUN_STATE"])
        from minirun import garbage
        results, passes = {}, {}
        for level in levels:
            hold_minirun(level, env, held)
            times = {name: [] for name in commands}
            passes[level] = {"run's pass": [], "gc's scan": []}
            for _ in range(args.runs):
                for name, command in commands.items():
                    times[name].append(timed(command, env))
                for name, everything in (("run's pass", False), ("gc's scan", True)):
                    start = time.perf_counter()
                    garbage.collect(everything=everything)
                    passes[level][name].append(1000 * (time.perf_counter() - start))
            results[level] = times

        print(f"\nStart cost with N containers running: {args.runs} runs each, interleaved; ms")
        print(f"{'N':>4}  {'command':<13}{'median':>8}{'p10':>8}{'p90':>8}{'/click':>8}")
        for level, times in results.items():
            floor = statistics.median(times["import click"])
            for name, samples in times.items():
                deciles = statistics.quantiles(samples, n=10)
                median = statistics.median(samples)
                print(f"{level:>4}  {name:<13}{median:>8.1f}{deciles[0]:>8.1f}{deciles[-1]:>8.1f}"
                      f"{median / floor:>8.2f}")

        print("\nThe cleanup inside a run (quick: its containers' locks) and gc's full scan (records,"
              "\n/proc, every cgroup tree: what each run did before), timed in this process; ms")
        print(f"{'N':>4}  {'pass':<13}{'median':>8}{'p10':>8}{'p90':>8}")
        for level, times in passes.items():
            for name, samples in times.items():
                deciles = statistics.quantiles(samples, n=10)
                print(f"{level:>4}  {name:<13}{statistics.median(samples):>8.2f}{deciles[0]:>8.2f}"
                      f"{deciles[-1]:>8.2f}")

        # Memory: every held minirun container, then runc's.
        minirun_rows = []
        for record in _started(Path(env["MINIRUN_STATE"])):
            rollup = smaps_rollup(record["runtime_pid"])
            minirun_rows.append((rollup["Rss"], rollup["Pss"],
                                 cgroup_memory(f"minirun/{record['id']}")))
        rows = {"minirun": minirun_rows}
        if shutil.which("runc") and args.runc:
            from minirun.image import Store
            rootfs = workdir / "rootfs"
            shutil.copytree(Store().get("hello").layers[0], rootfs, symlinks=True)
            for mountpoint in ("dev/pts", "dev/shm", "dev/mqueue", "sys/fs/cgroup", "proc"):
                (rootfs / mountpoint).mkdir(parents=True, exist_ok=True)
            for number, bundle in enumerate(runc_bundles(rootfs, workdir, args.runc)):
                runc_held.append(subprocess.Popen(
                    ["runc", "--root", str(runc_root), "run", "--bundle", str(bundle),
                     f"scale-{number}"], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
            time.sleep(2)
            runc_rows = []
            for number, process in enumerate(runc_held):
                rollup = smaps_rollup(process.pid)
                runc_rows.append((rollup["Rss"], rollup["Pss"],
                                  cgroup_memory(f"{RUNC_PARENT}/{number}")))
            rows["runc"] = runc_rows
        print("\nHost memory per held container (median over the held ones); MiB")
        print(f"{'runtime':<9}{'held':>6}{'runtime RSS':>13}{'runtime PSS':>13}{'cgroup':>9}")
        for name, samples in rows.items():
            rss, pss, cgroup = (statistics.median(column) for column in zip(*samples))
            print(f"{name:<9}{len(samples):>6}{mib(rss):>13}{mib(pss):>13}{mib(cgroup):>9}")
    finally:
        for process in held:
            process.kill()          # its container dies with it (parent-death signal); gc below
        for number, process in enumerate(runc_held):
            subprocess.run(["runc", "--root", str(runc_root), "kill", f"scale-{number}", "KILL"],
                           stderr=subprocess.DEVNULL)
        for process in held:
            process.wait()
        for number, process in enumerate(runc_held):
            process.wait(timeout=30)
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", f"scale-{number}"],
                           stderr=subprocess.DEVNULL)
        subprocess.run([*MINIRUN, "gc"], env=env, stdout=subprocess.DEVNULL)
        for parent in Path("/sys/fs/cgroup").glob(f"*/{RUNC_PARENT}"):
            for child in parent.iterdir():
                if child.is_dir():
                    child.rmdir()
            parent.rmdir()
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
