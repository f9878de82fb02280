"""The machine's life, from QEMU's start to its end: the hypervisor's control plane.

QEMU is started with a QMP monitor on one end of a socket pair
(https://www.qemu.org/docs/master/interop/qmp-spec.html), and the guest starts booting at once.
Meanwhile minivm connects with `qemu.qmp`'s QMPClient, asks `query-status` (the vCPUs run), and
follows several things at once: QMP events (SHUTDOWN, STOP...), the guest's console on ttyS0 (the
init's "@minivm:" reports), the app's output (minivm/streams.py), and the QEMU process itself.
(QEMU could also be started paused, with -S, and resumed with QMP's `cont`; that would put QMP's
start-up on the boot's critical path.)

The end of a normal run: the guest init reports the app's exit status and how many bytes the
guest sent on stdout and stderr; once that many have reached minivm's own descriptors, nothing
is in flight any more, and minivm ends QEMU with `quit` (its disks are read-only: nothing to flush).

Stopping early is done as on a real machine: first `system_powerdown`, which presses the virtual
ACPI power button, then after a grace period `quit` (pull the plug), and if QEMU does not even
answer, SIGKILL. A foreground guest never answers the button. On microvm the press is an ACPI GED
event that the kernel turns into a notification for the power-button device (PNP0C0C), whose
driver (`button`) Debian builds as a module that a foreground boot's initramfs does not carry, so
the kernel drops it; and even that driver only reports the press as an input event, for a daemon
(acpid, logind) to act on: no signal reaches PID 1 for the guest's busybox init to trap. So every
stop of a foreground VM (Ctrl-C, SIGTERM, --timeout, a watchdog) waits the whole GRACE before
`quit`: Ctrl-C gives 130 after about 1 s. A detached VM (`boot -d`, minivm/supervisor.py) carries
the driver and evdev, and its init reads the press and sends the app SIGTERM: that is what
`minivm stop` relies on. A closed stdout pulls the plug at once: the app is as good as killed by
SIGPIPE.

A detached VM has more: a second QMP monitor on a socket file, for other commands
(minivm/monitor.py), whose `quit` this machine learns of from the SHUTDOWN event every monitor
gets; a guest agent's port, served to `minivm exec` (minivm/agent.py); and its output goes into
log files instead of minivm's stdout and stderr.

Whatever happens QEMU is reaped, and nothing is left on disk: the sockets are socket pairs with no
file name, and the initramfs is handed over as a memfd, a file that lives only in memory while some
process holds it open. (A detached VM's two socket files live in its state directory, which `rm`,
`--rm` or `gc` removes.)
"""
import asyncio
import errno
import os
import re
import signal
import socket
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from minirun.errors import RuntimeFailure
from minirun.security import die_with_parent
from minivm.hardware import MIB, QEMU, STREAMS, Hardware, Wiring
from minivm.streams import AppStreams

BOOT_WATCHDOG = 60.0        # seconds from QEMU's start to the guest init's first report; a boot
                            # takes about 1.5 s under TCG, so only a hung one gets near this
OUTPUT_WATCHDOG = 30.0      # seconds the app's output may stand still after its end, with
                            # bytes missing; a machine whose app has ended is then stopped
QMP_TIMEOUT = 10.0          # qemu.qmp has no timeouts of its own: every call is bounded here
GRACE = 1.0                 # seconds a guest gets to react to the power button before `quit`
                            # (this one never does: see above)
REPORT = "@minivm: "        # how the guest init's lines on the console start (guest-init.sh)
PANIC = "Kernel panic - not syncing"
# What the guest kernel prints when memory runs out: its OOM killer at work, or a kernel that
# could not even allocate what it needed to go on.
OUT_OF_MEMORY = re.compile(r"Out of memory|deadlocked on memory|Initramfs unpacking failed")


@dataclass
class Console:
    """What the guest said on ttyS0 so far."""
    init_running: asyncio.Event = field(default_factory=asyncio.Event)
    app_running: bool = False   # reported by a detached VM's init: the app and the control
                                # plane (power button, agent) are up
    app_finished: asyncio.Event = field(default_factory=asyncio.Event)
    exit_status: int | None = None
    sent: dict[str, int] = field(default_factory=dict)  # bytes the guest sent on stdout, stderr
    failure: str = ""           # why the guest init could not run the app
    panic: str = ""
    out_of_memory: str = ""     # the kernel's first line saying memory ran out
    last_line: str = ""


