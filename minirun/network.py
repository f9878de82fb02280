"""The container's network: a bridge on the host, a veth pair per container, NAT, addresses.

    --network none    a new network namespace with only `lo` (network_namespaces(7)): nothing in
                      or out. Bringing `lo` up is one ioctl (SIOCSIFFLAGS, netdevice(7)).
    --network host    no network namespace of its own: the container shares the host's devices,
                      addresses, routes and ports (see docs/network.md for what that gives up).
    --network bridge  (the default) what Docker's default network is:

      host namespace                                  container's namespace
      eth0 (uplink) --NAT-- minirun0 (bridge, 172.30.0.1/16) --- vethXXXX ===== eth0 172.30.0.N/16
                                                                  (one veth pair: a cable)

A veth pair is two devices joined like the ends of a cable: a frame sent into one comes out of
the other (veth(4)). One end is made directly inside the container's namespace under the name
eth0, the other stays on the host, plugged into the bridge, which switches frames between all the
containers' ends and the host's own address on it (the containers' gateway). Packets leaving
for the world are masqueraded (source NAT to the host's address) by one netfilter rule for the
whole subnet, in a chain of minirun's own.

All of it goes through rtnetlink (rtnetlink(7)): messages on a netlink socket, encoded and decoded
by pyroute2's message classes. pyroute2's IPRoute would cost 180-320 ms to import here (its
package imports asyncio, ssl and its NDB); the three message classes cost about a quarter of that
(see _pyroute2_messages), and a request-and-acknowledge on a socket is a dozen lines (_Netlink).

The order of a bridged start (container.py): the runtime takes an address (a lease) and makes
the network namespace itself, empty, before the fork, as `ip netns add` and CNI do; the child
joins it (setns) instead of unsharing a new one; while the child builds its root filesystem, the
runtime wires the namespace (veth, address, route) and then tells the child to go on to exec.
"""
import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from minirun import namespaces, state
from minirun.errors import RuntimeFailure

SIOCGIFFLAGS = 0x8913     # <linux/sockios.h>
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

BRIDGE = "minirun0"
SUBNET = ipaddress.IPv4Network("172.30.0.0/16")     # private (RFC 1918), rarely used by others
GATEWAY = SUBNET[1]                                 # the host's address on the bridge
CHAIN = "MINIRUN"                                   # our nat chain: cleanup is one flush
MODES = ("bridge", "none", "host")


def bring_up_loopback() -> None:
    """`ip link set lo up`, inside the container's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)                 # struct ifreq: name, flags
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise RuntimeFailure(f"unknown network {mode!r}: use --network bridge, none or host")
    return mode


# -- Leases: which container has which address -------------------------------------------------
#
# There is one bridge per host, so its addresses are a host-wide resource: the leases live beside
# it in /run/minirun/network (a tmpfs, emptied by a reboot with the bridge itself), not in the
# per-user $MINIRUN_STATE, or two state directories would hand out the same address. A lease is a
# file named after its address, holding who has it; its minirun keeps it open and flock'ed for as
# long as it lives, so a lease whose lock can be taken is the lease of a dead minirun, whatever
# became of its PID (flock(2): the kernel drops the lock when the last descriptor closes, and
# SIGKILL closes them all). Handing out addresses and removing the bridge happen under one lock
# on the directory, so two runs cannot take the same address and gc cannot remove the bridge
# under a run that is joining it.

def network_dir() -> Path:
    return Path("/run/minirun/network")


@contextlib.contextmanager
def _locked():
    directory = network_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield directory
    finally:
        os.close(fd)


def _leases(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path.name[0].isdigit()]


def running_peers() -> list[dict]:
    """The live leases: the containers on the bridge now, with their names and addresses."""
    directory = network_dir()
    peers = []
    for path in _leases(directory) if directory.is_dir() else ():
        try:
            peers.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue                        # being written or released
    return peers


def collect_leases(everything: bool = False) -> list[str]:
    """Release the leases of dead minirun processes (their veths went with their namespaces);
    with `everything` (minirun gc), also take the bridge and its NAT chain down when no lease is
    left. Costs a listdir and an flock per lease: cheap enough for every run's start."""
    directory = network_dir()
    if not directory.is_dir():
        return []
    released = []
    with _locked():
        for path in _leases(directory):
            fd = state.take_if_free(path)     # its minirun is gone
            if fd is not None:
                path.unlink()
                os.close(fd)
                released.append(path.name)
        if everything and not _leases(directory) and bridge_exists():
            _remove_bridge()
    return released


