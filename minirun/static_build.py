"""Small static C programs that the project carries as source and builds once, on first use.

Some places need a program that is not Python: `minirun run --init` (PID 1 inside the container,
minirun/init.c) and minivm's guest, which has no Python (minivm/become.c, its step into the app;
minivm/relay.c, `minivm exec`'s end in the guest). Each is compiled with
the host's C compiler, statically (the container's image or the guest may have no C library, or
another one), and cached under the digest of its source, so an edited source builds anew and an
unchanged one never builds twice.
"""
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from minirun.errors import RuntimeFailure


def build(source: Path, cache: Path, needed_for: str) -> Path:
    """The compiled `source`, built into `cache` if it is not there yet; `needed_for` completes
    the error line ("running --init needs a C compiler once...")."""
    target = cache / f"{source.stem}-{hashlib.sha256(source.read_bytes()).hexdigest()[:32]}"
    if target.is_file():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeFailure(f"{needed_for} needs a C compiler once, to build {source.name}: "
                             "apt-get install gcc libc6-dev")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        built = Path(scratch, source.stem)
        result = subprocess.run([compiler, "-static", "-Os", "-s", "-o", str(built), str(source)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeFailure(f"building {source.name} failed ({last}): "
                                 "apt-get install gcc libc6-dev")
        os.chmod(built, 0o755)
        os.rename(built, target)        # whole or not at all, even with two builders at once
    return target
