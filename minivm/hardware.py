"""The virtual hardware: the machine a hypervisor presents to the guest, as data.

A guest kernel cannot tell that its machine is not real: it finds memory, CPUs, an interrupt
controller, a timer, serial ports... because QEMU emulates each of them at the addresses where
real ones would be. This module lists the parts minivm's machine is made of, each with the QEMU
flags that create it and the reason it is there; `minivm boot --explain` prints exactly this list.

The machine type is `microvm` (https://www.qemu.org/docs/master/system/i386/microvm.html): no PCI,
no firmware to run, no legacy devices but a few ISA ones, so there is less to emulate and less for
the kernel to probe. The drivers of its built-in parts (the 8250 serial UART, ACPI) are built into
Debian's kernel; the virtio devices (here the app's stdin, stdout and stderr ports) have drivers
that Debian builds as modules: each part names in `needs` the entries of minivm.modules.DRIVERS
it needs, and the guest init loads them.
"""
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path

from minirun.errors import RuntimeFailure
from minivm.accel import Accelerator
from minirun.rootfs import Volume
from minivm.disks import Disk

QEMU = "qemu-system-x86_64"
MIB = 1024 * 1024
DEFAULT_MEMORY = 512 * MIB
SMALLEST_MEMORY = 64 * MIB      # the kernel plus the initramfs unpacked in RAM need about this
STREAMS = ("stdin", "stdout", "stderr")     # the app's, each on a port of its own
# microvm has no PCI bus: each virtio device sits on a virtio-mmio transport of its own, a
# window of registers and an interrupt line listed in the ACPI tables. QEMU 7.2 makes 24 with
# acpi=on (the 25th `-device virtio-blk-device` finds "No 'virtio-bus' bus"), but with all 24
# in use Debian's 6.1 guest kernel stops early in its boot, every time; 23 boot (measured with
# an image of 60 layers), so minivm uses 23.
VIRTIO_TRANSPORTS = 23
# QEMU's user-mode network (slirp), with QEMU's own defaults written out so that --explain shows
# them (https://www.qemu.org/docs/master/system/devices/net.html, "User Networking (SLIRP)"): a
# private network inside the QEMU process, where QEMU answers as the gateway and the DNS server.
USER_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
USER_HOST = USER_NETWORK[2]     # the gateway; a connection to it reaches the host's 127.0.0.1
USER_DNS = USER_NETWORK[3]      # QEMU relays queries to the host's own nameservers
USER_GUEST = USER_NETWORK[15]   # the address QEMU's DHCP would give: minivm sets it statically


@dataclass
class Part:
    """One piece of the machine: the QEMU flags that make it and why the guest needs it."""
    flags: list[str]
    why: str
    needs: tuple[str, ...] = ()     # its drivers in the guest, keys of minivm.modules.DRIVERS


@dataclass
class Wiring:
    """The host ends that the running QEMU plugs its parts into; chosen by minivm.machine."""
    console_fd: int         # a connected socket: the guest's ttyS0, read by minivm
    monitor_fd: int         # a connected socket: QMP, the hypervisor's control channel
    initrd: str             # a path QEMU can read the initramfs from (/dev/fd/N of a memfd)
    streams: dict[str, int] = field(default_factory=dict)  # each of STREAMS -> a connected
                            # socket for the app's port (none with -it: the app has ttyS1)
    tap_fd: int = -1        # the tap device's /dev/net/tun descriptor: the NIC's host end
    agent_fd: int = -1      # a detached VM's: a connected socket for the guest agent's port
    monitor_path: str = ""  # a detached VM's: where QEMU listens for other QMP clients


@dataclass
class Nic:
    """The network card and where its host end is: a tap device on minirun's bridge ("bridge"),
    or QEMU's user-mode network ("user"), whose -p ports QEMU publishes itself."""
    mode: str
    mac: str | None = None      # None: QEMU's default, 52:54:00:12:34:56
    forwards: list = field(default_factory=list)    # "user": minirun.ports.Port, from -p


@dataclass
class TscRate:
    khz: int
    source: str         # where the rate was read, for --explain


