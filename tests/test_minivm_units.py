"""minivm's logic without booting anything: accelerator choice, bzImage unpacking, cpio, layers,
the supervision of a machine (with a stand-in for QEMU)."""
import asyncio
import bz2
import gzip
import json
import lzma
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from minirun import state
from minirun.errors import RuntimeFailure
from minivm import accel, cache, disks, guest_user, initramfs, kernel, modules
from minivm.hardware import Hardware, host_tsc_rate
from minivm.machine import Machine
from minivm.streams import AppStreams

import image_helpers

# /proc/cpuinfo of three kinds of host, cut down to the lines that matter.
INTEL_VMX = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu de pse tsc msr vmx sse2\n"
AMD_SVM = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu de pse tsc msr svm sse2\n"
NO_VIRT = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2596.128\n"
           "flags\t\t: fpu tsc msr sse2 hypervisor\n")
MODULES = "{} 1327104 0 - Live 0x0000000000000000\nkvm 1142784 1 {}, Live 0x0000000000000000\n"


def facts(cpuinfo, module, usable=True):
    return accel.HostFacts(cpuinfo=cpuinfo, modules=MODULES.format(module, module),
                           kvm_device_usable=usable)


@pytest.mark.parametrize("host, expected", [
    (facts(INTEL_VMX, "kvm_intel"), "kvm"),
    (facts(AMD_SVM, "kvm_amd"), "kvm"),
    (facts(NO_VIRT, "kvm_pvm"), "tcg"),                 # this project's host: /dev/kvm is PVM
    (facts(INTEL_VMX, "kvm_pvm"), "tcg"),               # vmx, but not the module that uses it
    (facts(AMD_SVM, "kvm_intel"), "tcg"),
    (facts(INTEL_VMX, "kvm_intel", usable=False), "tcg"),
])
def test_auto_takes_kvm_only_with_hardware_virtualisation(host, expected):
    assert accel.choose("auto", host).name == expected


def test_explicit_choices():
    assert accel.choose("tcg", facts(INTEL_VMX, "kvm_intel")).name == "tcg"
    assert accel.choose("kvm", facts(NO_VIRT, "kvm_pvm")).name == "kvm"
    with pytest.raises(RuntimeFailure, match="/dev/kvm"):
        accel.choose("kvm", facts(INTEL_VMX, "kvm_intel", usable=False))


def test_this_host_gets_tcg():
    choice = accel.choose("auto", accel.HostFacts.read())
    assert choice.name == "tcg", choice.reason


# A host that scales its clock: this core runs at 1.2 GHz just now, its TSC at 2.596 GHz.
SCALED = ("processor\t: 0\ncpu MHz\t\t: 1200.000\nbogomips\t: 5192.25\n"
          "processor\t: 1\ncpu MHz\t\t: 3400.000\nbogomips\t: 5192.25\n")


def test_host_tsc_rate_comes_from_bogomips_and_explain_says_so():
    rate = host_tsc_rate(SCALED)
    assert rate.khz == 2596125                  # not the 1200000 of `cpu MHz`
    hardware = Hardware(memory=0, vcpus=1, accelerator=accel.Accelerator("tcg", ""),
                        kernel=None, name="vm", host_tsc=rate)
    why = dict(hardware.kernel_arguments())["tsc_early_khz=2596125"]
    assert "bogomips 5192.25" in why


def test_host_tsc_rate_falls_back_to_cpu_mhz():
    rate = host_tsc_rate(NO_VIRT)               # no bogomips line
    assert rate.khz == 2596128 and "cpu MHz 2596.128" in rate.source
    assert host_tsc_rate(INTEL_VMX) is None


# -- bzImage -> vmlinux ------------------------------------------------------------------------
FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


