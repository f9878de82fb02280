"""--explain: each step told as it is taken, the same way by minirun and minivm.

    0.83 ms  minirun[4012] cgroup       /sys/fs/cgroup/minirun/<id>: memory.max=33554432
   19.59 ms  minirun[1] pivot_root   /var/lib/minirun/containers/<id>/merged is now /
   41.07 ms  minivm[4077] network      tap tap8d2f... on minirun0, up

The milliseconds count from the start of the run, so the gaps show where its time goes. The
bracket names who speaks: the program and its PID as it sees it, so the container's PID 1,
which sees itself as PID 1 of its own namespace, tells its steps apart from the runtime's on
the host. The lines go to stderr, flushed one by one: stdout is the app's.
"""
import os
import sys
import time


def narrator(program: str, explain: bool):
    """A `say(step, detail)` that prints one line a step if `explain`, and does nothing if not."""
    if not explain:
        return lambda step, detail: None
    began = time.monotonic()

    def say(step: str, detail: str) -> None:
        elapsed = 1000 * (time.monotonic() - began)
        print(f"{elapsed:7.2f} ms  {program}[{os.getpid()}] {step:<12} {detail}", file=sys.stderr,
              flush=True)
    return say
