"""The guest's kernel: find one, and prepare it so that QEMU can start it without decompressing.

A container shares the host's kernel; a VM brings its own. Distributions ship their kernel as a
*bzImage* (`/boot/vmlinuz-*`): a small real-mode setup program, a decompressor, and the real kernel
compressed inside it. On real hardware the decompressor is cheap. Under TCG (QEMU emulating every
instruction in software) it costs seconds, so minivm takes the compressed payload out once, here
in Python, and caches the plain ELF `vmlinux`. QEMU boots such an ELF through PVH: it jumps
straight to the 32-bit entry point the kernel advertises in an ELF note, with no firmware and no
decompressor in between.

Where a kernel comes from, in order: `--kernel`, `$MINIVM_KERNEL`, minivm's cache (filled by
`minivm kernel fetch` from Debian's `linux-image-amd64` package), `/boot/vmlinuz-$(uname -r)`.
"""
import bz2
import hashlib
import lzma
import mmap
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from minirun.errors import RuntimeFailure
from minivm import modules
from minivm.cache import cache_dir, mark_used, scratch_directory, write_atomically

FETCH_HINT = "get one with `minivm kernel fetch` (Debian's linux-image-amd64) or pass --kernel PATH"

ELF_MAGIC = b"\x7fELF"


# -- finding a kernel --------------------------------------------------------------------------
def find_kernel(flag: str | None = None) -> Path:
    """The kernel image to boot (a bzImage or an ELF vmlinux), or one clear failure."""
    for source, value in (("--kernel", flag), ("$MINIVM_KERNEL", os.environ.get("MINIVM_KERNEL"))):
        if value:
            if not Path(value).is_file():
                raise RuntimeFailure(f"{source} {value}: no such file; {FETCH_HINT}")
            return Path(value)
    cached = sorted(cache_dir().glob("kernels/vmlinuz-*"), key=_version_key)
    if cached:
        return cached[-1]
    own = Path(f"/boot/vmlinuz-{os.uname().release}")
    if os.access(own, os.R_OK):
        return own
    raise RuntimeFailure(f"no guest kernel found (looked in {cache_dir()}/kernels and /boot); "
                         f"{FETCH_HINT}")


def _version_key(path: Path) -> list:
    """'vmlinuz-6.1.0-10-amd64' sorts before 'vmlinuz-6.1.0-9-amd64' as text; compare numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# -- bzImage -> vmlinux ------------------------------------------------------------------------
def bootable_vmlinux(kernel: Path) -> Path:
    """An uncompressed ELF kernel for `kernel`: itself if it is one, else extracted and cached."""
    with kernel.open("rb") as file:
        if file.read(4) == ELF_MAGIC:
            return kernel
    # Keyed by where the bzImage is and its size and mtime: a changed kernel gets a new entry,
    # and an unchanged one costs a stat instead of hashing 8 MB on every boot.
    info = kernel.resolve().stat()
    key = hashlib.sha256(f"{kernel.resolve()}:{info.st_size}:{info.st_mtime_ns}".encode())
    target = cache_dir() / "vmlinux" / f"{key.hexdigest()[:32]}.elf"
    if target.is_file():
        mark_used(target)
    else:
        write_atomically(target, extract_vmlinux(kernel.read_bytes(), str(kernel)))
    return target


def extract_vmlinux(bzimage: bytes, name: str = "kernel") -> bytes:
    """Decompress the ELF kernel that a bzImage carries.

    The x86 boot protocol (Documentation/arch/x86/boot.rst) puts a header in the first sector:
    `setup_sects` at 0x1f1 says how many 512-byte sectors of real-mode setup code come first, the
    magic "HdrS" at 0x202 marks the header, and since protocol 2.08 `payload_offset` (0x248) and
    `payload_length` (0x24c) locate the compressed kernel inside the protected-mode part.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise RuntimeFailure(f"{name} is neither an ELF vmlinux nor an x86 bzImage (no 'HdrS' "
                             f"boot header); {FETCH_HINT}")
    setup_sects = bzimage[0x1f1] or 4          # 0 means 4, for ancient kernels (boot.rst)
    version, = struct.unpack_from("<H", bzimage, 0x206)
    if version < 0x208:
        raise RuntimeFailure(f"{name} uses boot protocol {version >> 8}.{version & 0xff}, too old "
                             "to locate its payload (2.08 or later needed)")
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    vmlinux = decompress(bzimage[start:start + length], name)
    if not vmlinux.startswith(ELF_MAGIC):
        raise RuntimeFailure(f"the payload of {name} did not decompress to an ELF kernel")
    return vmlinux


