"""How fast the app's output leaves a VM, against the same app in a container, in one run.

The app prints --megabytes MB (`head -c N /dev/zero`) in the image `hello`, once under `minivm
boot` and once under `minirun run`, and this script reads its stdout through a pipe, as a
pipeline would. Each is also run printing nothing (`true`), so that the start-up (a kernel boot
for the VM) can be taken off: the stream's rate is N / (time with N bytes - time with none).
Runs alternate, so that a busy machine slows both alike; medians of --runs runs.

    .venv/bin/python tests/bench/output.py --megabytes 50

Not a test: pytest does not collect it (no test_ prefix).
"""
import argparse
import statistics
import subprocess
import sys
import time

RUNNERS = {"minivm": [sys.executable, "-m", "minivm", "boot", "hello"],
           "minirun": [sys.executable, "-m", "minirun", "run", "hello"]}


def timed(command: list[str], expected: int) -> float:
    """Seconds the command took, reading its whole stdout; it must print `expected` bytes."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    received = 0
    while chunk := process.stdout.read1(1 << 16):
        received += len(chunk)
    process.stdout.close()
    if process.wait() != 0 or received != expected:
        sys.exit(f"{' '.join(command)}: status {process.returncode}, {received} bytes of "
                 f"{expected}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=50, help="MB (10^6 bytes) printed")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind")
    args = parser.parse_args()
    size = int(args.megabytes * 1e6)

    times = {(runner, n): [] for runner in RUNNERS for n in (0, size)}
    for _ in range(args.runs):
        for runner, command in RUNNERS.items():
            times[runner, 0].append(timed(command + ["true"], 0))
            times[runner, size].append(timed(command + ["head", "-c", str(size), "/dev/zero"],
                                             size))
    rates = {}
    for runner in RUNNERS:
        empty, full = statistics.median(times[runner, 0]), statistics.median(times[runner, size])
        rates[runner] = size / 1e6 / max(full - empty, 1e-9)
        print(f"{runner:8} {size / 1e6:.0f} MB in {full:6.2f} s (printing nothing: {empty:5.2f} s)"
              f"  stream {rates[runner]:8.1f} MB/s")
    print(f"ratio minivm/minirun (stream rates): {rates['minivm'] / rates['minirun']:.3f}")


if __name__ == "__main__":
    main()