@dataclass
class Hardware:
    memory: int                     # bytes of guest RAM
    vcpus: int
    accelerator: Accelerator
    kernel: Path                    # an uncompressed ELF vmlinux, booted through PVH
    name: str                       # shown by `ps` and in QMP
    host_tsc: TscRate | None = None  # the host's TSC rate, told to the guest under TCG
    interactive: bool = False       # -it: the app's terminal is a UART, not virtio ports
    disks: list[Disk] = field(default_factory=list)     # the image's layers, bottom first
    volumes: list[Volume] = field(default_factory=list)  # -v: the host's folders, shared
    nic: Nic | None = None          # a virtio-net card (--network bridge or user)
    detached: bool = False          # boot -d: a control plane for other commands (supervisor.py)

    @classmethod
    def sized(cls, memory: int, cpus: float, **parts) -> "Hardware":
        """From `--memory` and `--cpus`: a VM gets whole vCPUs, so 1.5 CPUs become 2."""
        if memory < SMALLEST_MEMORY:
            raise RuntimeFailure(f"--memory {memory // MIB}M is too little for a guest: give at "
                                 f"least {SMALLEST_MEMORY // MIB}M")
        return cls(memory=memory, vcpus=math.ceil(cpus), **parts)

    def kernel_arguments(self) -> list[tuple[str, str]]:
        """The guest kernel's command line, each argument with its reason
        (Documentation/admin-guide/kernel-parameters.txt)."""
        arguments = [
            ("console=ttyS0", "kernel messages go to the first serial port, minivm's console"),
            ("quiet", "only warnings and errors: under TCG every character sent to an emulated "
                      "UART is a trip into QEMU, and a chatty boot is a slow boot"),
            ("rdinit=/.minivm/init", "the program the kernel runs as PID 1 from the initramfs"),
            ("cryptomgr.notests", "skip the self-tests the kernel runs on its crypto algorithms "
                                  "at boot: under TCG they take about 0.3 s, for a guest that "
                                  "does no cryptography before it powers off"),
            ("panic=-1", "on a kernel panic, reboot at once; -no-reboot turns that into QEMU "
                         "exiting, so a panicked guest ends instead of hanging"),
        ]
        if self.accelerator.name == "tcg" and self.host_tsc:
            arguments.append((f"tsc_early_khz={self.host_tsc.khz}",
                              "the TSC frequency, so that the kernel need not measure it against "
                              "the PIT: under TCG that measurement fails in about 1 boot in 4 on "
                              "microvm (no HPET to fall back on) and the boot stops; TCG's TSC "
                              f"runs at the host's rate, here {self.host_tsc.source}"))
        return arguments

    def parts(self, wiring: Wiring) -> list[Part]:
        machine = "microvm,acpi=on,pit=on,pic=on,rtc=on,isa-serial=on"
        cpu = ["-cpu", "host"] if self.accelerator.name == "kvm" else []
        return [
            Part(["-nodefaults", "-no-user-config"],
                 "start from an empty board: no default network card, graphics, floppy, CD-ROM "
                 "or monitor, no config file; every part below is there because it is listed"),
            Part(["-machine", machine],
                 "a minimal PC: interrupt controllers (PIC, I/O APIC), the PIT timer, an RTC, one "
                 "ISA serial port, and ACPI tables that tell the kernel how to power off; no PCI "
                 "bus and no BIOS to run"),
            Part(["-accel", self.accelerator.name] + cpu, self.accelerator.reason),
            Part(["-m", f"{self.memory // MIB}M"],
                 "guest RAM: host memory that QEMU maps into the guest's physical address space; "
                 "the guest kernel manages it with its own page allocator"),
            Part(["-smp", str(self.vcpus)],
                 "virtual CPUs: one QEMU thread each, which the host schedules like any thread"),
            Part(["-kernel", str(self.kernel), "-initrd", wiring.initrd,
                  "-append", " ".join(arg for arg, _ in self.kernel_arguments())],
                 "direct kernel boot: QEMU loads the ELF kernel and the initramfs into guest "
                 "memory itself and starts the kernel at its PVH entry point, skipping the BIOS, "
                 "the boot loader and the kernel's self-decompression"),
            Part(["-chardev", f"socket,id=console,fd={wiring.console_fd}",
                  "-serial", "chardev:console"],
                 "ttyS0 at I/O port 0x3f8, the machine's built-in UART: the kernel's console, and "
                 "the guest init's reports (the app's exit status), read by minivm"),
            self._app_streams(wiring),
            self._layer_disks(),
            *self._shared_folders(),
            *([self._network_card(wiring)] if self.nic else []),
            Part(["-chardev", f"socket,id=qmp,fd={wiring.monitor_fd}",
                  "-mon", "chardev=qmp,mode=control"],
                 "QMP, the QEMU Machine Protocol: JSON commands and events over a socket pair, "
                 "how minivm watches and stops the machine"),
            *(self._control_plane(wiring) if self.detached else []),
            Part(["-display", "none", "-no-reboot", "-name", self.name],
                 "no screen; a reboot ends QEMU instead of restarting the guest"),
        ]

    def _app_streams(self, wiring: Wiring) -> Part:
        if self.interactive:
            return Part(["-chardev", "stdio,id=app,signal=off",
                         "-device", "isa-serial,chardev=app,index=1"],
                        "ttyS1 at I/O port 0x2f8, a second UART wired to minivm's terminal (-it): "
                        "a tty in the guest, for the app's line editing, echo and Ctrl-C; a UART "
                        "holds back what the terminal cannot take yet, and is fast enough for "
                        "what a person types and reads")
        flags = ["-device", "virtio-serial-device"]
        for stream in STREAMS:
            flags += ["-chardev", f"socket,id={stream},fd={wiring.streams[stream]}",
                      "-device", f"virtserialport,chardev={stream},name=minivm.{stream}"]
        if wiring.agent_fd >= 0:
            flags += ["-chardev", f"socket,id=agent,fd={wiring.agent_fd}",
                      "-device", "virtserialport,chardev=agent,name=minivm.agent"]
        return Part(flags,
                    "a virtio-serial controller (on microvm a virtio-mmio device) with one port "
                    "per stream of the app: stdin, stdout and stderr, each a byte stream with "
                    "its own end and its own flow control, read and written by minivm. Data "
                    "moves in buffers through shared memory rings, not a byte per emulated I/O "
                    "instruction as on a UART",
                    needs=("virtio-mmio", "virtio-serial"))

    def _control_plane(self, wiring: Wiring) -> list[Part]:
        """What a detached VM has for the commands that come later: `minivm qmp`, `stop` and
        `exec` (minivm/supervisor.py, monitor.py, agent.py)."""
        return [
            Part(["-chardev", f"socket,id=control,path={wiring.monitor_path},server=on,wait=off",
                  "-mon", "chardev=control,mode=control"],
                 "a second QMP monitor, on a socket file in the VM's state directory (mode 0700: "
                 "its owner's alone), where QEMU accepts one client at a time: `minivm qmp` and "
                 "`minivm stop` talk to QEMU here, each in a session of its own, while the "
                 "supervisor keeps the first monitor to itself"),
            Part([],
                 "the ACPI power button, already on the board (microvm's ACPI Generic Event "
                 "Device signals it): the guest loads its driver and the input layer's, reads "
                 "the press from /dev/input/eventN and ends the app, so that `minivm stop`'s "
                 "system_powerdown is a clean shutdown",
                 needs=("acpi-button",)),
        ]

    def _layer_disks(self) -> Part:
        flags, merged = [], ""
        for number, disk in enumerate(self.disks):
            if len(disk.layers) > 1:
                merged = (f"; {disk.serial} holds the bottom {len(disk.layers)} layers merged, "
                          f"for want of device slots ({VIRTIO_TRANSPORTS} virtio transports)")
            flags += ["-drive", f"file={disk.path},if=none,id=layer{number},format=raw,"
                                "readonly=on",
                      "-device", f"virtio-blk-device,drive=layer{number},serial={disk.serial}"]
        return Part(flags,
                    "the image's layers, bottom first, each a read-only virtio disk holding an "
                    "EROFS filesystem (minivm/disks.py), on a virtio-mmio transport of its own; "
                    "the guest init stacks them with overlayfs under a tmpfs, as a container's "
                    "root is stacked on the host. The guest reads only the blocks the app "
                    "touches, through the host's page cache, which every VM booting the same "
                    "layers shares" + merged,
                    needs=("virtio-mmio", "virtio-blk", "erofs", "overlayfs"))

    def _shared_folders(self) -> list[Part]:
        return [Part(["-fsdev", f"local,id=volume{number},path={volume.source},"
                                "security_model=passthrough" + (",readonly=on" if volume.read_only
                                                                else ""),
                      "-device", f"virtio-9p-device,fsdev=volume{number},"
                                 f"mount_tag={volume_tag(number)}"],
                     f"{volume.source} shared with the guest (-v), mounted on {volume.target}: "
                     "a virtio-9p device through which QEMU itself serves the guest's file "
                     "requests (the 9P2000.L protocol) from the host's directory, as the user "
                     "QEMU runs as; passthrough keeps owners and modes as they are on the host"
                     + ("; QEMU refuses every write (readonly=on), and the guest mounts it "
                        "read-only too" if volume.read_only else ""),
                     needs=("virtio-mmio", "virtio-9p"))
                for number, volume in enumerate(self.volumes)]

    def free_transports(self) -> int:
        """The virtio-mmio transports left for the image's disks by the other virtio devices."""
        return VIRTIO_TRANSPORTS - (0 if self.interactive else 1) - len(self.volumes) \
            - (1 if self.nic else 0)

    def _network_card(self, wiring: Wiring) -> Part:
        card = ["-device", "virtio-net-device,netdev=net0" +
                (f",mac={self.nic.mac}" if self.nic.mac else "")]
        why = "a virtio-net card (on microvm a virtio-mmio device), eth0 in the guest; "
        needs = ("virtio-mmio", "virtio-net")
        if self.nic.mode == "bridge":
            return Part(["-netdev", f"tap,id=net0,fd={wiring.tap_fd}", *card],
                        why + "its host end is a tap device on minirun's bridge, whose descriptor "
                        "QEMU reads and writes whole Ethernet frames on: guest -> virtio ring -> "
                        "QEMU -> tap -> bridge, where the containers' veths are "
                        "(minirun/network.py)", needs=needs)
        forwards = "".join(f",hostfwd={port.protocol}:{port.host_ip}:{port.host_port}-"
                           f"{USER_GUEST}:{port.container_port}" for port in self.nic.forwards)
        return Part(["-netdev", f"user,id=net0,net={USER_NETWORK},host={USER_HOST},"
                                f"dns={USER_DNS},ipv6=off,restrict=off{forwards}", *card],
                    why + "its host end is QEMU's user-mode network (slirp): a TCP/IP stack "
                    "inside the QEMU process, no device on the host. QEMU takes the guest's "
                    "frames apart and turns each connection into a socket of its own on the host "
                    "(guest -> virtio ring -> QEMU's stack -> a host socket of QEMU's), so the "
                    "packets leave as the QEMU process's, with the host's address, and it needs "
                    "no privilege; restrict=off lets them go wherever the host can reach, as a "
                    f"container's do through NAT. {USER_HOST} is the host itself: a connection "
                    "to it reaches the host's 127.0.0.1. The guest is not on minirun's bridge: "
                    "containers cannot reach it, by name or by address"
                    + ("; each hostfwd is a -p: QEMU listens on the host port and relays each "
                       "connection into the guest" if forwards else ""), needs=needs)

    def needs(self) -> list[str]:
        """The drivers the guest must load for this machine (keys of modules.DRIVERS), known
        before any socket is made: the parts are the same whatever they are plugged into."""
        unplugged = Wiring(console_fd=-1, monitor_fd=-1, initrd="",
                           streams=dict.fromkeys(STREAMS, -1))
        return list(dict.fromkeys(need for part in self.parts(unplugged) for need in part.needs))

    def command(self, wiring: Wiring) -> list[str]:
        return [QEMU] + [flag for part in self.parts(wiring) for flag in part.flags]


def volume_tag(number: int) -> str:
    """The name a shared folder has in the guest: mount -t 9p TAG DIR."""
    return f"minivm.volume{number}"


def host_tsc_rate(cpuinfo: str) -> TscRate | None:
    """The host's TSC rate, from the first CPU of /proc/cpuinfo (None if it says nothing).

    `cpu MHz` is the core's current clock, which moves on hosts that scale it; the TSC ticks at a
    constant rate. The x86 kernel's delay loop counts TSC ticks (arch/x86/kernel/tsc.c derives
    loops_per_jiffy from tsc_khz), so its `bogomips` is tsc_khz / 500, to the 5 kHz its two
    decimals allow: read that first.
    """
    fields = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    if fields.get("bogomips"):
        return TscRate(round(float(fields["bogomips"]) * 500),
                       f"bogomips {fields['bogomips']} x 500 (/proc/cpuinfo)")
    if fields.get("cpu MHz"):
        return TscRate(round(float(fields["cpu MHz"]) * 1000),
                       f"cpu MHz {fields['cpu MHz']} x 1000 (/proc/cpuinfo has no bogomips; "
                       "right only if the host does not scale its clock)")
    return None