@dataclass
class Attachment:
    """One container's place on the bridge: its lease, its namespace, and the veth to make."""
    address: ipaddress.IPv4Address
    lease_fd: int
    lease_path: Path
    veth: str                       # the host's end, on the bridge; eth0 is the container's end
    netns: int = -1                 # a descriptor of the container's network namespace
    inside: socket.socket | None = None     # a netlink socket opened inside that namespace
    wired: bool = False

    def release(self) -> None:
        """Remove the veth (both ends go: deleting one end of a pair deletes the other), then
        give the address back. The kernel would remove the veth with the namespace, but later,
        from a work queue; doing it here makes "nothing left" true when minirun exits."""
        if self.wired:
            _Netlink().request(_pyroute2_messages().ifinfmsg, RTM_DELLINK,
                               attrs=[("IFLA_IFNAME", self.veth)], missing_ok=True)
        self.close_namespace()
        self.lease_path.unlink(missing_ok=True)
        os.close(self.lease_fd)

    def close_namespace(self) -> None:
        if self.inside:
            self.inside.close()
            self.inside = None
        if self.netns >= 0:
            os.close(self.netns)
            self.netns = -1


def _lease(owner_id: str, name: str, hostname: str, say) -> tuple[ipaddress.IPv4Address, int, Path]:
    """Make sure the bridge is there and take the lowest free address: (address, the lease's
    locked descriptor, its path). No pyroute2 here unless the bridge is new."""
    with _locked() as directory:
        if not bridge_exists():
            _make_bridge(say)
        taken = {path.name for path in _leases(directory)}
        address = next((a for a in SUBNET.hosts() if a != GATEWAY and str(a) not in taken), None)
        if address is None:
            raise RuntimeFailure(f"no free address left in {SUBNET}: stop a container, or run "
                                 "`minirun gc` to release those of killed runs")
        path = directory / str(address)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"address": str(address), "name": name, "hostname": hostname,
                                 "id": owner_id}).encode())
    say("network", f"lease {path}: {address} is ours as long as this process holds it")
    return address, fd, path


def attach(container_id: str, name: str, hostname: str, say) -> Attachment:
    """Before the fork: an address, and the container's (empty) network namespace."""
    attachment = Attachment(*_lease(container_id, name, hostname, say),
                            veth=f"veth{container_id[:11]}")
    try:
        attachment.netns, attachment.inside = _new_namespace()
    except BaseException:
        attachment.release()
        raise
    say("network", "new network namespace made by a thread of the runtime (unshare "
        "CLONE_NEWNET); the container will join it with setns")
    return attachment


def _new_namespace() -> tuple[int, socket.socket]:
    """A new, empty network namespace, and a netlink socket inside it, without moving minirun.

    Namespaces belong to threads, not processes: a short-lived thread unshares CLONE_NEWNET,
    opens /proc/thread-self/ns/net (the descriptor keeps the namespace alive once the thread has
    gone, namespaces(7)) and a netlink socket, which stays tied to the namespace it was made in
    (rtnetlink talks to the namespace of the socket, not of its user). Then the thread ends.
    """
    made = {}

    def unshare_in_thread() -> None:
        try:
            namespaces.unshare(namespaces.CLONE_NEWNET)
            made["netns"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            made["inside"] = _route_socket()
        except OSError as error:
            made["error"] = error
    thread = threading.Thread(target=unshare_in_thread)
    thread.start()
    thread.join()
    if "error" in made:
        if "netns" in made:
            os.close(made["netns"])
        raise made["error"]
    return made["netns"], made["inside"]


def wire(attachment: Attachment, say) -> None:
    """After the fork, while the child builds its root: the veth pair, eth0's address and
    the default route. Every step is one rtnetlink request."""
    m = _pyroute2_messages()
    say("network", "pyroute2's ifinfmsg, ifaddrmsg and rtmsg message classes imported")
    host = _Netlink()
    bridge = socket.if_nametoindex(BRIDGE)
    # ip link add vethXXXX type veth peer name eth0 netns <the container's>
    host.request(m.ifinfmsg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, attrs=[
        ("IFLA_IFNAME", attachment.veth),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
                ("IFLA_IFNAME", "eth0"), ("IFLA_NET_NS_FD", attachment.netns)]})]})]})])
    attachment.wired = True
    say("network", f"RTM_NEWLINK veth pair: {attachment.veth} on the host, its peer made as eth0 "
        "directly in the container's namespace (IFLA_NET_NS_FD)")
    # ip link set vethXXXX master minirun0 up
    host.request(m.ifinfmsg, RTM_NEWLINK, fields={"flags": IFF_UP, "change": IFF_UP},
                 attrs=[("IFLA_IFNAME", attachment.veth), ("IFLA_MASTER", bridge)])
    say("network", f"RTM_NEWLINK {attachment.veth}: master {BRIDGE}, up")
    inside = _Netlink(attachment.inside)
    eth0 = inside.link_index(m, "eth0")
    # ip addr add 172.30.0.N/16 dev eth0; ip link set eth0 up; ip route add default via GATEWAY
    inside.request(m.ifaddrmsg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                   fields={"family": socket.AF_INET, "prefixlen": SUBNET.prefixlen, "index": eth0},
                   attrs=[("IFA_LOCAL", str(attachment.address)),
                          ("IFA_ADDRESS", str(attachment.address))])
    inside.request(m.ifinfmsg, RTM_NEWLINK, fields={"index": eth0, "flags": IFF_UP, "change": IFF_UP})
    inside.request(m.rtmsg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
                   fields={"family": socket.AF_INET, "table": RT_TABLE_MAIN, "proto": RTPROT_BOOT,
                           "scope": RT_SCOPE_UNIVERSE, "type": RTN_UNICAST},
                   attrs=[("RTA_GATEWAY", str(GATEWAY))])
    say("network", f"inside: eth0 {attachment.address}/{SUBNET.prefixlen} up, "
        f"default route via {GATEWAY}")
    attachment.close_namespace()    # the child is in it now; it must die with the container


