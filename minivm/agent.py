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
serves exec.sock in the VM's state directory: one request at a time, its reply passed on frame
by frame as the guest sends it. That is how `docker exec` reaches a container too: through its
shim.

On the wire, both legs (client -> relay -> guest and back) carry:
    request   one line: the command's words, shell-quoted, then base64 (any byte fits a line)
    reply     frames, as the command writes: "o LEN\n" then LEN bytes of its stdout,
              "e LEN\n" then LEN bytes of its stderr, and last "x STATUS\n", its exit status
    hang-up   on the guest's leg alone, during an exec: "\n", its client has gone (below)
In the guest, the relay (minivm/relay.c, a static C program: framing binary data is beyond
busybox sh) runs the command with two pipes and writes each read of either as a frame, at most
FRAME_LIMIT bytes. Length-prefixed frames, as Docker multiplexes an exec's two streams on one
connection (an 8-byte binary header per frame, there): any byte may be in the data, nothing is
escaped, and a reader knows where each frame ends without looking inside it; each stream keeps
its own order; and the headers are text, readable by anyone who looks at the port. Every hop
holds a frame or so, never the output: when a reader is slow, its writer blocks, back to the
command's own write in the guest, so an output of any size streams through in bounded memory.

The client writes the stdout frames to its fd 1 and the stderr frames to its fd 2 as they come.
When it goes before the end (Ctrl-C, killed, or `| head -1`, which it reports as 141, a shell's
status for SIGPIPE), the supervisor's Relay hangs up: the guest's relay kills the command's
session, and the frames still on the way are read and dropped up to "x", so the port is ready
for the next request. No stdin, no tty.
"""
import asyncio
import base64
import os
import shlex
import signal
import socket
from pathlib import Path

from minirun.errors import RuntimeFailure

FRAME_LIMIT = 65536                 # relay.c's BUFFER_SIZE: the most one frame carries
STREAMS = {b"o": 1, b"e": 2}        # a frame's kind -> the client's file descriptor
HANG_UP = b"\n"


def request(command: list[str]) -> bytes:
    return base64.b64encode(" ".join(shlex.quote(word) for word in command).encode()) + b"\n"


def parse_frame(line: bytes) -> tuple[bytes, int]:
    """"o LEN", "e LEN" or "x STATUS" -> (kind, number)."""
    words = line.split()
    if not line.endswith(b"\n") or len(words) != 2 or words[0] not in (b"o", b"e", b"x") or \
            not words[1].isdigit() or (words[0] != b"x" and int(words[1]) > FRAME_LIMIT):
        raise ValueError(f"not an agent's frame: {line[:80]!r}")
    return words[0], int(words[1])


def frame(kind: bytes, data: bytes) -> bytes:
    return b"%s %d\n" % (kind, len(data)) + data


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
                writer.write(frame(b"e", refusal) + b"x 125\n")
                await writer.drain()
                return
            async with self.turn:
                if reader.at_eof():
                    return          # its client gave up while waiting its turn: do not run it
                self.writer.write(line.strip() + b"\n")
                await self.writer.drain()
                hang_up = asyncio.create_task(self._hang_up_when_gone(reader))
                try:
                    await self._pass_on(writer)
                finally:
                    hang_up.cancel()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass                # the client went away, or the guest: the client sees EOF
        finally:
            writer.close()

    async def _hang_up_when_gone(self, reader: asyncio.StreamReader) -> None:
        """A client sends nothing after its request: end of file is its going, even while the
        command is quiet (a write to it would tell only when there is output)."""
        try:
            while await reader.read(4096):
                pass
        except OSError:
            pass            # gone all the same
        self.writer.write(HANG_UP)

    async def _pass_on(self, client: asyncio.StreamWriter) -> None:
        """The guest's frames to the client, one at a time, up to the exit status; once the
        client has gone, read to the end all the same, and dropped."""
        while True:
            header = await self.reader.readline()
            kind, number = parse_frame(header)
            data = await self.reader.readexactly(number) if kind in STREAMS else b""
            if not client.is_closing():
                try:
                    client.write(header + data)
                    await client.drain()    # at the client's pace: one frame held at most
                except OSError:
                    client.close()
            if kind == b"x":
                return


def run(socket_path: Path, command: list[str]) -> int:
    """`minivm exec`: run `command` in the guest; its stdout and stderr on ours as they come;
    its status."""
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(str(socket_path))
        except OSError as error:
            raise RuntimeFailure(f"cannot reach the VM's agent ({error.strerror or error}): is it "
                                 "still running? See `minivm ps -a`") from None
        client.sendall(request(command))
        with client.makefile("rb") as replies:
            try:
                while True:
                    kind, number = parse_frame(replies.readline())
                    if kind == b"x":
                        return number
                    data = replies.read(number)
                    if len(data) < number:
                        raise ValueError("a frame cut short")
                    while data:
                        data = data[os.write(STREAMS[kind], data):]
            except ValueError:
                raise RuntimeFailure("the VM stopped before the command ended") from None
            except BrokenPipeError:     # `minivm exec ... | head -1`: as a shell reports SIGPIPE
                return 128 + signal.SIGPIPE
