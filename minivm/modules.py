"""Which guest kernel modules each piece of virtual hardware needs, from the kernel's own package.

A guest can use only the hardware its kernel has drivers for. Debian's kernel has the serial
UART, ACPI and the initramfs unpacker built in, but builds every virtio driver as a module (a
`.ko` file under lib/modules/<release>/), so a guest with virtio devices must carry those modules
in its initramfs and load them before the devices appear. A module often needs others first:
each names them in its own `.modinfo` ELF section (`depends=`, written by the kernel's build),
and `depmod` gathers them into `modules.dep`, one line per module with everything it needs
(Documentation/kbuild/modules.rst, depmod(8), modules.dep(5)).

DRIVERS below is the table: a piece of virtual hardware (or a filesystem the guest reads from
it) -> the modules of its driver. The rest is
finding those files for a kernel release, with their dependencies, in the order to load them.
"""
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path

from minirun.errors import RuntimeFailure

# The virtual hardware (a key that minivm.hardware's parts name in `needs`) -> its driver.
DRIVERS = {
    "virtio-mmio": ["virtio_mmio"],         # the transport of virtio devices on microvm: their
                                            # registers mapped in memory, listed in ACPI tables
    "virtio-pci": ["virtio_pci"],           # the transport on pc and q35: PCI functions
    "virtio-serial": ["virtio_console"],    # serial ports (/dev/vportNpM) and hvc consoles
    "virtio-blk": ["virtio_blk"],           # disks (/dev/vdX): the image's layers
    "erofs": ["crc32c_generic", "erofs"],   # the read-only filesystem on each layer's disk;
                                            # erofs needs libcrc32c, which asks the crypto API
                                            # for "crc32c" as it loads: a soft dependency
                                            # (`softdep=pre: crc32c`) modules.dep does not list
    "overlayfs": ["overlay"],               # stacks the layers' filesystems, as in a container
    "virtio-9p": ["9pnet_virtio", "9p"],    # shared folders (-v): the 9P protocol over virtio,
                                            # and the filesystem that speaks it
    "virtio-net": ["virtio_net"],           # a network card: eth0 in the guest
    "acpi-button": ["button", "evdev"],     # the ACPI power button (PNP0C0C), as an input
                                            # device the guest init reads: /dev/input/eventN
}


@dataclass(frozen=True)
class Module:
    name: str           # as the kernel knows it: "virtio_console"
    path: Path          # the file on the host, as the package ships it (.ko or .ko.xz)

    def contents(self) -> bytes:
        """The module as busybox insmod loads it: uncompressed (a package may ship .ko.xz)."""
        data = self.path.read_bytes()
        return lzma.decompress(data) if self.path.name.endswith(".ko.xz") else data


def module_name(path: str) -> str:
    """`kernel/drivers/char/hw_random/virtio-rng.ko.xz` -> `virtio_rng` (the kernel's own
    spelling: a file name's dashes are underscores in the module's name)."""
    return Path(path).name.split(".ko")[0].replace("-", "_")


def read_modules_dep(directory: Path) -> dict[str, list[str]]:
    """modules.dep as {module path: [the paths it needs]}, paths relative to `directory`."""
    lines = (directory / "modules.dep").read_text().splitlines()
    dep = {}
    for line in lines:
        module, _, needs = line.partition(":")
        dep[module] = needs.split()
    return dep


def load_order(wanted: list[str], directory: Path) -> list[Module]:
    """The modules named in `wanted` and all they need, each before the modules that need it.

    In modules.dep a module's line lists what it needs so that loading from the last to the
    first works (as modprobe does). Modules built into the kernel (modules.builtin) need no
    file and are skipped.
    """
    dep = read_modules_dep(directory)
    by_name = {module_name(path): path for path in dep}
    builtin_file = directory / "modules.builtin"
    builtin = {module_name(path) for path in builtin_file.read_text().split()} \
        if builtin_file.exists() else set()
    order: list[str] = []
    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise RuntimeFailure(f"the guest kernel has no module {name} ({directory}/"
                                 "modules.dep does not list it): use a kernel that has it, such "
                                 "as Debian's (`minivm kernel fetch`)")
        for path in [*reversed(dep[by_name[name]]), by_name[name]]:
            if path not in order:
                order.append(path)
    return [Module(module_name(path), directory / path) for path in order]


def for_hardware(needs: list[str], directory: Path) -> list[Module]:
    """The modules the guest loads for these pieces of hardware (keys of DRIVERS), in order;
    one clear failure if a file is missing from a fetched kernel's cache."""
    modules = load_order([name for need in needs for name in DRIVERS[need]], directory)
    missing = [module.name for module in modules if not module.path.is_file()]
    if missing:
        raise RuntimeFailure(f"the guest kernel's module {missing[0]} is not in {directory}: run "
                             "`minivm kernel fetch` again to unpack it")
    return modules


# -- writing modules.dep, which Debian's package leaves to depmod in its postinst ----------------
def depends(module: bytes) -> list[str]:
    """The `depends=` of a module's .modinfo section: the names of the modules it needs.

    A .ko is an ELF relocatable file (elf(5)): the header says where the section headers are
    (e_shoff), how many (e_shnum), and which section holds their names (e_shstrndx); .modinfo
    holds NUL-separated `key=value` strings, which `modinfo` prints.
    """
    if not module.startswith(b"\x7fELF\x02"):
        raise ValueError("not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", module, 0x28)
    entsize, count, names_index = struct.unpack_from("<HHH", module, 0x3a)

    def section(index: int) -> tuple[int, int, int]:        # (name offset, file offset, size)
        header = shoff + index * entsize
        name, = struct.unpack_from("<I", module, header)
        offset, size = struct.unpack_from("<QQ", module, header + 0x18)
        return name, offset, size
    _, names, _ = section(names_index)
    for index in range(count):
        name, offset, size = section(index)
        if module[names + name:module.index(b"\0", names + name)] == b".modinfo":
            for entry in module[offset:offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [name for name in entry[8:].decode().split(",") if name]
    return []


def write_modules_dep(directory: Path) -> None:
    """Write `directory`/modules.dep for every module under it, as depmod would: each line lists
    everything the module needs, directly or not, the ones needed first at the end."""
    paths = {module_name(str(path)): str(path.relative_to(directory))
             for path in sorted(directory.rglob("*.ko*"))}
    direct = {name: depends(Module(name, directory / path).contents())
              for name, path in paths.items()}

    def load_first(name: str, order: list[str]) -> list[str]:
        """What `name` needs, directly or not, each after the modules it needs itself."""
        for other in direct[name]:
            if other in paths and other not in order:
                load_first(other, order)
                order.append(other)
        return order
    lines = [f"{path}: " + " ".join(paths[other] for other in reversed(load_first(name, [])))
             for name, path in paths.items()]
    (directory / "modules.dep").write_text("".join(line.rstrip() + "\n" for line in lines))
