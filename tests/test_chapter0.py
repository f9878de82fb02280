"""docs/chapter0.py, the smallest container of docs/chapter0.md, really runs the hello app."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