# -- A VM's place on the bridge: a tap device -------------------------------------------------
#
# A tap is a network device whose other side is a file descriptor instead of a cable: each
# frame the host sends to the device can be read from the descriptor, and each frame written to
# the descriptor comes out of the device (Documentation/networking/tuntap.rst). QEMU gets the
# descriptor and plays the guest's virtio-net card with it; the device itself is plugged into
# the bridge like a container's veth end. A tap made this way (not persistent) is removed by the
# kernel when its last descriptor closes: when minivm and QEMU have both exited, however.

TUNSETIFF = 0x400454CA          # <linux/if_tun.h>
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


@dataclass
class Tap:
    address: ipaddress.IPv4Address
    lease_fd: int
    lease_path: Path
    name: str
    fd: int = -1                # /dev/net/tun, bound to the device: QEMU's end

    @property
    def mac(self) -> str:
        """A MAC address of QEMU's prefix 52:54 with the IPv4 address in it: one per guest
        (QEMU would give every guest the same 52:54:00:12:34:56, and a bridge needs them apart)."""
        return "52:54:" + ":".join(f"{byte:02x}" for byte in self.address.packed)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.lease_path.unlink(missing_ok=True)
        os.close(self.lease_fd)


def attach_tap(vm_id: str, name: str, hostname: str, say) -> Tap:
    """An address, and a tap device on the bridge whose descriptor QEMU will hold."""
    tap = Tap(*_lease(vm_id, name, hostname, say), name=f"tap{vm_id[:12]}")
    try:
        tap.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(tap.fd, TUNSETIFF, struct.pack("16sH22x", tap.name.encode(),
                                                   IFF_TAP | IFF_NO_PI))
        m = _pyroute2_messages()
        _Netlink().request(m.ifinfmsg, RTM_NEWLINK, fields={"flags": IFF_UP, "change": IFF_UP},
                           attrs=[("IFLA_IFNAME", tap.name),
                                  ("IFLA_MASTER", socket.if_nametoindex(BRIDGE))])
    except BaseException:
        tap.release()
        raise
    say("network", f"tap {tap.name} (TUNSETIFF on /dev/net/tun) on {BRIDGE}, up; the guest "
        f"will be {tap.address}, MAC {tap.mac}")
    return tap


# -- The bridge and the NAT rule, made once and shared by every container ----------------------

def bridge_exists() -> bool:
    """The bridge is complete once it is up: the last step of _make_bridge."""
    try:
        flags = int(Path(f"/sys/class/net/{BRIDGE}/flags").read_text(), 16)
    except OSError:
        return False
    return bool(flags & IFF_UP)