def fake_bzimage(compressed: bytes, setup_sects: int = 3) -> bytes:
    """A bzImage as the boot protocol lays it out: setup sectors, then the payload inside the
    protected-mode part at `payload_offset`, followed by bytes that are not part of it. Like the
    kernel's build, the payload is the compressed kernel and its uncompressed size (4 bytes)."""
    payload = compressed + struct.pack("<I", len(FAKE_ELF))
    image = bytearray((setup_sects + 1) * 512)
    image[0x1f1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20f)
    offset = 0x3c0
    struct.pack_into("<II", image, 0x248, offset, len(payload))
    decompressor = b"\x90" * offset
    return bytes(image) + decompressor + payload + b"\x12\x34\x56\x78trailer"


@pytest.mark.parametrize("compress", [
    lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    lambda data: gzip.compress(data),
    lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
    lambda data: bz2.compress(data),
    lambda data: subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                                check=True).stdout,
], ids=["xz", "gzip", "lzma", "bzip2", "zstd"])
def test_extract_vmlinux_from_bzimage(compress):
    assert kernel.extract_vmlinux(fake_bzimage(compress(FAKE_ELF))) == FAKE_ELF


def test_extract_vmlinux_rejects_what_is_not_a_kernel():
    with pytest.raises(RuntimeFailure, match="HdrS"):
        kernel.extract_vmlinux(b"#!/bin/sh\n" * 200)
    with pytest.raises(RuntimeFailure, match="ELF"):
        kernel.extract_vmlinux(fake_bzimage(gzip.compress(b"not an elf file")))


def test_bootable_vmlinux_caches_the_extraction(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVM_CACHE", str(tmp_path / "cache"))
    bzimage = tmp_path / "vmlinuz-test"
    bzimage.write_bytes(fake_bzimage(lzma.compress(FAKE_ELF)))
    vmlinux = kernel.bootable_vmlinux(bzimage)
    assert vmlinux.read_bytes() == FAKE_ELF
    assert kernel.bootable_vmlinux(bzimage) == vmlinux
    assert kernel.bootable_vmlinux(vmlinux) == vmlinux          # an ELF is used as it is


# -- minivm kernel fetch, with stand-ins for apt --------------------------------------------------
RELEASE = "9.9.9-test-amd64"


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """`apt-cache` and `apt-get` on PATH, for a kernel package RELEASE: `apt-get download` copies
    whatever the test put into the directory returned; dpkg-deb and tarfile are the real ones."""
    bin_dir, downloads = tmp_path / "bin", tmp_path / "downloads"
    bin_dir.mkdir()
    downloads.mkdir()
    for tool, script in [("apt-cache", f"echo '  Depends: linux-image-{RELEASE}'"),
                         ("apt-get", f"cp {downloads}/* . 2>/dev/null; exit 0")]:
        (bin_dir / tool).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("MINIVM_CACHE", str(tmp_path / "cache"))
    return downloads


def build_deb(path, files: dict[str, bytes | None]) -> None:
    """A real .deb holding `files` (None: a directory of that name)."""
    root = path.with_suffix(".tree")
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: linux-image-{RELEASE}\nVersion: 1\n"
                                         "Architecture: amd64\nMaintainer: t <t@example.org>\n"
                                         "Description: a test\n")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            (root / name).mkdir()
        else:
            (root / name).write_bytes(data)
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(path)], check=True,
                   capture_output=True)


def fake_module(tmp_path, depends: str) -> bytes:
    """A real ELF object file with a .modinfo section, as the kernel's build writes one."""
    source = tmp_path / "module.c"
    source.write_text('const char modinfo[] __attribute__((section(".modinfo"))) = '
                      f'"license=GPL\\0depends={depends}\\0vermagic={RELEASE}";\n')
    subprocess.run(["cc", "-c", "-o", str(tmp_path / "module.o"), str(source)], check=True)
    return (tmp_path / "module.o").read_bytes()


