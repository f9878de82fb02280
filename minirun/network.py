"""The container's network: a new network namespace holds only `lo`, and `lo` starts down.

A fresh network namespace has a loopback device and nothing else, and even that is down
(network_namespaces(7)). Bringing it up is one ioctl on any socket, SIOCSIFFLAGS with
IFF_UP (netdevice(7)): cheap enough to do on every start, where pyroute2 (the netlink library
that bridged networking will use) costs a quarter of a second just to import.
"""
import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913     # <linux/sockios.h>
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def bring_up_loopback() -> None:
    """`ip link set lo up`, inside the container's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)                 # struct ifreq: name, flags
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))
