"""docs/chapter0.py, the smallest container of docs/chapter0.md, really runs the hello app."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from transcripts import mask

CHAPTER0 = Path(__file__).resolve().parent.parent / "docs" / "chapter0.py"


@pytest.fixture
def hello_rootfs(minirun) -> str:
    """The unpacked hello image: its one layer's directory, as `minirun inspect` shows it."""
    result = minirun("inspect", "hello")
    assert result.returncode == 0, result.stderr
    [layer] = json.loads(result.stdout)["layer_dirs"]
    return layer


def chapter0(rootfs, *command):
    return subprocess.run([sys.executable, str(CHAPTER0), rootfs, *command],
                          capture_output=True, text=True, timeout=30)


def test_the_hello_app_runs_as_pid_1_on_the_hosts_kernel(hello_rootfs):
    mounts = Path("/proc/self/mountinfo").read_text()
    result = chapter0(hello_rootfs, "/app/hello.sh")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Hello from chapter0"                 # its own UTS namespace
    assert lines[1].split() == ["pid:", "1"]                   # its own PID namespace
    assert lines[2].split() == ["kernel:", os.uname().release]  # the host's kernel
    assert lines[5].split() == ["network:", "lo"]               # its own network namespace
    assert Path("/proc/self/mountinfo").read_text() == mounts   # nothing leaked to the host


def test_its_root_is_the_image_read_only_and_exit_codes_pass_through(hello_rootfs):
    # the host's /etc/os-release is out of reach once pivot_root has dropped the old root
    result = chapter0(hello_rootfs, "/bin/sh", "-c", "test -e /app/hello.sh && "
                      "! test -e /etc/os-release && ! touch /x 2>/dev/null && exit 7")
    assert result.returncode == 7, result.stderr
    assert not Path(hello_rootfs, "x").exists()
    missing = chapter0(hello_rootfs, "/no-such-command")
    assert missing.returncode == 125 and "No such file" in missing.stderr


def documented_output() -> list[str]:
    """What docs/chapter0.md shows the hello app printing: the ```text block after the command.
    (A ```text block, not a ```console transcript: tests/test_docs.py runs those in a directory
    of their own, where docs/chapter0.py is not, and it would not check this one.)"""
    lines = CHAPTER0.with_suffix(".md").read_text().splitlines()
    command = next(n for n, line in enumerate(lines) if "chapter0.py \"$H\" /app/hello.sh" in line)
    start = lines.index("```text", command) + 1
    return lines[start:lines.index("```", start)]


def test_the_output_is_what_docs_chapter0_md_shows(hello_rootfs):
    result = chapter0(hello_rootfs, "/app/hello.sh")
    assert result.returncode == 0, result.stderr
    printed = [line.rstrip() for line in result.stdout.splitlines()]
    # no cgroup namespace: the app sees the cgroups of whoever ran chapter0.py (this test's)
    own = sorted({line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().split()})
    assert printed[3].split(None, 1)[1] == " ".join(own)

    def shown(lines):       # the kernel's release masked as test_docs masks it; the cgroup varies
        return [mask(re.sub(r"^(  cgroup: +).*", r"\1<the caller's>", line)) for line in lines]
    assert shown(printed) == shown(documented_output())
