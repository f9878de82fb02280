"""Published ports (-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]): a proxy in the runtime.

The container's address (172.30.0.N) is reachable only from the host and the bridge. To make
its port answer on the host's own addresses, minirun listens on HOST_IP:HOST_PORT itself and
relays each connection to the container's address: a userland proxy, like Docker's docker-proxy.

Docker also writes DNAT rules, which rewrite the packets' destination in the kernel and are
faster, but they cannot serve 127.0.0.1 without more (the kernel will not route a packet with
a loopback source out of a real device unless route_localnet is set, which opens the host's
loopback services to its neighbours: CVE-2020-8558). minirun uses the proxy alone, because:
- it answers alike on 127.0.0.1, the host's addresses, and from other namespaces (through the
  gateway address on the bridge), with one mechanism;
- it lives in the process that supervises the container and dies with it: a listening socket is
  closed by the kernel when its process ends, even by SIGKILL, so nothing is ever left for gc;
- it serves VMs on a tap as well as containers on a veth.
It costs a copy through the runtime (os.splice moves the bytes between the sockets through a
pipe inside the kernel, without reading them into Python) and the server sees the connection
come from the gateway, not from the real client. docs/network.md measures the cost.

The listening sockets are made before the container starts, so a port in use fails the run
at once; the relaying threads start once the container runs.
"""
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass

from minirun.errors import RuntimeFailure

SPLICE_CHUNK = 1 << 20


@dataclass(frozen=True)
class Port:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


def parse(text: str) -> Port:
    """-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], as `docker run -p`."""
    spec, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    host_ip, _, ports = spec.rpartition(":")
    host_ip, _, host_port = host_ip.rpartition(":") if ":" in host_ip else ("", "", host_ip)
    host_ip = host_ip.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host_ip)
        port = Port(host_ip, int(host_port), int(ports), protocol)
    except ValueError:
        port = None
    if port is None or protocol not in ("tcp", "udp") or \
            not (0 < port.host_port < 65536 and 0 < port.container_port < 65536):
        raise ValueError(f"invalid port {text!r}: use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], "
                         "as in -p 8080:80")
    return port


class Proxy:
    """One published port: the listening socket on the host, relaying to the container."""

    def __init__(self, port: Port):
        self.port = port
        family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
        kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
        self.listener = socket.socket(family, kind)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((port.host_ip, port.host_port))
            if kind == socket.SOCK_STREAM:
                self.listener.listen(128)
        except OSError as error:
            self.listener.close()
            raise RuntimeFailure(f"cannot publish {port}: {error.strerror} (choose another host "
                                 "port, or stop what uses it)") from None

    def start(self, address: str) -> None:
        target = (address, self.port.container_port)
        relay = self._accept if self.port.protocol == "tcp" else self._datagrams
        threading.Thread(target=relay, args=(target,), daemon=True).start()

    def close(self) -> None:
        # shutdown() wakes a thread blocked in accept() on this socket; close() alone would not.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def _accept(self, target) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return                      # closed: the container has ended
            threading.Thread(target=_connect_and_relay, args=(client, target), daemon=True).start()

    def _datagrams(self, target) -> None:
        """UDP: one connected socket to the container per client, whose replies go back to it."""
        upstream = {}
        while True:
            try:
                data, client = self.listener.recvfrom(65536)
            except OSError:
                return
            if client not in upstream:
                upstream[client] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                upstream[client].connect(target)
                threading.Thread(target=self._replies, args=(upstream[client], client),
                                 daemon=True).start()
            upstream[client].send(data)

    def _replies(self, upstream: socket.socket, client) -> None:
        while True:
            try:
                self.listener.sendto(upstream.recv(65536), client)
            except OSError:
                return


def _connect_and_relay(client: socket.socket, target) -> None:
    try:
        server = socket.create_connection(target)
    except OSError:
        client.close()                      # nothing listens in the container: refuse too
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_splice, args=(server, client), daemon=True)
    back.start()
    _splice(client, server)
    back.join()
    client.close()
    server.close()


def _splice(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until end of file, socket to pipe to socket inside the kernel
    (splice(2)); then pass the end of file on (shutdown SHUT_WR), as a TCP half-close."""
    pipe_read, pipe_write = os.pipe()
    try:
        while True:
            moved = os.splice(source.fileno(), pipe_write, SPLICE_CHUNK)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(pipe_read, sink.fileno(), moved)
    except OSError:
        pass                                # a reset on either side ends the relay
    finally:
        os.close(pipe_read)
        os.close(pipe_write)
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