@dataclass
class Detached:
    """What the supervisor of a detached VM (minivm/supervisor.py) gives its Machine: where the
    app's output goes, where the other commands reach the VM, whom to tell it has booted."""
    output: tuple               # the app's stdout and stderr: two minirun.supervisor.Log files
    monitor_path: Path          # the second QMP monitor's socket (`minivm qmp`, `minivm stop`)
    exec_path: Path             # where `minivm exec` reaches the guest agent (minivm/agent.py)
    booted: Callable[[int], None]   # called with QEMU's pid once the guest runs the app
    paused: Callable[[bool], None]  # called as a QMP `stop` or `cont` stops or resumes the vCPUs


class Machine:
    def __init__(self, hardware: Hardware, initramfs: bytes, say=lambda step, detail: None,
                 verbose: bool = False, explain: bool = False,
                 drivers: dict[str, list[str]] | None = None,
                 tap_fd: int = -1, detached: Detached | None = None):
        self.hardware = hardware
        self.detached = detached
        self.tap_fd = tap_fd            # the NIC's host end (minirun.network.Tap), or -1
        self.initramfs = initramfs
        self.drivers = drivers or {}    # for --explain: hardware -> the modules loaded for it
        self.say = say                  # minirun.narrator's say(step, detail): --explain, --verbose
        self.verbose = verbose
        self.explain = explain
        self.console = Console()
        self.qemu_errors: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self.qmp = None
        self.streams: AppStreams | None = None
        self.paused = False             # its vCPUs stopped by a QMP `stop` (events STOP/RESUME)
        self.press_button = True        # stopping: try the power button before pulling the plug
        self.listeners: list[asyncio.Task] = []     # console, QMP events, QEMU's stderr...
        self.console_reader: asyncio.Task | None = None

    def run(self, timeout: float | None) -> int:
        """Boot, run the app, power off; the app's exit status. Terminal settings are restored."""
        saved = termios.tcgetattr(sys.stdin) if self.hardware.interactive else None
        try:
            return asyncio.run(self._run(timeout))
        finally:
            if saved is not None:
                termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)

    # -- the story of one boot -----------------------------------------------------------------
    async def _run(self, timeout: float | None) -> int:
        started = time.monotonic()
        # From here on Ctrl-C is a request to stop in order, even before QEMU exists.
        stop_request = self._catch_stop_signals()
        console, console_for_qemu = socket.socketpair()
        monitor, monitor_for_qemu = socket.socketpair()
        ports = {} if self.hardware.interactive else \
            {stream: socket.socketpair() for stream in STREAMS}     # (ours, QEMU's)
        if self.detached:
            ports["agent"] = socket.socketpair()
        for_qemu = [console_for_qemu, monitor_for_qemu, *(theirs for _, theirs in ports.values())]
        try:
            initrd = os.memfd_create("minivm-initramfs")
            try:
                with open(initrd, "wb", closefd=False) as memfd:
                    memfd.write(self.initramfs)
                wiring = Wiring(console_fd=console_for_qemu.fileno(),
                                monitor_fd=monitor_for_qemu.fileno(), initrd=f"/dev/fd/{initrd}",
                                streams={stream: theirs.fileno()
                                         for stream, (_, theirs) in ports.items()
                                         if stream in STREAMS},
                                tap_fd=self.tap_fd)
                if self.detached:
                    wiring.agent_fd = ports["agent"][1].fileno()
                    wiring.monitor_path = str(self.detached.monitor_path)
                if not stop_request.done():
                    await self._launch(wiring, keep_open=[*for_qemu, initrd])
            finally:
                # QEMU holds its own copies now; ours would only keep the sockets from closing.
                for sock in for_qemu:
                    sock.close()
                os.close(initrd)
            if self.process is None:                # Ctrl-C before QEMU was started
                return 128 + stop_request.result()
            try:
                if ports:
                    self.streams = AppStreams({stream: ours for stream, (ours, _) in ports.items()
                                               if stream in STREAMS}, *self._stdio())
                    self.streams.start()
                if self.detached:
                    from minivm.agent import Relay
                    relay = Relay(ports["agent"][0], running=lambda: not self.paused)
                    self._in_background(relay.serve(self.detached.exec_path))
                self.console_reader = self._in_background(self._read_console(console))
                await self._connect(monitor)
                return await self._supervise(started, timeout, stop_request)
            finally:
                await self._stop()
                for task in self.listeners:
                    task.cancel()
                await asyncio.gather(*self.listeners, return_exceptions=True)
        finally:
            for sock in [console, monitor, *(ours for ours, _ in ports.values())]:
                sock.close()

    def _stdio(self) -> tuple:
        """The app's stdin, stdout and stderr: minivm's own, or for a detached VM nothing in
        and two log files out."""
        if not self.detached:
            return ()
        return ((os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), *self.detached.output),)

    async def _launch(self, wiring: Wiring, keep_open: list) -> None:
        command = self.hardware.command(wiring)
        if self.explain:
            for part in self.hardware.parts(wiring):
                flags = " ".join(part.flags) or "(no flags: already on the board)"
                self.say("hardware", f"{flags}\n        {part.why}")
                for need in part.needs:
                    self.say("modules", f"for {need}: "
                             f"{', '.join(self.drivers.get(need, []))} (minivm/modules.py)")
            for argument, why in self.hardware.kernel_arguments():
                self.say("cmdline", f"{argument}\n        {why}")
        fds = [item if isinstance(item, int) else item.fileno() for item in keep_open]
        if wiring.tap_fd >= 0:
            fds.append(wiring.tap_fd)       # QEMU's copy; the tap goes when both are closed
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command, pass_fds=fds,
                # Only an -it session's terminal is QEMU's (its ttyS1 chardev is stdio); else
                # the app's streams go through minivm, and QEMU has no business with them.
                stdin=None if self.hardware.interactive else asyncio.subprocess.DEVNULL,
                stdout=None if self.hardware.interactive else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # Its own session: Ctrl-C on the terminal reaches minivm, which stops the VM in
                # order, instead of killing QEMU behind minivm's back.
                start_new_session=True, preexec_fn=die_with_parent)
        except FileNotFoundError:
            raise RuntimeFailure(f"{QEMU} not found: install it with "
                                 "`apt-get install qemu-system-x86`") from None
        self.say("qemu", f"started, pid {self.process.pid}")
        self._in_background(self._collect_qemu_errors())

    async def _connect(self, monitor: socket.socket) -> None:
        from qemu.qmp import QMPClient          # imported here: only a boot needs it (~100 ms)
        self.qmp = QMPClient(self.hardware.name)
        try:
            await asyncio.wait_for(self.qmp.connect(monitor), QMP_TIMEOUT)
            status = await self._execute("query-status")
        except Exception:
            await self._exited_within(QMP_TIMEOUT)
            if self.process.returncode == 0:     # a guest so quick that it was gone already
                self.qmp = None
                return
            raise RuntimeFailure(f"QEMU did not start: {self._qemu_error()}") from None
        self.say("qmp", f"connected; the machine is {status['status']}")
        self._in_background(self._follow_events())

    async def _supervise(self, started: float, timeout: float | None,
                         stop_request: asyncio.Future) -> int:
        """Follow the guest through booting, running the app and delivering its output.

        Each phase ends with a sign: the init's first report, its report of the app's exit (with
        the bytes sent), the last of those bytes written out. QEMU exiting, a stop request or a
        broken stdout ends any phase early. --timeout bounds the first two, up to the app's exit;
        watchdogs bound what the app has no part in: booting, and output that stops coming.
        """
        exited = self._in_background(self.process.wait())
        broken = self.streams.broken if self.streams else asyncio.get_running_loop().create_future()
        deadline = started + timeout if timeout else None

        async def first_sign(*signs: asyncio.Future, bounds: tuple[float | None, ...]) -> bool:
            """Wait for a sign, QEMU's exit, a stop request or a broken output, up to the nearest
            of `bounds`."""
            limits = [bound for bound in bounds if bound is not None]
            done, _ = await asyncio.wait({exited, stop_request, broken, *signs},
                                         timeout=max(0.0, min(limits)) if limits else None,
                                         return_when=asyncio.FIRST_COMPLETED)
            return bool(done)

        def time_left() -> float | None:
            return deadline - time.monotonic() if deadline else None

        def past_timeout() -> RuntimeFailure:
            return RuntimeFailure(f"the guest ran past --timeout {timeout:g}s; it was stopped")

        booted = self._in_background(self.console.init_running.wait())
        if not await first_sign(booted, bounds=(BOOT_WATCHDOG, time_left())):
            if deadline and time.monotonic() >= deadline:
                raise past_timeout()
            self._check_memory()
            raise RuntimeFailure(
                f"the guest showed no sign of life {BOOT_WATCHDOG:g} s after it started (last "
                f"console line: {self.console.last_line or 'none'!r}); it was stopped; run with "
                "--verbose to watch its console")
        if booted.done():
            self.say("guest", f"the init reported after {time.monotonic() - started:.2f} s")
        finished = self._in_background(self.console.app_finished.wait())
        if booted.done() and not await first_sign(finished, bounds=(time_left(),)):
            raise past_timeout()
        # The app is done, so --timeout has nothing more to bound: its output may take as long
        # as its reader takes, as on the host; only output that stops coming is a fault.
        if finished.done() and self.streams:
            delivery = self._in_background(self.streams.delivered(self.console.sent,
                                                                   OUTPUT_WATCHDOG))
            await first_sign(delivery, bounds=())
            if delivery.done() and not delivery.result():
                print(f"minivm: the app's output stopped short after it ended "
                      f"({self.streams.missing()}); the VM was stopped", file=sys.stderr)
                return self.console.exit_status
        if stop_request.done():
            number = stop_request.result()
            print(f"minivm: {signal.Signals(number).name}: the VM was stopped", file=sys.stderr)
            return 128 + number
        if broken.done():
            self.press_button = False           # the app is as good as dead: no need to ask
            error = broken.result()
            if error.errno == errno.EPIPE:      # the reader went away: what SIGPIPE does on a host
                return 128 + signal.SIGPIPE
            raise RuntimeFailure(f"writing the app's output failed: {error.strerror}; the VM "
                                 "was stopped")
        if finished.done() and self.process.returncode is None:
            # Every byte of output is here: nothing is lost by switching the machine off.
            self.say("qmp", "quit (the app has ended and its output is all here)")
            await self._quit()
        # QEMU is gone, so its end of the console is closed: read up to the end of what it said.
        await asyncio.wait({self.console_reader}, timeout=QMP_TIMEOUT)
        if self.console.exit_status is None and self.qmp is not None:
            await self._hang_up()           # so that every event QEMU sent has been read
        return self._outcome()

    def _outcome(self) -> int:
        """The app's exit status as the guest reported it, or why there is none."""
        self.say("qemu", f"exited with status {self.process.returncode}")
        if self.console.exit_status is not None:
            return self.console.exit_status
        if self._switched_off_by_another_client():
            # As `docker stop` ends in SIGKILL after its grace period: the app did not end.
            print("minivm: the VM was switched off (QMP quit) before its app ended",
                  file=sys.stderr)
            return 128 + signal.SIGKILL
        self._check_memory()
        if self.console.failure:
            raise RuntimeFailure(f"the guest could not run the app: {self.console.failure}")
        if self.console.panic:
            raise RuntimeFailure(f"the guest kernel panicked: {self.console.panic}")
        if self.process.returncode != 0:
            raise RuntimeFailure(f"QEMU failed: {self._qemu_error()}")
        raise RuntimeFailure("the guest stopped without reporting the app's exit status; run "
                             "with --verbose to see its console")

    def _switched_off_by_another_client(self) -> bool:
        """Whether QEMU ended on a `quit` that minivm did not send: `minivm stop` pulling the
        plug after its grace period, or a `minivm qmp NAME quit`. QEMU tells every monitor why
        it shuts down, in a SHUTDOWN event (reason "host-qmp-quit"); this one never sent it."""
        return self.qmp is not None and self.process.returncode == 0 and any(
            event["event"] == "SHUTDOWN" and event.get("data", {}).get("reason") == "host-qmp-quit"
            for event in self.qmp.events.history)

    def _check_memory(self) -> None:
        """A guest that ended (or hung) without the app's status, after the kernel said memory
        ran out: that is the one line, whatever panic or silence followed. (An app that the OOM
        killer ends while the init lives on is only the app's status, 137, as in a container.)"""
        if self.console.out_of_memory:
            raise RuntimeFailure(f"the guest ran out of memory (its kernel said: "
                                 f"{self.console.out_of_memory!r}); give it more with --memory "
                                 f"(it had {self.hardware.memory // MIB}M)")

    # -- listening to the guest ----------------------------------------------------------------
    async def _read_console(self, console: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=console)
        try:
            while line := await reader.readline():
                self._parse_console_line(line.decode(errors="replace").rstrip("\r\n"))
        finally:
            writer.close()

    def _parse_console_line(self, text: str) -> None:
        """One line of the guest's console: a report of the guest init, a panic, or noise.

        A report garbled by a kernel message landing in the middle of its line is noise too, and
        the reader goes on: an exit report so lost ends as "stopped without reporting the app's
        exit status", not as a console reader dead of a ValueError.
        """
        self.console.last_line = text or self.console.last_line
        if self.verbose:
            print(f"console: {text}", file=sys.stderr, flush=True)
        text = re.sub(r"^\[[ 0-9.]+\] ", "", text)     # the kernel log's timestamp, if shown
        if text.startswith(REPORT):
            report = text.removeprefix(REPORT)
            if report == "init running":
                self.console.init_running.set()
            elif report == "app running" and self.detached and not self.console.app_running:
                self.console.app_running = True
                self.detached.booted(self.process.pid)
            elif status := re.fullmatch(r"exit ([0-9]{1,3})(?: out=([0-9]+) err=([0-9]+))?",
                                        report):
                self.console.exit_status = int(status.group(1))
                if status.group(2) is not None:
                    self.console.sent = {"stdout": int(status.group(2)),
                                         "stderr": int(status.group(3))}
                self.console.app_finished.set()
            elif report.startswith("fail "):
                self.console.failure = report.removeprefix("fail ")
        elif PANIC in text:
            self.console.panic = text[text.index(PANIC):]
        if OUT_OF_MEMORY.search(text) and not self.console.out_of_memory:
            self.console.out_of_memory = text

    async def _follow_events(self) -> None:
        async for event in self.qmp.events:
            self.say("qmp", f"event {event['event']} {event.get('data', '')}")
            if event["event"] in ("STOP", "RESUME"):    # `minivm qmp NAME stop`, then `cont`
                self.paused = event["event"] == "STOP"
                if self.detached:
                    self.detached.paused(self.paused)

    async def _collect_qemu_errors(self) -> None:
        while line := await self.process.stderr.readline():
            self.qemu_errors.append(line.decode(errors="replace").strip())
            if self.verbose:
                print(f"qemu: {self.qemu_errors[-1]}", file=sys.stderr, flush=True)

    def _in_background(self, coroutine) -> asyncio.Task:
        """Run `coroutine` beside the supervision, as a task cancelled when the machine ends."""
        self.listeners.append(asyncio.get_running_loop().create_task(coroutine))
        return self.listeners[-1]

    def _qemu_error(self) -> str:
        return self.qemu_errors[-1] if self.qemu_errors else \
            f"{QEMU} exited with status {self.process.returncode}"

    # -- stopping ------------------------------------------------------------------------------
    async def _execute(self, command: str) -> dict:
        return await asyncio.wait_for(self.qmp.execute(command), QMP_TIMEOUT)

    async def _quit(self) -> None:
        """Pull the plug: QMP `quit`, and QEMU is reaped (_stop sends SIGKILL if it is not)."""
        if self.qmp is not None:
            try:
                await self._execute("quit")
            except Exception:                   # QEMU went away meanwhile, or will not answer
                pass
        await self._exited_within(QMP_TIMEOUT)

    async def _stop(self) -> None:
        """Power button, then plug, then SIGKILL; in every case QEMU is reaped."""
        try:
            if self.process.returncode is None and self.qmp is not None:
                for command in ("system_powerdown", "quit")[0 if self.press_button else 1:]:
                    self.say("qmp", command)
                    try:
                        await self._execute(command)
                    except Exception:           # QEMU went away meanwhile, or will not answer
                        pass
                    if await self._exited_within(GRACE):
                        break
        finally:
            if self.process.returncode is None:
                self.say("qemu", f"does not answer: SIGKILL to pid {self.process.pid}")
                self.process.kill()
            await self.process.wait()
            await self._hang_up()

    async def _hang_up(self) -> None:
        """Close minivm's QMP session; once this returns, every message QEMU sent has been read."""
        if self.qmp is not None:
            try:
                await asyncio.wait_for(self.qmp.disconnect(), QMP_TIMEOUT)
            except Exception:                   # after `quit` the library reports EOF here
                pass

    async def _exited_within(self, seconds: float) -> bool:
        """Wait up to `seconds` for QEMU to exit (and reap it); whether it did."""
        try:
            await asyncio.wait_for(self.process.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    def _catch_stop_signals(self) -> asyncio.Future:
        """Ctrl-C, SIGTERM or SIGHUP become a request to stop the VM in order."""
        loop = asyncio.get_running_loop()
        request = loop.create_future()
        def stop(number: int) -> None:
            if not request.done():
                request.set_result(number)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(number, stop, number)
        return request