# A kernel package's modules: what DRIVERS needs (one of them compressed, as newer Debian
# packages ship them) and a module nothing needs.
PACKAGE_MODULES = {
    "kernel/drivers/virtio/virtio_ring.ko": "",
    "kernel/drivers/virtio/virtio.ko": "virtio_ring",
    "kernel/drivers/virtio/virtio_mmio.ko": "virtio,virtio_ring",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko": "",
    "kernel/drivers/virtio/virtio_pci.ko": "virtio_pci_modern_dev,virtio,virtio_ring",
    "kernel/drivers/char/virtio_console.ko.xz": "virtio,virtio_ring",
    "kernel/drivers/block/virtio_blk.ko": "virtio,virtio_ring",
    "kernel/crypto/crc32c_generic.ko": "",
    "kernel/lib/libcrc32c.ko": "",
    "kernel/fs/erofs/erofs.ko": "libcrc32c",
    "kernel/fs/overlayfs/overlay.ko": "",
    "kernel/net/9p/9pnet.ko": "",
    "kernel/net/9p/9pnet_virtio.ko": "9pnet,virtio,virtio_ring",
    "kernel/fs/9p/9p.ko": "9pnet",
    "kernel/net/core/failover.ko": "",
    "kernel/drivers/net/net_failover.ko": "failover",
    "kernel/drivers/net/virtio_net.ko": "net_failover,virtio,virtio_ring",
    "kernel/drivers/acpi/button.ko": "",
    "kernel/drivers/input/evdev.ko": "",
    "kernel/fs/unrelated.ko": "virtio",
}


def package_with_modules(tmp_path) -> dict[str, bytes]:
    files = {f"boot/vmlinuz-{RELEASE}": fake_bzimage(gzip.compress(FAKE_ELF)),
             f"lib/modules/{RELEASE}/modules.builtin": b"kernel/drivers/tty/serial/8250.ko\n"}
    for path, depends in PACKAGE_MODULES.items():
        module = fake_module(tmp_path, depends)
        files[f"lib/modules/{RELEASE}/{path}"] = lzma.compress(module) if path.endswith(".xz") \
            else module
    return files


def test_fetch_takes_the_kernel_and_the_modules_out_of_the_package(fake_apt, tmp_path):
    build_deb(fake_apt / "kernel.deb", package_with_modules(tmp_path))
    fetched = kernel.fetch()
    assert fetched.name == f"vmlinuz-{RELEASE}"
    assert kernel.bootable_vmlinux(fetched).read_bytes() == FAKE_ELF
    kept = fetched.with_name(f"modules-{RELEASE}")
    dep = modules.read_modules_dep(kept)
    # Each line lists all a module needs, directly or not, so that loading from the end to the
    # start works: whatever a listed module needs comes after it.
    assert sorted(dep["kernel/drivers/virtio/virtio_pci.ko"]) == [
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_ring.ko"]
    assert dep["kernel/fs/unrelated.ko"] == ["kernel/drivers/virtio/virtio.ko",
                                             "kernel/drivers/virtio/virtio_ring.ko"]
    for line in dep.values():
        for position, needed in enumerate(line):
            assert set(dep[needed]) <= set(line[position + 1:]), line
    assert not (kept / "kernel/fs/unrelated.ko").exists()     # only what DRIVERS needs is kept
    order = [module.name for module in modules.for_hardware(["virtio-mmio", "virtio-serial"], kept)]
    assert order == ["virtio_ring", "virtio", "virtio_mmio", "virtio_console"]
    console = modules.for_hardware(["virtio-serial"], kept)[-1]
    assert console.contents().startswith(b"\x7fELF")          # .ko.xz, unpacked for insmod
    assert kernel.fetch() == fetched                            # the second time: no download


@pytest.mark.parametrize("downloads, message", [
    ({}, "left 0 .deb files"),
    ({"a.deb": b"", "b.deb": b""}, "left 2 .deb files"),
    ({"kernel.deb": b"!<arch>\nnot really a package"}, "not a package dpkg can read"),
    ({"kernel.deb": {"boot/config-9.9.9": b"no kernel here"}}, f"no file ./boot/vmlinuz-{RELEASE}"),
    ({"kernel.deb": {f"boot/vmlinuz-{RELEASE}": None}}, f"no file ./boot/vmlinuz-{RELEASE}"),
    ({"kernel.deb": {f"boot/vmlinuz-{RELEASE}": b"x"}}, "no 9.9.9-test-amd64 modules directory"),
])
def test_fetch_fails_in_one_line_that_says_what_to_do(fake_apt, downloads, message):
    for name, content in downloads.items():
        if isinstance(content, dict):
            build_deb(fake_apt / name, content)
        else:
            (fake_apt / name).write_bytes(content)
    with pytest.raises(RuntimeFailure, match=message) as failure:
        kernel.fetch()
    assert "\n" not in str(failure.value) and ("again" in str(failure.value)
                                               or "--kernel" in str(failure.value))


# -- cpio and the merged layers ----------------------------------------------------------------
def test_cpio_archive_unpacks_with_another_implementation(tmp_path):
    archive = initramfs.Cpio()
    archive.add_directory("etc")
    archive.add_file("etc/hostname", b"guest\n")
    archive.add_file("bin/odd-size", b"12345", 0o755)
    archive.add("bin/link", stat.S_IFLNK | 0o777, b"odd-size")
    data = archive.finish()
    assert len(data) % 4 == 0 and data.startswith(b"070701")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["busybox", "cpio", "-i", "-d"], input=data, cwd=out, check=True,
                   capture_output=True)
    assert (out / "etc/hostname").read_bytes() == b"guest\n"
    assert (out / "bin/odd-size").read_bytes() == b"12345"
    assert stat.S_IMODE((out / "bin/odd-size").stat().st_mode) == 0o755
    assert os.readlink(out / "bin/link") == "odd-size"


