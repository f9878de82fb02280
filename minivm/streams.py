"""The app's stdin, stdout and stderr on the host side: minivm's own descriptors joined to the
guest's three virtio-serial ports (minivm/hardware.py), whose host ends are sockets.

A container's app simply inherits the runtime's descriptors. A VM's app cannot: its bytes cross
the virtual hardware, so minivm copies them, one thread per stream with plain blocking calls.
A blocking write to stdout is how a pipe paces its writer: while the reader does not read, the
copy waits, the socket fills, QEMU stops taking buffers from the port, and the app's own write
in the guest blocks, exactly as it would on the host. Meanwhile the event loop must stay free for
QMP and Ctrl-C, and making fd 1 non-blocking would change the file description minivm shares
with the shell and the rest of the pipeline, so the copies are threads.

When the reader of stdout goes away, the write fails with EPIPE (Python ignores SIGPIPE, so it is
an error, not a signal): `broken` tells the supervisor, which stops the machine and exits 141,
128 + SIGPIPE, as the app itself would have ended on the host.
"""
import asyncio
import functools
import os
import socket
import threading

CHUNK = 1 << 16


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a pipe may take part of a large write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Outflow(threading.Thread):
    """The app's stdout or stderr: from the host end of its port to minivm's fd 1 or 2, or, for
    a detached VM, to a bounded log file (minirun.supervisor.Log, which has a write())."""

    def __init__(self, port: socket.socket, target, streams: "AppStreams"):
        super().__init__(name=f"{target}", daemon=True)
        self.port, self.streams = port, streams
        self.write = functools.partial(write_all, target) if isinstance(target, int) \
            else target.write
        self.copied = 0                     # bytes written to `target` so far
        self.writing = False                # in a write: the reader sets the pace, not the guest
        self.expected: int | None = None    # how many the guest sent, once it has said
        self.lock = threading.Lock()
        self.complete = asyncio.Event()     # set in the event loop when copied reaches expected

    def run(self) -> None:
        try:
            while data := self.port.recv(CHUNK):
                self.writing = True
                self.write(data)
                self.writing = False
                with self.lock:
                    self.copied += len(data)
                    done = self.expected is not None and self.copied >= self.expected
                if done:
                    self.streams.tell(self.complete.set)
        except OSError as error:            # EPIPE: no reader any more; or the disk is full...
            self.streams.tell(self.streams.break_, error)

    def expect(self, total: int) -> None:
        """The guest has sent `total` bytes on this stream in all (called in the event loop)."""
        with self.lock:
            self.expected = total
            done = self.copied >= total
        if done:
            self.complete.set()


class Inflow(threading.Thread):
    """minivm's stdin, to the app's stdin port, then the end of the stream.

    At the end, shutdown(SHUT_WR) tells QEMU there is no more while what is still in the socket
    stays readable: QEMU reads up to the end, the guest's driver marks the port closed by the
    host, and the app's next read() returns 0. A close() would be a hang-up (POLLHUP), on which
    QEMU drops the connection with the unread bytes still in it.
    """

    def __init__(self, port: socket.socket, source: int):
        super().__init__(name="stdin", daemon=True)
        self.port, self.source = port, source

    def run(self) -> None:
        try:
            # A terminal is left alone, as `docker run` without -i does: copying it would take
            # what the user types for the shell after minivm, and stop a background minivm
            # (SIGTTIN). Use -it to talk to the app.
            if not os.isatty(self.source):
                while data := os.read(self.source, CHUNK):
                    self.port.sendall(data)
        except OSError:         # stdin is closed or unreadable: the app gets an empty one; or the
            pass                # machine is gone: nobody wants the rest
        try:
            self.port.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class AppStreams:
    """The three copies of one boot, and what the supervisor waits on."""

    def __init__(self, ports: dict[str, socket.socket], stdio: tuple = (0, 1, 2)):
        """`stdio`: where the app's stdin comes from (a descriptor), where its stdout and
        stderr go (descriptors, or minirun.supervisor.Log files)."""
        self.loop = asyncio.get_running_loop()
        self.broken: asyncio.Future = self.loop.create_future()    # an OSError writing output
        self.inflow = Inflow(ports["stdin"], stdio[0])
        self.outflows = {"stdout": Outflow(ports["stdout"], stdio[1], self),
                         "stderr": Outflow(ports["stderr"], stdio[2], self)}

    def start(self) -> None:
        for flow in (self.inflow, *self.outflows.values()):
            flow.start()

    def tell(self, callback, *args) -> None:
        """From a copying thread: run `callback` in the event loop (unless it has ended)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:        # the loop is closed: minivm is on its way out
            pass

    def break_(self, error: OSError) -> None:
        if not self.broken.done():
            self.broken.set_result(error)

    async def delivered(self, totals: dict[str, int], patience: float) -> bool:
        """Wait until each output stream has copied as many bytes as the guest sent on it
        (`totals`); False if none came from the guest for `patience` seconds while some were
        missing. A reader that takes its time is no fault: a copy waiting in write() is fine."""
        for name, total in totals.items():
            self.outflows[name].expect(total)
        waits = [asyncio.ensure_future(flow.complete.wait()) for flow in self.outflows.values()]
        try:
            moved = -1
            while not all(flow.complete.is_set() for flow in self.outflows.values()):
                copied = sum(flow.copied for flow in self.outflows.values())
                if copied == moved and not any(flow.writing for flow in self.outflows.values()):
                    return False
                moved = copied
                await asyncio.wait(waits, timeout=patience)
            return True
        finally:
            for wait in waits:
                wait.cancel()

    def missing(self) -> str:
        return ", ".join(f"{name} {flow.copied} of {flow.expected} bytes"
                         for name, flow in self.outflows.items() if not flow.complete.is_set())
