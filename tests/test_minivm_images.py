"""Real images in real guests: the same command runs the same program, from the same layers, in
`minirun run` and in `minivm boot`.

The image `native` is built here from the host's own dynamically linked programs (dash as
/bin/sh, coreutils' ls, id, env, readlink, cat) and the libraries `ldd` names for them, loader
included: no busybox anywhere, so a busybox applet standing in for a program shows at once.
"""
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import leftovers, minivm, with_store
from image_helpers import oci_layout, tar_of
from test_cgroups_v2_guest import copy_as_named, shared_libraries

pytestmark = pytest.mark.vm
PROGRAMS = ("dash", "ls", "id", "env", "readlink", "cat", "rm", "stat")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def native_rootfs(root: Path) -> Path:
    """A root of the host's own programs under /usr/bin, with /bin/sh -> dash."""
    for name in PROGRAMS:
        program = Path(shutil.which(name)).resolve()
        target = root / "usr/bin" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(program, target)
        for library in shared_libraries(program):
            copy_as_named(library, root)
    (root / "bin").mkdir()
    (root / "bin/sh").symlink_to("/usr/bin/dash")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "root").mkdir(mode=0o700)
    return root


def import_image(source: Path, name: str, store: str) -> None:
    result = subprocess.run([sys.executable, "-m", "minirun", "import", str(source), name],
                            env={**os.environ, "MINIRUN_ROOT": store},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def native(tmp_path_factory, store_root):
    """Image `native` in the session's store."""
    work = tmp_path_factory.mktemp("native")
    import_image(native_rootfs(work / "rootfs"), "native", str(store_root))
    shutil.rmtree(work / "rootfs")
    return "native"


@pytest.mark.parametrize("command", [
    ["ls", "--version"],                          # GNU coreutils, not BusyBox's usage
    ["sh", "-c", "readlink /proc/$$/exe"],        # /usr/bin/dash, not /.minivm/busybox
    ["sh", "-c", "ls --version | head -1; type ls"],   # inside the shell too
    ["id"],
    ["env"],                                      # HOME from the image's passwd, in both
])
def test_the_same_command_runs_the_same_program(guest, minirun, minirun_env, native, command):
    container = minirun("run", native, *command)
    vm = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), native, *command)
    assert container.returncode == 0, container.stderr
    assert vm.returncode == 0, vm.stderr
    assert "BusyBox" not in vm.stdout + vm.stderr and "busybox" not in vm.stdout
    assert vm.stdout == _without_hostname(container.stdout, vm.stdout), (container.stdout, vm.stdout)
    assert leftovers(guest) == ([], [])


def _without_hostname(container: str, vm: str) -> str:
    """`env` in a container shows HOSTNAME=<the container's id>; the VM's hostname is the image's
    name. Both come from the runtime, not the image: compare the rest."""
    hostname = next((line for line in vm.splitlines() if line.startswith("HOSTNAME=")), None)
    lines = [hostname if line.startswith("HOSTNAME=") else line for line in container.splitlines()]
    return "".join(line + "\n" for line in lines)


def tar_of_directory(root: Path) -> bytes:
    """A layer tar of the whole tree under `root`, as `docker export` would write it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(root.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def native_base(tmp_path_factory) -> bytes:
    return tar_of_directory(native_rootfs(tmp_path_factory.mktemp("base") / "rootfs"))


def import_layers(tmp_path: Path, store: str, name: str, layers: list[bytes]) -> str:
    """Import an OCI layout of these layer tars (bottom first) as `name`."""
    import_image(oci_layout(tmp_path / f"{name}-oci", layers), name, store)
    return name


def same_in_both(guest, minirun, minirun_env, image: str, *command: str, vm_flags=()) -> str:
    """Run the command in a container and in a VM; both succeed and print the same; that output."""
    container = minirun("run", image, *command)
    vm = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), *vm_flags, image, *command)
    assert container.returncode == 0, container.stderr
    assert vm.returncode == 0, vm.stderr
    assert vm.stdout == container.stdout
    assert leftovers(guest) == ([], [])
    if "--explain" in vm_flags:     # the disks and the modules beside them
        assert "virtio-blk-device,drive=layer0,serial=minivm.layer0" in vm.stderr
        assert "modules      for overlayfs: overlay" in vm.stderr
        if image == "sixty":        # 22 slots left (21 with a NIC): the bottom 39 (40) merged
            assert re.search(r"minivm\.layer0 holds the bottom (39|40) layers merged", vm.stderr)
    return vm.stdout


def test_two_layers_with_whiteouts_and_an_opaque_directory(guest, minirun, minirun_env, native_base,
                                                          tmp_path):
    lower = tar_of([("srv", "dir"), ("srv/deleted", "file", b"x"), ("srv/kept", "file", b"kept\n"),
                    ("opaque", "dir"), ("opaque/hidden", "file", b"x")])
    upper = tar_of([("srv", "dir"), ("srv/.wh.deleted", "file", b""),
                    ("opaque", "dir"), ("opaque/.wh..wh..opq", "file", b""),
                    ("opaque/new", "file", b"new\n")])
    image = import_layers(tmp_path, minirun_env["MINIRUN_ROOT"], "layered",
                          [native_base, lower, upper])
    container = minirun("run", image, "sh", "-c", "ls -a /srv /opaque; cat /srv/kept /opaque/new")
    assert container.stdout == "/opaque:\n.\n..\nnew\n\n/srv:\n.\n..\nkept\nkept\nnew\n"
    same_in_both(guest, minirun, minirun_env, image, "sh", "-c",
                 "ls -a /srv /opaque; cat /srv/kept /opaque/new")


def test_an_image_of_60_layers_runs_in_both(guest, minirun, minirun_env, native_base, tmp_path):
    """Too many layers for one page of overlay options with the store's paths (minirun), and
    for the machine's 24 device slots (minivm: the bottom ones share a disk)."""
    layers = [native_base] + [tar_of([("layers", "dir"), (f"layers/{number:02}", "file",
                                                          f"{number}\n".encode())])
                              for number in range(1, 60)]
    image = import_layers(tmp_path, minirun_env["MINIRUN_ROOT"], "sixty", layers)
    out = same_in_both(guest, minirun, minirun_env, image, "sh", "-c",
                       "ls /layers; cat /layers/01 /layers/59", vm_flags=["--explain"])
    assert out.split() == [f"{number:02}" for number in range(1, 60)] + ["1", "59"]