def overlay_layers(tmp_path):
    """Two layers where the upper one deletes a file and a tree, makes a directory opaque,
    and turns a directory into a file."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for path, text in [("a/deleted", "x"), ("a/kept", "lower"), ("b/hidden", "x"),
                       ("c/replaced", "lower"), ("d/file", "lower"), ("e/sub/deep", "x")]:
        (lower / path).parent.mkdir(parents=True, exist_ok=True)
        (lower / path).write_text(text)
    for path, text in [("b/new", "upper"), ("c/replaced", "upper"), ("d", "a file now")]:
        (upper / path).parent.mkdir(parents=True, exist_ok=True)
        (upper / path).write_text(text)
    (upper / "a").mkdir()
    os.mknod(upper / "a/deleted", stat.S_IFCHR | 0o600, os.makedev(0, 0))    # a whiteout
    os.mknod(upper / "e", stat.S_IFCHR | 0o600, os.makedev(0, 0))            # deletes a tree
    os.setxattr(upper / "b", guest_user.OPAQUE_XATTR, b"y")
    return [lower, upper]


def test_lookup_of_one_file_agrees_with_overlayfs(tmp_path):
    layers = overlay_layers(tmp_path)
    merged = image_helpers.merged_view(layers, tmp_path)     # the kernel's own merge
    for path in ["a/deleted", "a/kept", "b/hidden", "b/new", "c/replaced", "d", "d/file",
                 "e/sub/deep", "nowhere/at/all"]:
        found = guest_user.lookup(layers, path)
        if merged.get(path, [None])[0] == "file":
            assert found and image_helpers.snapshot(found.parent)[found.name] == merged[path]
        else:
            assert found is None, path


def test_lookup_never_follows_a_link_out_of_the_image(tmp_path):
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "etc").symlink_to("/etc")                  # the host's /etc/passwd is behind it
    assert guest_user.lookup([layer], "etc/passwd") is None
    (layer / "etc").unlink()
    (layer / "etc").mkdir()
    (layer / "etc/passwd").symlink_to("/etc/passwd")
    assert guest_user.lookup([layer], "etc/passwd") is None


def test_run_settings_survive_any_characters(tmp_path):
    settings = initramfs.RunSettings(
        command=["printf", "%s|", "two words", "it's", '$HOME "quoted"', "new\nline"],
        environment={"GREETING": "it's a $test", "EMPTY": ""}, workdir="/", hostname="vm")
    script = tmp_path / "run.sh"
    script.write_text(settings.shell())
    result = subprocess.run(["busybox", "sh", "-c", f'. {script}; eval "exec env -i $environment '
                             '\\"\\$@\\""; '], capture_output=True, text=True, check=True)
    assert result.stdout == "two words|it's|$HOME \"quoted\"|new\nline|"
    result = subprocess.run(["busybox", "sh", "-c", f'. {script}; eval "exec env -i $environment '
                             'env"'], capture_output=True, text=True, check=True)
    assert sorted(result.stdout.splitlines()) == ["EMPTY=", "GREETING=it's a $test"]


# -- following a machine, with a stand-in for QEMU ---------------------------------------------
class SlowToPowerOff:
    """A QEMU process whose guest takes 0.2 s to power off, far less than the watchdog's 30 s."""
    returncode = None

    async def wait(self) -> int:
        await asyncio.sleep(0.2)
        self.returncode = 0
        return 0


