"""`minivm boot`, step by step: from an image in the store to its app's exit status.

Read top to bottom, this is the table of contents of docs/minivm.md: each step calls the module
that owns one piece of the virtual machine.
"""
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field

from minirun import hosts, network, ports, rootfs
from minirun.errors import RuntimeFailure
from minirun.image import Store
from minirun.narrator import narrator
from minivm import accel, cache, disks, guest_user, initramfs, kernel, modules
from minivm.hardware import (DEFAULT_MEMORY, USER_DNS, USER_GUEST, USER_HOST, USER_NETWORK,
                             Hardware, Nic, host_tsc_rate, volume_tag)
from minivm.machine import Detached, Machine


@dataclass
class BootOptions:
    image: str = "hello"
    args: list[str] = field(default_factory=list)
    memory: int = DEFAULT_MEMORY
    cpus: float = 1.0
    hostname: str = ""
    name: str = ""               # boot -d: the VM's --name or short id (its supervisor sets it)
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    timeout: float | None = None
    accel: str = "auto"
    kernel: str | None = None
    interactive: bool = False
    verbose: bool = False
    explain: bool = False
    user: str | None = None      # -u; None: the image's User
    volumes: list[str] = field(default_factory=list)    # -v HOST_DIR:DIR[:ro]
    network: str = "bridge"      # bridge: a NIC on minirun's bridge; user: a NIC on QEMU's
                                 # user-mode network; none: only lo
    publish: list = field(default_factory=list)         # minirun.ports.Port, from -p
    detached: Detached | None = None    # boot -d: set by its supervisor (minivm/supervisor.py)


def boot(options: BootOptions) -> int:
    say = narrator("minivm", options.explain or options.verbose)     # as minirun's --explain
    cache.tidy()        # what a killed minivm may have left half-written in the cache
    # 1. The image: the same store, the same layers and config as `minirun run`.
    image = Store().get(options.image)
    command = image.config.command(options.args)
    if not command:
        raise RuntimeFailure(f"image {image.name!r} has no default command: give one after the "
                             "image name")
    identity = guest_user.resolve(image, image.config.user if options.user is None else options.user)
    hostname = options.hostname or re.sub(r"[^a-zA-Z0-9-]", "-", image.name)[:63]
    volumes = [rootfs.parse_volume(text) for text in options.volumes]    # as minirun checks them
    for volume in volumes:
        if not volume.source.is_dir():
            raise RuntimeFailure(f"-v {volume.source}: a VM shares directories only (virtio-9p): "
                                 "share the directory that holds it")

    # The network. bridge: as a container's (minirun/network.py), an address from the same
    # leases, on the same bridge, through a tap device instead of a veth pair; -p through the
    # same proxy. user: QEMU's own TCP/IP stack, which needs no privilege and publishes -p
    # itself (hostfwd rules): nothing on the host to make, hold or undo.
    if options.network == "bridge":
        say("network", "bridge: the guest's card on minirun's bridge, through a tap device "
            "(minivm is root: CAP_NET_ADMIN makes the tap and plugs it into the bridge), with an "
            "address from the containers' leases, so that they and the guest reach each other")
    elif options.network == "user":
        _check_user_mode(options.publish, say)
    # Its lease names it as a container's does: by its name (a detached VM's --name or short
    # id), which the /etc/hosts of containers started later list. A VM in the foreground has no
    # name of its own: its hostname stands in.
    name = options.name or hostname
    tap = network.attach_tap(os.urandom(6).hex(), name, hostname, say) \
        if options.network == "bridge" else None
    proxies = []
    try:
        for port in options.publish if tap else ():
            proxies.append(ports.Proxy(port))
            proxies[-1].start(str(tap.address))
            say("ports", f"{port}: relaying to the guest's {tap.address}:{port.container_port}")
        return _boot(options, image, command, identity, hostname, name, volumes, tap, say)
    finally:
        for proxy in proxies:
            proxy.close()
        if tap:
            tap.release()


def _check_user_mode(publish: list, say) -> None:
    """Say why the user-mode network runs; check that QEMU can publish each -p before it boots."""
    say("network", "user mode: QEMU's own TCP/IP stack (slirp) in the QEMU process, "
        + ("because minivm is not root: a tap device and a port on the bridge need "
           "CAP_NET_ADMIN" if os.geteuid() != 0 else "as --network user asks")
        + f"; the guest is {USER_GUEST} on a network of its own, with {USER_HOST} as gateway "
        "(the host), and not on minirun's bridge: containers cannot reach it")
    for port in publish:
        if ipaddress.ip_address(port.host_ip).version != 4:
            raise RuntimeFailure(f"-p {port}: QEMU's user-mode network publishes on IPv4 "
                                 "addresses only: give one, as in -p 127.0.0.1:8080:80")
        # QEMU binds the port itself, and would fail with a line of its own only once started:
        # binding it here first fails at once, with the same line as minirun's.
        ports.Proxy(port).close()
        say("ports", f"{port}: QEMU listens on {port.host_ip}:{port.host_port} and relays to "
            f"the guest's {USER_GUEST}:{port.container_port} (hostfwd)")