def _make_bridge(say) -> None:
    """ip link add minirun0 type bridge; ip addr add 172.30.0.1/16; the NAT rule; ip link up."""
    _refuse_overlapping_routes()
    m = _pyroute2_messages()
    host = _Netlink()
    host.request(m.ifinfmsg, RTM_NEWLINK, NLM_F_CREATE, attrs=[
        ("IFLA_IFNAME", BRIDGE), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})])
    index = socket.if_nametoindex(BRIDGE)
    host.request(m.ifaddrmsg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE,
                 fields={"family": socket.AF_INET, "prefixlen": SUBNET.prefixlen, "index": index},
                 attrs=[("IFA_LOCAL", str(GATEWAY)), ("IFA_ADDRESS", str(GATEWAY))])
    say("network", f"bridge {BRIDGE} made, {GATEWAY}/{SUBNET.prefixlen}: the containers' gateway")
    # Forward what comes in from the containers (per device: the host's other devices keep
    # their setting). The replies coming back in on the uplink need that device's forwarding
    # too, which is the host's decision (net.ipv4.ip_forward): we only say it.
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1")
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        say("network", "net.ipv4.ip_forward is 0, so containers reach only the host: "
            "`sysctl -w net.ipv4.ip_forward=1` lets them out (minirun leaves it as it is)")
    _iptables("-N", CHAIN, missing_ok=True)
    _iptables("-F", CHAIN)
    _iptables("-A", CHAIN, "-s", str(SUBNET), "!", "-o", BRIDGE, "-j", "MASQUERADE")
    if not _iptables("-C", "POSTROUTING", "-j", CHAIN, missing_ok=True):
        _iptables("-A", "POSTROUTING", "-j", CHAIN)
    say("network", f"iptables -t nat: chain {CHAIN} (-s {SUBNET} ! -o {BRIDGE} -j MASQUERADE), "
        "jumped to from POSTROUTING")
    host.request(m.ifinfmsg, RTM_NEWLINK, fields={"index": index, "flags": IFF_UP, "change": IFF_UP})


def _remove_bridge() -> None:
    _iptables("-D", "POSTROUTING", "-j", CHAIN, missing_ok=True)
    _iptables("-F", CHAIN, missing_ok=True)
    _iptables("-X", CHAIN, missing_ok=True)
    _Netlink().request(_pyroute2_messages().ifinfmsg, RTM_DELLINK, attrs=[("IFLA_IFNAME", BRIDGE)],
                       missing_ok=True)


def _refuse_overlapping_routes() -> None:
    """Refuse to make the bridge if the host already routes part of our subnet elsewhere (a VPN,
    another runtime's bridge): the containers would shadow it. Read from /proc/net/route, the
    main table (the default route, 0.0.0.0/0, overlaps everything and means nothing here)."""
    with open("/proc/net/route") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    for row in rows:
        device, destination, mask = row[0], int(row[1], 16), int(row[7], 16)
        if mask == 0 or device == BRIDGE:
            continue
        as_address = lambda value: ipaddress.IPv4Address(socket.ntohl(value))  # noqa: E731
        route = ipaddress.IPv4Network(f"{as_address(destination)}/{as_address(mask)}")
        if route.overlaps(SUBNET):
            raise RuntimeFailure(f"the host already routes {route} through {device}, which overlaps "
                                 f"minirun's {SUBNET}: use --network none or host")


def _iptables(*args: str, missing_ok: bool = False) -> bool:
    import subprocess       # here: only a run that sets up the bridge's NAT rules needs it
    done = subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True, text=True)
    if done.returncode != 0 and not missing_ok:
        raise RuntimeFailure(f"iptables -t nat {' '.join(args)} failed: "
                             f"{done.stderr.strip() or done.returncode}")
    return done.returncode == 0


# -- rtnetlink: requests on a netlink socket ---------------------------------------------------

# <linux/netlink.h>, <linux/rtnetlink.h>
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1


def _route_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    sock.bind((0, 0))                       # the kernel picks our port id
    return sock


