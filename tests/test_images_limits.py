"""Import limits: one import may write so many bytes of file data and so many entries, so that a
small archive that unpacks to a huge one (a sparse-file or compression bomb) stops at its header
with one line, and leaves nothing."""
import gzip
import io
import os
import subprocess
import sys
import tarfile

import pytest

from image_helpers import oci_layout, tar_of, tree_listing
from minirun.errors import RuntimeFailure

MiB = 1 << 20
CLAIMED = 256 * MiB          # what each bomb unpacks to: small enough to survive a mutation check


def cli(tmp_path, *args):
    env = dict(os.environ, MINIRUN_ROOT=str(tmp_path / "store"), MINIRUN_STATE=str(tmp_path / "st"))
    return subprocess.run([sys.executable, "-m", "minirun", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def nothing_left(tmp_path, before):
    store = tmp_path / "store"
    for part in ("layers", "images", "tmp"):
        assert not (store / part).exists() or os.listdir(store / part) == []
    assert tree_listing(tmp_path) - before <= {"store", "store/lock", "store/layers",
                                               "store/images", "store/tmp", "st"}


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_a_sparse_file_bomb_is_stopped_at_its_header(tmp_path, tar_format):
    """GNU tar --sparse stores only a file's data blocks; unpacked, the holes are written too."""
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "holes", "wb") as file:
        file.write(b"data at the start")
        file.truncate(CLAIMED)
    bomb = tmp_path / "bomb.tar"
    subprocess.run(["tar", "--sparse", f"--format={tar_format}", "-C", str(source), "-cf",
                    str(bomb), "holes"], check=True)
    assert bomb.stat().st_size < 64 * 1024                  # a small archive...
    with tarfile.open(bomb) as archive:
        assert archive.getmember("holes").size == CLAIMED   # ...that claims 256M
    before = tree_listing(tmp_path)
    done = cli(tmp_path, "import", "--max-size", "1M", str(bomb), "bomb")
    assert done.returncode == 125
    assert done.stderr == f"minirun: cannot import {bomb}: rootfs tarball, layer 1 of 1: entry " \
                          "'holes' (256M) takes the image past the 1M of file data an import may " \
                          "write: if the image is right, raise the limit with `minirun import " \
                          "--max-size SIZE`\n"
    nothing_left(tmp_path, before)


def zeros_tar_gz(path, size: int) -> None:
    """A gzip-compressed tar of one file of `size` zero bytes, written as a stream."""
    class Zeros(io.RawIOBase):
        def __init__(self):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            count = min(len(buffer), self.left)
            buffer[:count] = bytes(count)
            self.left -= count
            return count

    with gzip.open(path, "wb", compresslevel=9) as compressed, \
            tarfile.open(fileobj=compressed, mode="w|") as archive:
        info = tarfile.TarInfo("zeros")
        info.size = size
        archive.addfile(info, io.BufferedReader(Zeros()))


def test_a_gzip_bomb_is_stopped_at_its_header(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    zeros_tar_gz(bomb, CLAIMED)
    assert bomb.stat().st_size < MiB
    layout = oci_layout(tmp_path / "layout", [tar_of([("etc/", "dir")])])    # one good layer first
    before = tree_listing(tmp_path)
    done = cli(tmp_path, "import", "--max-size", "1M", str(bomb), "bomb")
    assert done.returncode == 125 and done.stderr.count("\n") == 1
    assert "entry 'zeros' (256M) takes the image past the 1M of file data" in done.stderr
    nothing_left(tmp_path, before)
    assert cli(tmp_path, "import", str(layout), "fine").returncode == 0   # the store still works


def test_the_limits_count_all_layers_of_an_import_together(store, tmp_path):
    six = [tar_of([(f"{layer}{n}", "file", b"12345") for n in range(6)]) for layer in "ab"]
    layout = oci_layout(tmp_path / "layout", six)
    with pytest.raises(RuntimeFailure, match=r"layer 2 of 2: entry 'b4' is one more than the 10 "
                                             r"entries an import may write"):
        store.import_image(str(layout), "many", max_files=10)
    with pytest.raises(RuntimeFailure, match=r"layer 2 of 2: entry 'b2' \(5B\) takes the image past "
                                             r"the 40B of file data"):
        store.import_image(str(layout), "big", max_size=40)
    assert store.records() == [] and not store.layers_dir.exists()
    assert os.listdir(store.tmp_dir) == []
    assert len(store.import_image(str(layout), "fits", max_size=60, max_files=12).layers) == 2


def test_a_directory_import_is_limited_too(store, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for n in range(5):
        (tree / f"f{n}").write_bytes(b"x")
    with pytest.raises(RuntimeFailure, match="one more than the 3 entries"):
        store.import_image(str(tree), "tree", max_files=3)   # ".", f0, f1: the 4th is refused
    assert os.listdir(store.tmp_dir) == []


@pytest.mark.parametrize("flag, value, message", [
    ("--max-size", "lots", "invalid size 'lots'"),
    ("--max-files", "0", "invalid file count '0'"),
])
def test_a_bad_limit_is_one_line(tmp_path, flag, value, message):
    done = cli(tmp_path, "import", flag, value, str(tmp_path), "x")
    assert done.returncode == 125 and done.stderr.startswith(f"minirun: {message}")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "store").exists()



@pytest.mark.parametrize("header_type", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME],
                         ids=["pax", "gnu-longname"])
def test_a_header_bomb_is_stopped_before_it_fills_the_memory(tmp_path, header_type):
    """tarfile reads a pax or long-name header whole into memory: a gzip'd header of zeros
    that claims 256M would cost 256M of RAM (an 8G one, the OOM killer) before any entry."""
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb") as out:
        header = tarfile.TarInfo("././@Header")
        header.type, header.size = header_type, CLAIMED
        out.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        for _ in range(CLAIMED // MiB):
            out.write(bytes(MiB))
        out.write(tarfile.TarInfo("a").tobuf(format=tarfile.USTAR_FORMAT) + bytes(1024))
    assert bomb.stat().st_size < MiB
    before = tree_listing(tmp_path)
    done = cli(tmp_path, "import", str(bomb), "bomb")
    assert done.returncode == 125 and done.stderr.count("\n") == 1
    assert "entry '././@Header' is a tar header of 256M: headers hold names and attributes, " \
           "at most 1M here" in done.stderr
    nothing_left(tmp_path, before)


# How much the peak memory of an import grows, in KiB. VmHWM (proc(5)) is the peak of this
# process's own memory; getrusage's ru_maxrss would not do, as it survives execve(2) and so
# starts at the peak of the (big) pytest process that forked this one.
PEAK_GROWTH = """
import sys
from minirun.image import Store
def peak():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
before = peak()
Store().import_image(sys.argv[1], "comments")
print(peak() - before)
"""


def test_memory_does_not_grow_with_the_entries_read(store, tmp_path):
    """tarfile keeps every entry it read, with its pax header: 200 entries, each with a 1M
    comment (a pax field the importer ignores) gzip'd to almost nothing, would hold 200M."""
    archive = tmp_path / "comments.tar.gz"
    with gzip.open(archive, "wb") as out, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for number in range(200):
            info = tarfile.TarInfo(f"f{number}")
            info.pax_headers = {"comment": "a" * (MiB - 100)}
            tar.addfile(info)
    assert archive.stat().st_size < MiB
    done = subprocess.run([sys.executable, "-c", PEAK_GROWTH, str(archive)], capture_output=True,
                          text=True, check=True)
    assert int(done.stdout) < 64 * 1024                      # KiB: far below 200M
    assert len(os.listdir(store.get("comments").layers[0])) == 200
