#!/usr/bin/env python3
"""minirun as an OCI runtime, beside runc, in one run.

    PYTHONPATH=$PWD .venv/bin/python tests/bench/oci.py [--runs 20]

1. The runtime alone, as an engine calls it: `create` + `start` + (wait for the process) +
   `delete` of /bin/true, on the same bundle (`runc spec`'s config, a copy of the hello
   image's root, an absolute cgroupsPath of our own), minirun against runc.
2. Through an engine: `podman run --rm` of /bin/true with `--runtime minirun` against
   `--runtime runc`, on an image imported into a private podman storage (removed at the end).

The two take turns run by run, so a busy moment on this shared machine hits both alike.
Printed: medians in milliseconds and the ratio minirun/runc.
"""
import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIRUN = [sys.executable, "-m", "minirun"]
PODMAN_RUN = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def bundle(rootfs: Path, workdir: Path, name: str) -> Path:
    directory = workdir / name
    directory.mkdir()
    subprocess.run(["runc", "spec"], cwd=directory, check=True)
    config = json.loads((directory / "config.json").read_text())
    config["process"].update(args=["/bin/true"], terminal=False)
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["linux"]["cgroupsPath"] = f"/minirun-bench-oci/{name}"
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def lifecycle(runtime: list[str], bundle_dir: Path, container_id: str) -> float:
    """create (with a pid file), start, wait for the process to end, delete: seconds. The
    wait is conmon's: on the PID from the pid file (here through a pidfd, as the container is
    not our child), not by polling `state`, which would time Python's start-up again."""
    pid_file = bundle_dir / "pid"
    began = time.perf_counter()
    subprocess.run([*runtime, "create", "--bundle", str(bundle_dir), "--pid-file", str(pid_file),
                    container_id], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    process = os.pidfd_open(int(pid_file.read_text()))
    subprocess.run([*runtime, "start", container_id], check=True)
    select.select([process], [], [])            # readable once the process has ended
    os.close(process)
    subprocess.run([*runtime, "delete", container_id], check=True)
    return time.perf_counter() - began


def timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def report(title: str, samples: dict[str, list[float]]) -> None:
    medians = {name: 1000 * statistics.median(values) for name, values in samples.items()}
    print(title)
    for name, median in medians.items():
        print(f"  {name:<8} median {median:8.1f} ms")
    print(f"  minirun/runc: {medians['minirun'] / medians['runc']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("oci.py: run as root")
    from minirun.image import Store
    workdir = Path(tempfile.mkdtemp(prefix="minirun-bench-oci-"))
    state = {**os.environ, "MINIRUN_STATE": str(workdir / "state")}
    os.environ.update(state)
    try:
        rootfs = workdir / "rootfs"
        shutil.copytree(Store().get("hello").layers[0], rootfs, symlinks=True)
        for mountpoint in ("dev/pts", "dev/shm", "dev/mqueue", "sys/fs/cgroup"):
            (rootfs / mountpoint).mkdir(parents=True, exist_ok=True)
        runtimes = {"minirun": MINIRUN, "runc": ["runc", "--root", str(workdir / "runc")]}
        bundles = {name: bundle(rootfs, workdir, name) for name in runtimes}
        samples = {name: [] for name in runtimes}
        for run in range(args.runs):
            for name, runtime in runtimes.items():
                samples[name].append(lifecycle(runtime, bundles[name], f"bench-{name}-{run}"))
        report(f"create+start+delete of /bin/true, {args.runs} runs each:", samples)

        if not shutil.which("podman"):
            print("podman: not installed, skipped")
            return
        script = workdir / "minirun-runtime"
        script.write_text(f"#!/bin/sh\nexport PYTHONPATH={os.pathsep.join(sys.path)} "
                          f"MINIRUN_STATE={workdir}/state\nexec {sys.executable} -m minirun \"$@\"\n")
        script.chmod(0o755)
        podman = ["podman", "--root", str(workdir / "podman"), "--runroot", str(workdir / "runroot"),
                  "--tmpdir", str(workdir / "tmp"), "--cgroup-manager", "cgroupfs",
                  "--events-backend", "none"]
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(workdir / "hello.tar"), "."], check=True)
        subprocess.run([*podman, "import", str(workdir / "hello.tar"), "hello"], check=True,
                       capture_output=True)
        paths = {"minirun": str(script), "runc": shutil.which("runc")}
        samples = {name: [] for name in paths}
        for run in range(args.runs):
            for name, path in paths.items():
                samples[name].append(timed([*podman, "--runtime", path, "run", "--rm",
                                            *PODMAN_RUN, "hello", "/bin/true"]))
        report(f"podman run --rm of /bin/true, {args.runs} runs each:", samples)
        subprocess.run([*podman, "rmi", "--all", "--force"], capture_output=True)
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True)
    finally:
        for tree in Path("/sys/fs/cgroup").glob("*/minirun-bench-oci"):
            for leaf in tree.glob("*"):
                if leaf.is_dir():
                    leaf.rmdir()
            tree.rmdir()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
