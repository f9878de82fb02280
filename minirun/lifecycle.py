"""A running container seen from outside: found by name or id, held by handles, stopped.

`minirun exec` and `minirun stop` start from a name the user typed and end at a process. On the
way, a PID is only a number that the kernel gives to the next process once this one has ended,
so each PID is turned into a handle first (a pidfd, pidfd_open(2); a namespace file), and only
then checked against the record's start time: from that moment on the handle can only reach
the container's own process.
"""
import os
import select
import signal

from minirun import state
from minirun.errors import RuntimeFailure


def find_running(target: str) -> state.ContainerRecord:
    """The running container whose name is `target`, or whose id starts with it."""
    running = [r for r in state.containers() if state.is_alive(r) and state.pid1_is_running(r)]
    matches = [r for r in running if target and r.name == target] or \
              [r for r in running if target and r.id.startswith(target)]
    if len(matches) != 1:
        what = "no running container" if not matches else "more than one container matches"
        raise RuntimeFailure(f"{what} {target!r}: give a name or id from `minirun ps`")
    return matches[0]


def confirm_still_running(record: state.ContainerRecord) -> None:
    """After a PID has been turned into a handle (a pidfd, a namespace fd), check that the
    process behind it is still the one the record names, by its start time."""
    if not (state.is_alive(record) and state.pid1_is_running(record)):
        raise RuntimeFailure(f"container {record.id[:12]} has just ended")


def stop(target: str, grace: float = 10.0) -> str:
    """`minirun stop`: SIGTERM, then SIGKILL if the container is still there after `grace`
    seconds, as `docker stop` does. Returns the container's id.

    SIGTERM goes to the runtime, which passes it on to PID 1 like any forwarded signal; a PID 1
    with no handler for it ignores it (see docs/minirun.md, "PID 1 is special"), which is what
    the SIGKILL is for: from outside its namespace, SIGKILL always reaches PID 1. Both go
    through pidfds, so a PID reused after the container ended cannot be hit.
    """
    record = find_running(target)
    runtime, pid1 = os.pidfd_open(record.runtime_pid), os.pidfd_open(record.pid)
    try:
        confirm_still_running(record)     # a pidfd pins its process: check that it is ours
        signal.pidfd_send_signal(runtime, signal.SIGTERM)
        if not select.select([runtime], [], [], grace)[0]:     # readable when it has exited
            try:
                signal.pidfd_send_signal(pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            select.select([runtime], [], [], 30)
    finally:
        os.close(runtime)
        os.close(pid1)
    return record.id


def kill(target: str, sig: int) -> str:
    """`minirun kill NAME` of a container of `minirun ps` (a `run -d` one, or one in the
    foreground): `sig` to its PID 1, as `docker kill` does, through a pidfd checked against the
    record's start time, as `stop` does. Returns the container's id."""
    record = find_running(target)
    pid1 = os.pidfd_open(record.pid)
    try:
        confirm_still_running(record)
        signal.pidfd_send_signal(pid1, sig)
    finally:
        os.close(pid1)
    return record.id