def test_an_app_that_ends_just_before_timeout_keeps_its_status_and_powers_off(capsys):
    """--timeout bounds the app, not the power-off after it: no "did not power off" message."""
    async def supervise() -> int:
        machine = Machine(hardware=None, initramfs=b"")
        machine.process = SlowToPowerOff()
        machine.console_reader = machine._in_background(asyncio.sleep(0))
        machine._parse_console_line("@minivm: init running")
        machine._parse_console_line("@minivm: exit 3")
        stop_request = asyncio.get_running_loop().create_future()
        # The app has ended within --timeout 0.05; its deadline passes while QEMU powers off.
        return await machine._supervise(time.monotonic(), 0.05, stop_request)
    assert asyncio.run(supervise()) == 3
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("line", [
    "@minivm: exit [    1.234567] random: crng init done",      # a printk in the middle
    "@minivm: exit ",
    "@minivm: exit 3x",
    "@minivm: init runn",
])
def test_a_garbled_report_is_ignored_and_the_reader_goes_on(line):
    machine = Machine(hardware=None, initramfs=b"")
    machine._parse_console_line(line)
    assert machine.console.exit_status is None and not machine.console.app_finished.is_set()
    machine._parse_console_line("@minivm: exit 0")
    assert machine.console.exit_status == 0 and machine.console.app_finished.is_set()


# -- the cache: what killed writers leave, and what is not used any more -------------------------
def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVM_CACHE", str(tmp_path))
    (tmp_path / "vmlinux").mkdir()
    # A writer killed half-way: it made its temporary, then SIGKILL.
    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, sys; from minirun import state; "
        "fd = os.open(os.path.join(sys.argv[1], state.temporary_name('entry.elf')), os.O_WRONLY "
        "| os.O_CREAT); os.write(fd, b'half'); os.kill(os.getpid(), signal.SIGKILL)"),
        str(tmp_path / "vmlinux")])
    assert writer.wait() == -9
    left = list((tmp_path / "vmlinux").glob(".entry.elf.*"))
    assert len(left) == 1
    # A writer still at work (this process) keeps its temporary.
    working = tmp_path / "vmlinux" / state.temporary_name("other.elf")
    working.write_bytes(b"half")
    cache.write_atomically(tmp_path / "vmlinux" / "next.elf", b"data")
    assert sorted(path.name for path in (tmp_path / "vmlinux").iterdir()) == \
        sorted([working.name, "next.elf"])


def test_a_reused_pid_does_not_keep_a_dead_writers_temporary(tmp_path):
    # Our own PID, with a start time that is not ours: the writer that had this PID is gone.
    stale = tmp_path / f".entry.cpio.{os.getpid()}-1.abcd1234"
    stale.write_bytes(b"half")
    assert state.remove_abandoned_temporaries(tmp_path) == [stale]


