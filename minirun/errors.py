"""Exit codes and errors, the same for minirun and minivm (they follow `docker run`).

A run ends with the app's own status, 128+N if the app was killed by signal N, or one of the
codes below when the runtime (not the app) could not do its job.
"""
import os

RUNTIME_FAILED = 125    # the runtime itself failed: bad flag, unknown image, not root, ...
CANNOT_EXECUTE = 126    # the command exists but cannot be executed (no x bit, bad format)
NOT_FOUND = 127         # the command does not exist in the image


class RuntimeFailure(Exception):
    """A failure of the runtime, reported as one line: what went wrong and what to do.

    The command-line layer prints `str(error)` and exits with `error.exit_code`; no traceback.
    """

    def __init__(self, message: str, exit_code: int = RUNTIME_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


def status_from_wait(wait_status: int) -> int:
    """Turn a waitpid() status into a shell-style exit code: the code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code
