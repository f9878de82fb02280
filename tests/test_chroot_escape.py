"""Why runtimes use pivot_root: root in a chroot can walk out; after pivot_root there is no out."""
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from minirun.image import Store

SOURCE = Path(__file__).parent / "programs" / "chroot_escape.c"


@pytest.fixture(scope="module")
def escape_image(store_root, tmp_path_factory) -> str:
    """`hello` plus one layer holding a statically linked chroot_escape."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to build the escape program: apt-get install gcc libc6-dev")
    binary = tmp_path_factory.mktemp("escape") / "chroot_escape"
    subprocess.run(["gcc", "-static", "-O2", "-o", binary, SOURCE], check=True)
    store = Store(store_root)
    hello = store.get("hello")
    tree = store.scratch_dir()
    (tree / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(binary, tree / "usr/local/bin/chroot_escape")
    layer = store.commit_layer(tree, hashlib.sha256(binary.read_bytes()).hexdigest())
    store.save_image("escape-test", [path.name for path in hello.layers] + [layer], hello.config)
    return "escape-test"


@pytest.fixture
def host_only_file(tmp_path) -> str:
    marker = tmp_path / "only-on-the-host"
    marker.write_text("the host's filesystem\n")
    return str(marker)


def test_root_escapes_a_chroot(minirun, escape_image, host_only_file):
    result = minirun("run", "--chroot", escape_image, "chroot_escape", host_only_file)
    assert result.stdout == "ESCAPED\n", result.stderr
    assert result.returncode == 0


def test_the_same_escape_fails_after_pivot_root(minirun, escape_image, host_only_file):
    result = minirun("run", escape_image, "chroot_escape", host_only_file)
    assert result.stdout == "CONTAINED\n", result.stderr
    assert result.returncode == 1


def test_the_image_itself_is_not_a_host_path(minirun, escape_image, host_only_file):
    # The control: without the trick, neither run sees the host file.
    for flags in ([], ["--chroot"]):
        result = minirun("run", *flags, escape_image, "cat", host_only_file)
        assert result.returncode == 1 and "No such file" in result.stderr
