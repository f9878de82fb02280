"""Names: the container's /etc/hosts, /etc/hostname and /etc/resolv.conf, written at run time.

An image's /etc holds whatever its build machine left there. As Docker does, minirun writes
these three files for each container at run time, without changing the image: into the
container's own writable layer (the overlay's upper directory, in its bundle), before the
overlay is mounted. There they hide the image's files as any file the container writes would,
and they go with the bundle. (Docker bind-mounts files of its own over these paths instead,
which shows the host's disk in the container's /proc/mounts; this needs no mount at all.)

Names of other containers resolve through /etc/hosts: each container's file lists every container
on the bridge at the moment it starts (from the leases, network.running_peers). That is Docker's
old `--link` way, not its embedded DNS server: a container started later is not in the file of
one started earlier. A resolver would see them all, but it is one more process (or thread) per
host to keep alive and to reach from every namespace; static files need nothing to run, and
every libc reads them with no configuration (nsswitch.conf's "files" comes before "dns").
"""
import ipaddress
import os
from contextlib import suppress
from pathlib import Path

from minirun import names
from minirun.errors import RuntimeFailure

def check_add_host(text: str) -> tuple[str, str]:
    """--add-host NAME:IP, as Docker's (the IP may be IPv6, so split at the first colon)."""
    name, _, address = text.partition(":")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        name = ""
    if not name:
        raise ValueError(f"invalid --add-host {text!r}: use NAME:IP, as in db:10.0.0.5")
    # a line of every container's /etc/hosts: a name with a space or newline would add its own
    names.check_hostname(name, "--add-host name", names.DNS_NAME_MAX)
    return name, address


def write(directory: Path, *args) -> None:
    """Write the three files into `directory`, the upper layer's etc/: new, or kept from the
    container's last life (`minirun start`). What that life left there is the container's to
    choose, and is read from the host here, so no link is followed: an etc/ or etc/hosts made
    a symbolic link to a host path would make this write that host file (O_NOFOLLOW, and each
    file replaced, not written through). Nothing of the container runs meanwhile."""
    try:
        directory.mkdir(mode=0o755)
    except FileExistsError:
        pass
    try:
        home = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise RuntimeFailure(f"{directory} is not a directory (the container's last life made "
                             "/etc something else): `minirun rm` it and run a new one") from None
    try:
        for name, text in contents(*args).items():
            with suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=home)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=home)
            with open(fd, "w") as file:
                file.write(text)
    finally:
        os.close(home)


def contents(hostname: str, name: str, address: str | None, extra: list[tuple[str, str]],
             peers: list[dict], host_network: bool) -> dict[str, str]:
    """The three files' texts: the same for a container and for a VM's guest (minivm)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if address:
        lines.append(f"{address}\t{' '.join(dict.fromkeys([hostname, name]))}")
    else:
        lines.append(f"127.0.1.1\t{hostname}")
    for peer in peers:
        if peer.get("address") != address:
            lines.append(f"{peer['address']}\t{peer['name']}")
    lines += [f"{ip}\t{host}" for host, ip in extra]
    return {"hosts": "\n".join(lines) + "\n", "hostname": hostname + "\n",
            "resolv.conf": resolv_conf(host_network)}


def resolv_conf(host_network: bool, source: Path = Path("/etc/resolv.conf")) -> str:
    """The host's resolv.conf; without a loopback nameserver (127.0.0.53 of systemd-resolved,
    a local dnsmasq), which inside a network namespace of its own is the container's own
    loopback, where nothing answers. With --network host, the host's file as it is."""
    try:
        text = source.read_text()
    except OSError:
        text = ""
    if host_network:
        return text
    kept, dropped = [], []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and _is_loopback(words[1]):
            dropped.append(words[1])
        else:
            kept.append(line)
    if dropped:
        kept.append(f"# minirun: left out the host's loopback nameserver(s) {' '.join(dropped)}, "
                    "which cannot be reached from the container")
    return "\n".join(kept) + "\n"


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False