def _network_card(options: BootOptions, tap: network.Tap | None):
    """The guest's card, eth0's address with its prefix and its gateway, for the guest init."""
    if tap:
        return (Nic("bridge", mac=tap.mac), f"{tap.address}/{network.SUBNET.prefixlen}",
                str(network.GATEWAY))
    if options.network == "user":
        return (Nic("user", forwards=options.publish), f"{USER_GUEST}/{USER_NETWORK.prefixlen}",
                str(USER_HOST))
    return None, "", ""


def _user_mode_resolv_conf() -> str:
    """The host's resolv.conf with QEMU's DNS relay as the only nameserver: it asks the host's
    own, loopback ones included, since its queries leave from the QEMU process on the host."""
    kept = [line for line in hosts.resolv_conf(True).splitlines()
            if line.split()[:1] != ["nameserver"]]
    return "\n".join([f"nameserver {USER_DNS}", *kept]) + "\n"


def _boot(options: BootOptions, image, command: list[str], identity, hostname: str, name: str,
          volumes: list[rootfs.Volume], tap: network.Tap | None, say) -> int:

    # 2. A kernel of the guest's own, uncompressed once so that it boots fast.
    vmlinux = kernel.bootable_vmlinux(kernel.find_kernel(options.kernel))

    # 3. Who will run the guest's instructions: the CPU itself (KVM) or QEMU in software (TCG).
    host = accel.HostFacts.read()
    accelerator = accel.choose(options.accel, host)

    # 4. The virtual hardware: memory, vCPUs, serial ports, the app's ports, the network card,
    #    the image's layers as read-only disks, the control channel; and the guest kernel's
    #    modules that drive it, from the kernel's own package.
    nic, address, gateway = _network_card(options, tap)
    hardware = Hardware.sized(options.memory, options.cpus, accelerator=accelerator,
                              kernel=vmlinux, name=f"minivm-{hostname}",
                              host_tsc=host_tsc_rate(host.cpuinfo),
                              interactive=options.interactive, volumes=volumes, nic=nic,
                              detached=options.detached is not None)
    hardware.disks = disks.for_image(image, hardware.free_transports())
    needs = hardware.needs()
    directory = kernel.modules_directory(vmlinux) if needs else None
    drivers = modules.for_hardware(needs, directory) if needs else []

    # 5. The guest's first filesystem: the guest init, its tools and modules, this run's settings.
    # The window the user types into is stdin's terminal (cli.py checks there is one); stdout,
    # where os.get_terminal_size() looks by default, may be a file or a pipe.
    size = os.get_terminal_size(sys.stdin.fileno()) if options.interactive else \
        os.terminal_size((0, 0))
    rows, columns = size.lines, size.columns          # (terminal_size is columns first)
    environment = image.config.environment(options.env)
    environment.setdefault("HOSTNAME", hostname)       # as minirun and Docker set it
    environment.setdefault("HOME", guest_user.home(image, identity.uid if identity else 0))
    if options.interactive:     # the terminal the app draws on is the user's, as minirun -t says
        environment.setdefault("TERM", os.environ.get("TERM", "xterm"))
    etc = hosts.contents(hostname, name, address.split("/")[0] or None, [],
                         network.running_peers() if tap else [], False)
    if nic and nic.mode == "user":
        etc["resolv.conf"] = _user_mode_resolv_conf()
    settings = initramfs.RunSettings(
        command=command, environment=environment,
        workdir=options.workdir or image.config.workdir, hostname=hostname,
        interactive=options.interactive, rows=rows, columns=columns,
        user=identity.become_args() if identity else [],
        become_binary=guest_user.become_binary(), modules=drivers,
        disks=[disk.serial for disk in hardware.disks],
        volumes=[(volume_tag(number), volume.target, volume.read_only)
                 for number, volume in enumerate(volumes)],
        address=address, gateway=gateway, etc=etc, detached=options.detached is not None)
    first_filesystem = initramfs.build(settings)

    # 6. Power on, run, power off: QEMU driven over QMP.
    explained = {need: [module.name for module in modules.for_hardware([need], directory)]
                 for need in needs} if options.explain else {}
    machine = Machine(hardware, first_filesystem, say, verbose=options.verbose,
                      explain=options.explain, drivers=explained, tap_fd=tap.fd if tap else -1,
                      detached=options.detached)
    say("kernel", f"{vmlinux}; accelerator: {accelerator.reason}")
    return machine.run(options.timeout)
