"""Boot time of `minivm boot hello /bin/true` against a naive QEMU launch, and hangs, in one run.

The naive launch is what a first attempt looks like: `qemu-system-x86_64 -M pc` with its default
devices and firmware (SeaBIOS), the distribution's compressed bzImage, and the same initramfs
and layer disks minivm would use (same guest init, same app). On `pc` its virtio-serial ports and
disks are PCI devices, so the initramfs carries virtio_pci where minivm's carries virtio_mmio
(minivm/modules.py). The
guest init waits to be switched off once it has reported, so the naive run ends when its console
shows the app's exit status, and QEMU is then killed. Both are run alternately, so that a busy
machine slows both alike. A boot that does not end within --limit seconds, or ends without the
app's exit status 0, counts as a hang.

    .venv/bin/python tests/bench/boot.py --boots 50

Not a test: pytest does not collect it (no test_ prefix).
"""
import argparse
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minirun.image import Store
from minivm import disks, guest_user, initramfs, kernel, modules

MINIVM = [sys.executable, "-m", "minivm", "boot", "hello", "/bin/true"]
EXIT_REPORT = "@minivm: exit 0"


def naive_command(bzimage: Path, initrd: Path, layers: list[disks.Disk]) -> list[str]:
    ports = []
    for number, disk in enumerate(layers):
        ports += ["-drive", f"file={disk.path},if=none,id=layer{number},format=raw,readonly=on",
                  "-device", f"virtio-blk-pci,drive=layer{number},serial={disk.serial}"]
    ports += ["-device", "virtio-serial-pci", "-chardev", "null,id=stdin",
             "-device", "virtserialport,chardev=stdin,name=minivm.stdin"]
    for stream in ("stdout", "stderr"):
        ports += ["-chardev", f"file,id={stream},path=/dev/null",
                  "-device", f"virtserialport,chardev={stream},name=minivm.{stream}"]
    return ["qemu-system-x86_64", "-M", "pc", "-display", "none",
            "-kernel", str(bzimage), "-initrd", str(initrd),
            "-append", "console=ttyS0 rdinit=/.minivm/init quiet panic=-1",
            "-serial", "stdio", *ports]


def timed(command: list[str], limit: float) -> float | None:
    """Seconds the command took, or None if it hung or did not end with the app's status 0."""
    start = time.monotonic()
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=limit)
    except subprocess.TimeoutExpired:       # subprocess.run kills it
        return None
    return time.monotonic() - start if result.returncode == 0 else None


def timed_naive(command: list[str], limit: float) -> float | None:
    """Seconds until the naive guest's console reports the app's exit status 0 (None: a hang)."""
    start = time.monotonic()
    qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    seen = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(qemu.stdout, selectors.EVENT_READ)
            while EXIT_REPORT.encode() not in seen:
                if not selector.select(max(0.0, start + limit - time.monotonic())):
                    return None
                chunk = qemu.stdout.read1(65536)
                if not chunk:
                    return None
                seen += chunk
        return time.monotonic() - start
    finally:
        qemu.kill()
        qemu.wait()
        qemu.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=50, help="boots of each kind")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before a boot is a hang")
    args = parser.parse_args()

    bzimage = kernel.find_kernel()
    pci_drivers = modules.for_hardware(["virtio-pci", "virtio-serial", "virtio-blk", "erofs",
                                        "overlayfs"],
                                       kernel.modules_directory(kernel.bootable_vmlinux(bzimage)))
    image = Store().get("hello")
    layers = disks.for_image(image, len(image.layers))
    settings = initramfs.RunSettings(command=image.config.command(["/bin/true"]),
                                     environment=image.config.environment([]),
                                     workdir=image.config.workdir, hostname="hello",
                                     modules=pci_drivers,
                                     become_binary=guest_user.become_binary(),
                                     disks=[disk.serial for disk in layers])
    times: dict[str, list[float]] = {"minivm": [], "naive": []}
    hangs = {"minivm": 0, "naive": 0}
    with tempfile.TemporaryDirectory(prefix="minivm-bench-") as scratch:
        initrd = Path(scratch, "initramfs.cpio")
        initrd.write_bytes(initramfs.build(settings))
        subprocess.run(MINIVM, check=True, capture_output=True)     # warm the caches once
        for boot in range(1, args.boots + 1):
            for name, measure, command in (("minivm", timed, MINIVM),
                                           ("naive", timed_naive, naive_command(bzimage, initrd, layers))):
                seconds = measure(command, args.limit)
                if seconds is None:
                    hangs[name] += 1
                else:
                    times[name].append(seconds)
            if sys.stderr.isatty():
                print(f"\rboot {boot}/{args.boots}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    medians = {name: statistics.median(values) if values else float("nan")
               for name, values in times.items()}
    print(f"kernel: {bzimage}   boots of each kind: {args.boots}")
    for name, label in (("minivm", "minivm boot hello /bin/true (microvm, PVH vmlinux)"),
                        ("naive", "qemu -M pc, bzImage, same initramfs")):
        values = sorted(times[name])
        spread = f"min {values[0]:.2f}  max {values[-1]:.2f}" if values else ""
        print(f"{label:52} median {medians[name]:.2f} s  {spread}  hangs {hangs[name]}")
    print(f"ratio minivm/naive (medians): {medians['minivm'] / medians['naive']:.2f}")


if __name__ == "__main__":
    main()
