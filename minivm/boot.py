"""`minivm boot`, step by step: from an image in the store to its app's exit status.

Read top to bottom, this is the table of contents of docs/minivm.md: each step calls the module
that owns one piece of the virtual machine.
"""
import os
import re
import sys
from dataclasses import dataclass, field

from minirun import hosts, network, ports, rootfs
from minirun.errors import RuntimeFailure
from minirun.image import Store
from minirun.narrator import narrator
from minivm import accel, cache, disks, guest_user, initramfs, kernel, modules
from minivm.hardware import DEFAULT_MEMORY, Hardware, host_tsc_rate, volume_tag
from minivm.machine import Detached, Machine


@dataclass
class BootOptions:
    image: str = "hello"
    args: list[str] = field(default_factory=list)
    memory: int = DEFAULT_MEMORY
    cpus: float = 1.0
    hostname: str = ""
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
    network: str = "bridge"      # bridge: a NIC on minirun's bridge; none: only lo
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

    # The network, as a container's (minirun/network.py): an address from the same leases, on
    # the same bridge, through a tap device instead of a veth pair; -p through the same proxy.
    tap = network.attach_tap(os.urandom(6).hex(), hostname, hostname, say) \
        if options.network == "bridge" else None
    proxies = []
    try:
        for port in options.publish:
            proxies.append(ports.Proxy(port))
            proxies[-1].start(str(tap.address))
            say("ports", f"{port}: relaying to the guest's {tap.address}:{port.container_port}")
        return _boot(options, image, command, identity, hostname, volumes, tap, say)
    finally:
        for proxy in proxies:
            proxy.close()
        if tap:
            tap.release()


def _boot(options: BootOptions, image, command: list[str], identity, hostname: str,
          volumes: list[rootfs.Volume], tap: network.Tap | None, say) -> int:

    # 2. A kernel of the guest's own, uncompressed once so that it boots fast.
    vmlinux = kernel.bootable_vmlinux(kernel.find_kernel(options.kernel))

    # 3. Who will run the guest's instructions: the CPU itself (KVM) or QEMU in software (TCG).
    host = accel.HostFacts.read()
    accelerator = accel.choose(options.accel, host)

    # 4. The virtual hardware: memory, vCPUs, serial ports, the app's ports, the image's layers
    #    as read-only disks, the control channel; and the guest kernel's modules that drive it,
    #    from the kernel's own package.
    hardware = Hardware.sized(options.memory, options.cpus, accelerator=accelerator,
                              kernel=vmlinux, name=f"minivm-{hostname}",
                              host_tsc=host_tsc_rate(host.cpuinfo),
                              interactive=options.interactive, volumes=volumes,
                              nic_mac=tap.mac if tap else None,
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
    settings = initramfs.RunSettings(
        command=command, environment=environment,
        workdir=options.workdir or image.config.workdir, hostname=hostname,
        interactive=options.interactive, rows=rows, columns=columns,
        user=identity.become_args() if identity else [],
        become_binary=guest_user.become_binary(), modules=drivers,
        disks=[disk.serial for disk in hardware.disks],
        volumes=[(volume_tag(number), volume.target, volume.read_only)
                 for number, volume in enumerate(volumes)],
        address=f"{tap.address}/{network.SUBNET.prefixlen}" if tap else "",
        gateway=str(network.GATEWAY) if tap else "",
        etc=hosts.contents(hostname, hostname, str(tap.address) if tap else None, [],
                           network.running_peers() if tap else [], False),
        detached=options.detached is not None)
    first_filesystem = initramfs.build(settings)

    # 6. Power on, run, power off: QEMU driven over QMP.
    explained = {need: [module.name for module in modules.for_hardware([need], directory)]
                 for need in needs} if options.explain else {}
    machine = Machine(hardware, first_filesystem, say, verbose=options.verbose,
                      explain=options.explain, drivers=explained, tap_fd=tap.fd if tap else -1,
                      detached=options.detached)
    say("kernel", f"{vmlinux}; accelerator: {accelerator.reason}")
    return machine.run(options.timeout)