def test_prune_removes_what_was_not_used_lately_and_cache_lists_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVM_CACHE", str(tmp_path))
    old, recent = tmp_path / "disks/old.erofs", tmp_path / "disks/recent.erofs"
    kernel_file = tmp_path / "kernels/vmlinuz-1"
    for path, size in ((old, 3_000_000), (recent, 1_000_000), (kernel_file, 2_000_000)):
        cache.write_atomically(path, b"x" * size)
    ten_days_ago = time.time() - 10 * 24 * 3600
    for path in (old, kernel_file):
        os.utime(path, (ten_days_ago, ten_days_ago))
    cache.mark_used(recent)                                 # what a boot does with its entries
    env = {**os.environ, "MINIVM_CACHE": str(tmp_path)}
    listing = subprocess.run([sys.executable, "-m", "minivm", "cache"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "3.0 MB" in listing and "disks/old.erofs" in listing
    assert listing.splitlines()[-1].split()[:2] == ["6.0", "MB"]
    pruned = subprocess.run([sys.executable, "-m", "minivm", "cache", "prune"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert pruned == "removed disks/old.erofs (3.0 MB)\nfreed 3.0 MB\n"
    assert recent.exists() and kernel_file.exists()         # a fetched kernel needs a download


# -- the app's output on the host: delivered in full, at the reader's pace -----------------------
@pytest.mark.parametrize("sent, reader_waits, delivered", [
    (b"x" * 300_000, 0.0, True),
    (b"x" * 300_000, 0.5, True),    # a reader slower than the patience: still no fault
    (b"x" * 1000, 0.0, False),      # the guest said 2000 bytes, 1000 came, then nothing
])
def test_output_is_waited_for_until_the_last_byte_the_guest_sent(sent, reader_waits, delivered):
    ours = {name: socket.socketpair() for name in ("stdin", "stdout", "stderr")}
    read_end, write_end = os.pipe()

    async def deliver() -> tuple[bool, bytes]:
        streams = AppStreams({name: pair[0] for name, pair in ours.items()},
                             stdio=(os.open(os.devnull, os.O_RDONLY), write_end, write_end))
        streams.start()
        loop = asyncio.get_running_loop()
        received = loop.run_in_executor(None, read_all, reader_waits)
        sending = loop.run_in_executor(None, ours["stdout"][1].sendall, sent)  # QEMU's part
        result = await streams.delivered({"stdout": max(len(sent), 2000), "stderr": 0},
                                         patience=0.2)
        await sending
        os.close(write_end)
        ours["stdout"][1].close()                           # QEMU is gone
        return result, await received

    def read_all(wait: float) -> bytes:
        time.sleep(wait)
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
        return data
    result, output = asyncio.run(deliver())
    assert result is delivered and output == sent


def test_the_hardware_names_the_drivers_it_needs_and_builtin_ones_load_nothing(tmp_path):
    tcg = accel.Accelerator("tcg", "")
    layer_disks = ["virtio-blk", "erofs", "overlayfs"]
    assert Hardware(memory=0, vcpus=1, accelerator=tcg, kernel=None, name="vm").needs() == \
        ["virtio-mmio", "virtio-serial", *layer_disks]
    assert Hardware(memory=0, vcpus=1, accelerator=tcg, kernel=None, name="vm",
                    interactive=True).needs() == ["virtio-mmio", *layer_disks]  # -it: ttyS1, a UART
    # A kernel that has virtio_mmio built in lists it in modules.builtin: nothing to load for it.
    (tmp_path / "modules.dep").write_text("kernel/virtio_console.ko: kernel/virtio.ko\n"
                                          "kernel/virtio.ko:\n")
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_mmio.ko\n")
    assert [module.name for module in modules.load_order(["virtio_mmio", "virtio_console"],
                                                         tmp_path)] == ["virtio", "virtio_console"]
    with pytest.raises(RuntimeFailure, match="no module virtio_pci"):
        modules.load_order(["virtio_pci"], tmp_path)
    with pytest.raises(RuntimeFailure, match="module virtio is not in .*minivm kernel fetch"):
        modules.for_hardware(["virtio-serial"], tmp_path)     # listed, but no file: re-fetch


# -- the layers as disks -----------------------------------------------------------------------
def test_the_bottom_layers_share_a_disk_when_the_slots_run_out():
    layers = [f"layer{number}" for number in range(5)]
    assert disks.stack(layers, 24) == [[layer] for layer in layers]
    assert disks.stack(layers, 5) == [[layer] for layer in layers]
    assert disks.stack(layers, 3) == [layers[:3], [layers[3]], [layers[4]]]
    assert disks.stack(layers, 1) == [layers]
    with pytest.raises(RuntimeFailure, match="no device slot left"):
        disks.for_image(SimpleNamespace(layers=layers), 0)


_READ_DISK = """
import json, subprocess, sys
sys.path.insert(0, sys.argv[3])
from image_helpers import snapshot
subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", sys.argv[1], sys.argv[2]], check=True)
print(json.dumps(snapshot(sys.argv[2])))
"""


def disk_contents(disk: Path, scratch: Path) -> dict:
    """The files of an EROFS disk image, as the kernel reads them (a loop mount in a private
    mount namespace that ends with the reader)."""
    mountpoint = scratch / "disk"
    mountpoint.mkdir(exist_ok=True)
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                          _READ_DISK, str(disk), str(mountpoint), str(image_helpers.HERE)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_a_layer_disk_keeps_whiteouts_and_opaque_directories_and_is_built_once(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("MINIVM_CACHE", str(tmp_path / "cache"))
    lower, upper = overlay_layers(tmp_path)
    disk, = disks.for_image(SimpleNamespace(layers=[upper]), 24)
    seen = disk_contents(disk.path, tmp_path)
    assert seen == image_helpers.snapshot(upper)        # the whiteouts are 0/0 devices still
    assert seen["a/deleted"] == ["other", oct(stat.S_IFCHR | 0o600), 0, 0]
    # the opaque mark survives too: overlayfs on the disks hides the lower b/ (the boot tests
    # show it in a guest); here, its xattr is on the disk's b
    first = disk.path.stat()
    again = disks.for_image(SimpleNamespace(layers=[lower, upper]), 24)  # another image, same top
    assert again[1].path == disk.path and disk.path.stat().st_ino == first.st_ino   # not rebuilt
    assert [d.serial for d in again] == ["minivm.layer0", "minivm.layer1"]


def test_a_merged_disk_shows_what_overlayfs_shows(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVM_CACHE", str(tmp_path / "cache"))
    layers = overlay_layers(tmp_path)
    disk, = disks.for_image(SimpleNamespace(layers=layers), 1)      # one slot: both merged
    assert disk.layers == ("lower", "upper")
    merged = image_helpers.merged_view(layers, tmp_path)
    seen = disk_contents(disk.path, tmp_path)
    assert seen == merged and "a/deleted" not in seen and "b/hidden" not in seen
    assert list((tmp_path / "cache" / "disks").iterdir()) == [disk.path]   # no scratch left


def test_a_guest_out_of_memory_says_so_and_names_memory():
    """The kernel's OOM killer took the init itself, and the kernel panicked: the line is about
    memory and --memory, not about the panic that followed."""
    machine = Machine(hardware=SimpleNamespace(memory=96 << 20), initramfs=b"")
    machine.process = SimpleNamespace(returncode=0)
    for line in ["[    3.1] Out of memory: Killed process 1 (init) total-vm:2680kB",
                 "[    3.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009"]:
        machine._parse_console_line(line)
    with pytest.raises(RuntimeFailure, match=r"^the guest ran out of memory \(its kernel said: "
                       r"'Out of memory: Killed process 1 .*'\); give it more with --memory "
                       r"\(it had 96M\)$"):
        machine._outcome()


def test_more_layers_than_overlayfs_stacks_is_one_line(tmp_path):
    from minirun import rootfs
    layers = [tmp_path / f"layer{number}" for number in range(rootfs.OVERLAY_MAX_LOWER + 1)]
    with pytest.raises(RuntimeFailure, match=r"^the image has 501 layers and overlayfs stacks at "
                                             r"most 500: flatten it[^\n]*$"):
        rootfs.layer_links(layers, tmp_path / "links")
    assert not (tmp_path / "links").exists()
    links = rootfs.layer_links(layers[:127], tmp_path / "links")        # Docker's most
    assert links.split(":")[:2] == ["126", "125"] and len(f"lowerdir={links}") < 600
    assert os.readlink(tmp_path / "links/0") == str(layers[0])
