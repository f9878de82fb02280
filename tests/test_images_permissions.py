"""The store is closed to host users: its root is 0700, so a set-user-ID-root program in a layer
or in a container's writable layer cannot be reached, let alone run, by a local user through the
store's path. An existing store left 0755 by an older minirun is closed on its next use."""
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from conftest import read_line, wait_for_container
from minirun.errors import RuntimeFailure
from minirun.image import ImageConfig, Store

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
EUID_C = '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("%d\\n", geteuid()); return 0; }\n'


@pytest.fixture(scope="module")
def euid_program(tmp_path_factory) -> bytes:
    """A static program that prints its effective uid: 0 when it runs set-user-ID root."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to build the test program: apt-get install gcc libc6-dev")
    work = tmp_path_factory.mktemp("euid")
    (work / "euid.c").write_text(EUID_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", work / "euid", work / "euid.c"], check=True)
    return (work / "euid").read_bytes()


@pytest.fixture
def open_parent():
    """A directory every user may pass through, as /var/lib is: pytest's own tmp_path is 0700,
    which alone would keep `nobody` out and prove nothing about the store's mode."""
    parent = Path(tempfile.mkdtemp(prefix="minirun-store-test-", dir="/tmp"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent)


def as_nobody(*command) -> subprocess.CompletedProcess:
    """Run `command` as a local user would. Through a shell: setpriv makes its own execve(2)
    while it still holds root's capabilities (it keeps them to apply its other options), so
    CAP_DAC_OVERRIDE would let that one path lookup through any directory mode. The shell it
    starts has none left, like every process of a real user."""
    return subprocess.run([*NOBODY, "sh", "-c", 'exec "$0" "$@"', *map(str, command)],
                          capture_output=True, text=True, timeout=60)


def setuid_root_layer(program: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("bin/euid")
        info.size, info.mode, info.uid, info.gid = len(program), 0o4755, 0, 0
        archive.addfile(info, io.BytesIO(program))
    return buffer.getvalue()


def test_a_setuid_root_file_in_a_layer_is_out_of_reach(open_parent, euid_program):
    (open_parent / "layer.tar").write_bytes(setuid_root_layer(euid_program))
    store = Store(open_parent / "store")
    program = store.import_image(str(open_parent / "layer.tar"), "suid").layers[0] / "bin/euid"
    info = os.stat(program)
    assert info.st_uid == 0 and info.st_mode & stat.S_ISUID      # really set-user-ID root
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    refused = as_nobody(program)
    assert refused.returncode != 0 and refused.stdout == ""
    assert "Permission denied" in refused.stderr
    assert as_nobody("ls", store.layers_dir).returncode != 0
    # The control: the same file where nobody can reach it runs as root. Only the store's mode
    # stands between a local user and euid 0.
    shutil.copy2(program, open_parent / "reachable")
    assert as_nobody(open_parent / "reachable").stdout == "0\n"
    (open_parent / "reachable").unlink()


def test_a_setuid_file_made_in_a_container_is_out_of_reach(open_parent, euid_program):
    root = open_parent / "store"
    store = Store(root)
    hello = store.get("hello")
    (open_parent / "layer.tar").write_bytes(setuid_root_layer(euid_program))
    tool = store.import_image(str(open_parent / "layer.tar"), "tool").layers
    store.save_image("hello-tool", [layer.name for layer in hello.layers + tool],
                     ImageConfig(env=hello.config.env))
    env = dict(os.environ, MINIRUN_ROOT=str(root), MINIRUN_STATE=str(open_parent / "state"))
    container = subprocess.Popen(
        [sys.executable, "-m", "minirun", "run", "-i", "hello-tool", "sh", "-c",
         "cp /bin/euid /made-here && chmod 4755 /made-here && echo ready && read line; exit 0"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(container) == "ready\n"
        made = root / "containers" / wait_for_container(env)["id"] / "upper/made-here"
        info = os.stat(made)
        assert info.st_uid == 0 and info.st_mode & stat.S_ISUID
        refused = as_nobody(made)
        assert refused.returncode != 0 and refused.stdout == ""
        assert "Permission denied" in refused.stderr
    finally:
        container.stdin.close()
        assert container.wait(timeout=30) == 0


def test_an_open_store_of_an_older_minirun_is_closed_on_its_next_use(open_parent, minirun_env):
    root = open_parent / "store"
    Store(root).get("hello")
    root.chmod(0o755)                                       # as older versions left it
    Store(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    root.chmod(0o755)
    done = subprocess.run([sys.executable, "-m", "minirun", "run", "hello", "true"],
                          env=dict(minirun_env, MINIRUN_ROOT=str(root)), capture_output=True)
    assert done.returncode == 0
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700


def test_a_symlinked_store_is_refused_and_its_target_left_alone(open_parent):
    target = open_parent / "elsewhere"
    target.mkdir(mode=0o755)
    (open_parent / "link").symlink_to(target)
    with pytest.raises(RuntimeFailure, match="is not a directory .a symlink is not followed."):
        Store(open_parent / "link")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755


def test_a_store_owned_by_another_user_is_refused(open_parent):
    root = open_parent / "store"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(RuntimeFailure, match="belongs to uid 65534, not to you .uid 0."):
        Store(root)
