"""`minivm exec`: one more command in a running guest, through a small agent in its init.

A container's `exec` is a host process that joins the container's namespaces (setns(2)): the
container is kernel state on the host's own kernel. A VM's processes live in another kernel,
which nothing on the host can enter; something inside must start the command. Real systems put an
agent there: the QEMU Guest Agent on a virtio-serial port, Kata Containers' kata-agent on vsock.
minivm's agent is a loop of the guest init (minivm/guest-init.sh, `agent`), on a fourth
virtio-serial port, `minivm.agent`, beside the app's three: the device is already there, its
driver loaded, so the agent costs no more virtual hardware (vsock would be a device and two
modules more, and this host has no /dev/vhost-vsock; a second UART would be slow, a byte per
emulated I/O instruction, and a console the kernel may write into).

The port is one byte stream with one reader in the guest, so commands must take turns, and a
reply must reach the request that asked for it even if that client has gone. So the host end
belongs to the supervisor, as the app's ports do (a socket pair given to QEMU), and a `Relay`
serves exec.sock in the VM's state directory: one request at a time, each reply read whole from
the port and passed on. That is how `docker exec` reaches a container too: through its shim.

On the wire, both legs (client -> relay -> guest and back) carry:
    request   one line: the command's words, shell-quoted, then base64 (any byte fits a line)
    reply     "exit STATUS OUT ERR\\n", then OUT bytes of stdout and ERR bytes of stderr
The guest keeps the command's output in files until it ends: no streaming, no stdin, no tty.
"""
import asyncio
import base64
import os
import shlex
import signal
import socket
from pathlib import Path

from minirun.errors import RuntimeFailure


def request(command: list[str]) -> bytes:
    return base64.b64encode(" ".join(shlex.quote(word) for word in command).encode()) + b"\n"


def parse_header(line: bytes) -> tuple[int, int, int]:
    """"exit STATUS OUT ERR" -> (status, stdout bytes, stderr bytes)."""
    words = line.split()
    if len(words) != 4 or words[0] != b"exit" or not all(word.isdigit() for word in words[1:]):
        raise ValueError(f"not an agent's reply: {line[:80]!r}")
    return int(words[1]), int(words[2]), int(words[3])


class Relay:
    """In the supervisor: the host end of the agent's port, and exec.sock for the clients."""

    def __init__(self, port: socket.socket, running):
        self.port = port
        self.running = running      # False while the VM is paused (QMP stop): no one would answer
        self.turn = asyncio.Lock()

    async def serve(self, path: Path) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(sock=self.port)
        server = await asyncio.start_unix_server(self._client, path=str(path))
        try:
            async with server:
                await server.serve_forever()
        finally:
            path.unlink(missing_ok=True)    # (Python 3.11 leaves a unix server's file behind)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not self.running():
                refusal = b"minivm: the VM is paused (QMP stop): `minivm qmp NAME cont` resumes it\n"
                writer.write(b"exit 125 0 %d\n" % len(refusal) + refusal)
                await writer.drain()
                return
            async with self.turn:
                if reader.at_eof():
                    return          # its client gave up while waiting its turn: do not run it
                self.writer.write(line.strip() + b"\n")
                await self.writer.drain()
                header = await self.reader.readline()
                status, out, err = parse_header(header)
                output = await self.reader.readexactly(out + err)
            writer.write(header + output)
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass                # the client went away, or the guest: the client sees EOF
        finally:
            writer.close()


def run(socket_path: Path, command: list[str]) -> int:
    """`minivm exec`: run `command` in the guest; its stdout and stderr on ours; its status."""
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(str(socket_path))
        except OSError as error:
            raise RuntimeFailure(f"cannot reach the VM's agent ({error.strerror or error}): is it "
                                 "still running? See `minivm ps -a`") from None
        client.sendall(request(command))
        with client.makefile("rb") as replies:
            header = replies.readline()
            try:
                status, out, err = parse_header(header)
            except ValueError:
                raise RuntimeFailure("the VM stopped before the command ended") from None
            try:
                for fd, size in ((1, out), (2, err)):
                    data = replies.read(size)
                    while data:
                        data = data[os.write(fd, data):]
            except BrokenPipeError:     # `minivm exec ... | head -1`: as a shell reports SIGPIPE
                return 128 + signal.SIGPIPE
    return status
