"""`minivm qmp` and `minivm stop`: QMP from another process, through a VM's second monitor.

QMP, the QEMU Machine Protocol (https://www.qemu.org/docs/master/interop/qmp-spec.html), is the
hypervisor's API: JSON commands and their replies, and asynchronous events, over a socket. A
detached VM has two monitors (minivm/hardware.py, `_control_plane`). The supervisor keeps the
first, a socket pair that nobody else can reach, for the machine's life: it follows the events
and ends the machine when the app has ended. The second is a socket file in the VM's state
directory, where QEMU accepts one client at a time, each with a session of its own (the
capabilities handshake, its own replies, every event): `minivm qmp` and `minivm stop` connect
there, say what they have to say, and hang up.

Why not relay through the supervisor, as `minivm exec` is relayed (minivm/agent.py)? QEMU
already serves any number of monitors, each a full QMP session, and keeps them apart; a relay
would have to parse and route replies and events to copy what QEMU does. libvirt chooses the
other way (it holds the only monitor and offers an API of its own) because it must keep its own
idea of the machine true; minivm's supervisor needs only the events, and QEMU sends those to every
monitor: a `quit` sent here reaches the supervisor as a SHUTDOWN event "host-qmp-quit". The
socket's directory is 0700: QMP is full control of the machine, for its owner alone.
"""
import asyncio
from pathlib import Path

from minirun.errors import RuntimeFailure

TIMEOUT = 10.0          # qemu.qmp has no timeouts of its own


def execute(socket_path: Path, command: str, arguments: dict | None = None) -> dict:
    """Send one QMP command to the QEMU listening on `socket_path`; its reply's "return"."""
    return asyncio.run(_execute(socket_path, command, arguments))


async def _execute(socket_path: Path, command: str, arguments: dict | None) -> dict:
    from qemu.qmp import ExecuteError, QMPClient     # ~100 ms: only the commands that talk QMP
    client = QMPClient(socket_path.parent.name[:12])
    try:
        await asyncio.wait_for(client.connect(str(socket_path)), TIMEOUT)
    except asyncio.TimeoutError:
        raise RuntimeFailure(f"the VM's QMP monitor did not answer in {TIMEOUT:g} s: another "
                             "client may hold it (QEMU serves one at a time)") from None
    except Exception as error:
        raise RuntimeFailure(f"cannot reach the VM's QMP monitor ({error}): is it still "
                             "running? See `minivm ps -a`") from None
    try:
        return await asyncio.wait_for(client.execute(command, arguments), TIMEOUT)
    except ExecuteError as error:
        raise RuntimeFailure(f"QMP {command}: {error} ({error.error_class})") from None
    except (EOFError, ConnectionError):
        if command == "quit":           # QEMU hangs up as it exits, maybe before replying
            return {}
        raise RuntimeFailure(f"QMP {command}: QEMU closed the connection") from None
    except asyncio.TimeoutError:
        raise RuntimeFailure(f"QMP {command}: no reply in {TIMEOUT:g} s") from None
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), TIMEOUT)
        except Exception:               # after `quit` the library reports EOF here
            pass