class _Netlink:
    """One rtnetlink conversation: each request asks for an acknowledgement (NLM_F_ACK), and the
    kernel answers with an NLMSG_ERROR message whose error is 0 for success or -errno."""

    def __init__(self, sock: socket.socket | None = None):
        self.sock = sock or _route_socket()
        self.sequence = 0

    def request(self, message_class, kind: int, flags: int = 0, fields: dict | None = None,
                attrs: list | None = None, missing_ok: bool = False) -> list[bytes]:
        message = message_class()
        for key, value in (fields or {}).items():
            message[key] = value
        message["attrs"] = attrs or []
        self.sequence += 1
        message["header"].update(type=kind, flags=NLM_F_REQUEST | NLM_F_ACK | flags,
                                 sequence_number=self.sequence)
        message.encode()
        self.sock.send(message.data)
        answers = []
        while True:
            data = self.sock.recv(65536)
            for offset, length, kind_of in _messages(data):
                if kind_of != NLMSG_ERROR:
                    answers.append(data[offset:offset + length])
                    continue
                error = -struct.unpack_from("=i", data, offset + 16)[0]   # after the header
                if error == 0 or (missing_ok and error in (errno.ENODEV, errno.ENOENT)):
                    return answers
                raise OSError(error, f"rtnetlink: {os.strerror(error)}", _describe(attrs))

    def link_index(self, m, name: str) -> int:
        """ip link show NAME: the device's index, in this socket's namespace."""
        reply = self.request(m.ifinfmsg, RTM_GETLINK, attrs=[("IFLA_IFNAME", name)])[0]
        message = m.ifinfmsg(reply)
        message.decode()
        return message["index"]


def _messages(data: bytes):
    """(offset, length, type) of each netlink message in one datagram (netlink(7))."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=LH", data, offset)
        yield offset, length, kind
        offset += (length + 3) & ~3


def _describe(attrs) -> str:
    return " ".join(str(value) for key, value in attrs or () if key == "IFLA_IFNAME")


def _pyroute2_messages():
    """pyroute2's rtnetlink message classes, without running pyroute2/__init__.py.

    Importing any submodule of a package runs the package's __init__ first, and pyroute2's
    imports the whole library (180-320 ms here). The message classes themselves need none of
    it. So for the time of this import, an empty module object stands in for the package (with
    the package's real directory as its path, so Python finds the submodules there); then the
    stand-in is taken out of sys.modules again, so that a later `import pyroute2` is the real one.
    """
    global _imported
    if _imported:
        return _imported
    import importlib.machinery
    import types
    stand_in = "pyroute2" not in sys.modules
    if stand_in:
        spec = importlib.machinery.PathFinder.find_spec("pyroute2")
        package = types.ModuleType("pyroute2")
        package.__path__ = spec.submodule_search_locations
        sys.modules["pyroute2"] = package
    try:
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg
    finally:
        if stand_in:
            del sys.modules["pyroute2"]
    _imported = types.SimpleNamespace(ifinfmsg=ifinfmsg, ifaddrmsg=ifaddrmsg, rtmsg=rtmsg)
    return _imported


_imported = None


# -- One container's network, from before the fork to after the exit ---------------------------

class ContainerNetwork:
    """What `run` does for the network, in its order: `prepare` before the fork, `wire` after
    it (while the child builds its root), `publish` once the container runs, `close` always."""

    def __init__(self, mode: str, ports: list, extra_hosts: list[tuple[str, str]]):
        self.mode, self.ports, self.extra_hosts = mode, ports, extra_hosts
        self.attachment: Attachment | None = None
        self.proxies = []

    @property
    def netns(self) -> int:
        """The namespace the child joins (bridge), or -1: a new one (none), or the host's."""
        return self.attachment.netns if self.attachment else -1

    def prepare(self, container_id: str, name: str, hostname: str, upper: Path, say) -> None:
        from minirun import hosts
        if self.mode == "bridge":
            self.attachment = attach(container_id, name, hostname, say)
        for port in self.ports:
            from minirun.ports import Proxy     # only with -p: it brings selectors and threads
            self.proxies.append(Proxy(port))
            say("ports", f"listening on {port.host_ip}:{port.host_port}/{port.protocol} "
                f"(relayed to the container's port {port.container_port} once it runs)")
        address = str(self.attachment.address) if self.attachment else None
        hosts.write(upper / "etc", hostname, name, address, self.extra_hosts,
                    running_peers() if address else [], self.mode == "host")
        say("network", f"/etc/hosts, /etc/hostname, /etc/resolv.conf written in {upper}/etc, "
            "the container's writable layer: above the image's, which stay unchanged")

    def wire(self, say) -> None:
        wire(self.attachment, say)

    def publish(self, say) -> None:
        for proxy in self.proxies:
            proxy.start(str(self.attachment.address))
            say("ports", f"{proxy.port}: relaying to {self.attachment.address}:"
                f"{proxy.port.container_port}")

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        if self.attachment:
            self.attachment.release()