def decompress(payload: bytes, name: str = "kernel") -> bytes:
    """Decompress one stream, choosing the format by the magic bytes that start it.

    The kernel's configuration picks the compressor (CONFIG_KERNEL_XZ in Debian's); bytes after
    the stream are ignored (the build appends the uncompressed size to some formats).
    """
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload)
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    if payload.startswith(b"BZh"):
        return bz2.BZ2Decompressor().decompress(payload)
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        # Python 3.11 has no zstd module; the zstd tool is installed by setup.sh.
        if not shutil.which("zstd"):
            raise RuntimeFailure(f"{name} is compressed with zstd: `apt-get install zstd`")
        # The tool refuses trailing bytes: drop the 4-byte size the kernel's build appends.
        result = subprocess.run(["zstd", "-dcq"], input=payload[:-4], capture_output=True)
        if result.returncode != 0:
            raise RuntimeFailure(f"{name}: zstd could not decompress the kernel: "
                                 f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout
    raise RuntimeFailure(f"{name}: unsupported kernel compression (magic {payload[:6].hex()}); "
                         "use a kernel compressed with gzip, xz, lzma, bzip2 or zstd, or a vmlinux")


# -- the modules that match a kernel -----------------------------------------------------------
def release(vmlinux: Path) -> str:
    """The kernel's release ("6.1.0-57-amd64"), from the banner it prints first at boot,
    `Linux version <release> (<builder>) ...`, a string in its read-only data."""
    with vmlinux.open("rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as data:
        found = re.search(rb"Linux version (\S+) \(", data)
        version = found.group(1).decode() if found else None
    if not version:
        raise RuntimeFailure(f"{vmlinux} has no 'Linux version' banner to tell its release; "
                             f"{FETCH_HINT}")
    return version


def modules_directory(vmlinux: Path) -> Path:
    """Where the modules of this kernel are: minivm's cache for a fetched kernel, else the
    host's /lib/modules for a kernel installed on the host (with the modules.dep depmod wrote)."""
    version = release(vmlinux)
    fetched = cache_dir() / "kernels" / f"modules-{version}"
    for directory in (fetched, Path("/lib/modules", version)):
        if (directory / "modules.dep").is_file():
            return directory
    raise RuntimeFailure(f"no kernel modules for the guest kernel {version} (looked in "
                         f"{cache_dir()}/kernels and /lib/modules): its virtio drivers are "
                         f"modules; {FETCH_HINT}")


# -- minivm kernel fetch -----------------------------------------------------------------------
def fetch() -> Path:
    """Put Debian's current kernel into the cache, with the modules minivm's hardware needs;
    quick if they are there already.

    `linux-image-amd64` is a metapackage that depends on the real one, e.g.
    `linux-image-6.1.0-56-amd64`; `apt-get download` fetches that .deb without installing it
    (nothing changes in the host's /boot or /lib/modules), and it is unpacked into a scratch
    directory of the cache. Kept: the bzImage, and lib/modules/<release>/ cut down to the
    modules in minivm.modules.DRIVERS and what they need, with the modules.dep that the package
    leaves to its postinst's depmod, written here from the modules themselves.
    """
    package = _debian_kernel_package()
    version = package.removeprefix("linux-image-")
    target = cache_dir() / "kernels" / f"vmlinuz-{version}"
    modules_dir = target.with_name(f"modules-{version}")
    if not target.is_file() or not _has_modules(modules_dir):
        with scratch_directory(target.parent) as scratch:
            download = subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
                                       package], cwd=scratch, capture_output=True, text=True)
            if download.returncode != 0:
                raise RuntimeFailure(f"`apt-get download {package}` failed: "
                                     f"{_last_line(download.stderr)}; run `apt-get update` as "
                                     "root and try again")
            debs = list(scratch.glob("*.deb"))
            if len(debs) != 1:
                raise RuntimeFailure(f"`apt-get download {package}` left {len(debs)} .deb files "
                                     "instead of one; run it by hand in an empty directory to "
                                     "see why, or pass --kernel PATH")
            unpacked = scratch / "unpacked"
            result = subprocess.run(["dpkg-deb", "--extract", str(debs[0]), str(unpacked)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeFailure(f"{debs[0].name} is not a package dpkg can read "
                                     f"({_last_line(result.stderr)}): the download may be "
                                     "damaged; run `minivm kernel fetch` again")
            bzimage = unpacked / "boot" / f"vmlinuz-{version}"
            if not bzimage.is_file() or bzimage.is_symlink():
                raise RuntimeFailure(f"{debs[0].name} has no file ./boot/vmlinuz-{version} to "
                                     "boot: this kernel package is laid out differently; pass "
                                     "--kernel PATH (a bzImage or a vmlinux)")
            _keep_modules(unpacked / "lib" / "modules" / version, modules_dir, scratch)
            if not target.is_file():
                write_atomically(target, bzimage.read_bytes())
    bootable_vmlinux(target)
    return target


def _has_modules(directory: Path) -> bool:
    try:
        modules.for_hardware(list(modules.DRIVERS), directory)
        return True
    except (OSError, RuntimeFailure):
        return False


def _keep_modules(package_modules: Path, target: Path, scratch: Path) -> None:
    """From a package's lib/modules/<release>, keep in `target` only what DRIVERS needs."""
    if not package_modules.is_dir():
        raise RuntimeFailure(f"the kernel package has no {package_modules.name} modules "
                             "directory: pass --kernel PATH and install its modules")
    modules.write_modules_dep(package_modules)
    kept = scratch / "modules"
    for name in ("modules.dep", "modules.builtin"):
        if (package_modules / name).is_file():
            (kept / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package_modules / name, kept / name)
    for module in modules.load_order([name for names in modules.DRIVERS.values()
                                      for name in names], package_modules):
        copy = kept / module.path.relative_to(package_modules)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module.path, copy)
    if target.exists():                 # an older cut, without a module DRIVERS now names
        shutil.rmtree(target)
    kept.rename(target)


def _debian_kernel_package() -> str:
    if not shutil.which("apt-cache"):
        raise RuntimeFailure("`minivm kernel fetch` needs Debian's apt; on another system pass "
                             "--kernel PATH or set $MINIVM_KERNEL to a bzImage or vmlinux")
    depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True,
                             text=True).stdout
    found = re.search(r"Depends: (linux-image-\S+)", depends)
    if not found:
        raise RuntimeFailure("apt knows no linux-image-amd64 package: run `apt-get update` as "
                             "root and try again")
    return found.group(1)


def _last_line(text: str) -> str:
    """The last line of a tool's error output: usually the one that says what went wrong."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"