def test_a_300_mb_image_boots_at_the_default_memory(guest, minirun, minirun_env, tmp_path):
    rootfs = native_rootfs(tmp_path / "rootfs")
    with open(rootfs / "big", "wb") as big:         # 300 MB of data that is really there
        chunk = os.urandom(1 << 20)
        for _ in range(300):
            big.write(chunk)
    import_image(rootfs, "big", minirun_env["MINIRUN_ROOT"])
    shutil.rmtree(rootfs)
    result = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), "--explain", "big",
                    "stat", "-c", "%s", "/big")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{300 << 20}\n"
    assert "-m 512M" in result.stderr                   # the default
    assert "virtio-blk-device,drive=layer0,serial=minivm.layer0" in result.stderr
    assert "modules      for erofs: crc32c_generic, libcrc32c, erofs" in result.stderr
    assert leftovers(guest) == ([], [])


def test_a_volume_round_trips_in_both_and_read_only_holds(guest, minirun, minirun_env, native,
                                                        tmp_path):
    """-v HOST_DIR:DIR a bind mount in the container, a virtio-9p shared folder in the VM."""
    command = ["sh", "-c", "cat /rw/in /ro/in; echo from-$0 > /rw/out; "
                           "echo x 2>/dev/null >/ro/out || echo refused"]
    for runner in ("minirun", "minivm"):
        writable, read_only = tmp_path / runner / "rw", tmp_path / runner / "ro"
        for directory in (writable, read_only):
            directory.mkdir(parents=True)
            (directory / "in").write_text(f"host to {runner} via {directory.name}\n")
        flags = ["-v", f"{writable}:/rw", "-v", f"{read_only}:/ro:ro"]
        if runner == "minirun":
            result = minirun("run", *flags, native, *command[:3], "container")
        else:
            result = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), *flags, native,
                            *command[:3], "vm")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"host to {runner} via rw\nhost to {runner} via ro\nrefused\n"
        assert (writable / "out").read_text() == \
            ("from-container\n" if runner == "minirun" else "from-vm\n")
        assert sorted(os.listdir(read_only)) == ["in"]
    assert leftovers(guest) == ([], [])


@pytest.mark.parametrize("volume, message", [
    ("relative:/data", "both paths must be absolute"),
    ("/no/such/dir:/data", "/no/such/dir does not exist on the host"),
    ("{tmp}:/proc/x", "/proc/x belongs to the kernel or the runtime"),
    ("{tmp}:/data:rx", "give HOST_DIR:DIR, or HOST_DIR:DIR:ro"),
    ("{tmp}:/bin/sh/inside", "goes through a symbolic link"),      # /bin/sh -> /usr/bin/dash
])
def test_a_bad_volume_is_one_line(guest, minirun, minirun_env, native, tmp_path, volume, message):
    volume = volume.format(tmp=tmp_path)
    container = minirun("run", "-v", volume, native, "true")
    assert container.returncode == 125 and container.stdout == ""
    assert container.stderr.count("\n") == 1 and message in container.stderr, container.stderr
    assert not os.listdir(minirun_env["MINIRUN_STATE"]) or \
        all(name.startswith(".") for name in os.listdir(minirun_env["MINIRUN_STATE"]))
    if "symbolic link" not in message:      # checked on the host before a boot: no QEMU at all
        vm = minivm(with_store(guest, minirun_env["MINIRUN_ROOT"]), "-v", volume, native, "true")
        assert vm.returncode == 125 and vm.stderr == container.stderr.replace("minirun:", "minivm:")
        assert leftovers(guest) == ([], [])
