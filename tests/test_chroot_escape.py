"""Why runtimes use pivot_root: root in a chroot can walk out; after pivot_root there is no out."""
from pathlib import Path

import pytest

from image_helpers import build_static, hello_with
from minirun.image import Store

SOURCE = Path(__file__).parent / "programs" / "chroot_escape.c"


@pytest.fixture(scope="module")
def escape_image(store_root, tmp_path_factory) -> str:
    """`hello` plus one layer holding a statically linked chroot_escape."""
    return hello_with(Store(store_root), build_static(SOURCE, tmp_path_factory.mktemp("escape")),
                      "escape-test")


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
