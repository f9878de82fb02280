"""--explain: each step told as it is taken, the same way by minirun and minivm.

    4.63 ms  minirun[16544] cgroup       /sys/fs/cgroup/.../minirun/<id>: pids.max=20, ...
   23.41 ms  minirun[1] pivot_root   /var/lib/minirun/containers/<id>/merged is now /; ...
   28.53 ms  minivm[16999] network      tap tapcec78971712b (TUNSETIFF on /dev/net/tun) on ...

The milliseconds count from the start of the run, so the gaps show where its time goes. The
bracket names who speaks, by the PID it sees for itself: the runtime on the host, or the
container's first process, which is PID 1 in a PID namespace of its own. The lines go to
stderr, flushed one by one: stdout is the app's.
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
