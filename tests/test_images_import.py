"""Importing images made by real tools (umoci, skopeo, tar, zstd, xz) and by hand, and checking
that the layers, stacked by overlayfs, give exactly the tree the image was made from."""
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest
import zstandard

from image_helpers import merged_view, oci_layout, snapshot, tar_of
from minirun.errors import RuntimeFailure


def run(*command, cwd=None):
    subprocess.run(command, check=True, capture_output=True, cwd=cwd)


@pytest.fixture(scope="module")
def umoci_image(tmp_path_factory):
    """An OCI layout built by umoci in three layers, and the tree its last layer leaves.

    1. a base tree with a bit of everything: set-uid file, symlink, hard link, fifo, a file of
       another owner, a name with a space, nested directories;
    2. deletes a file (a whiteout `.wh.gone`) and changes another;
    3. replaces a directory by a new one of the same name, and another directory by a file.
    """
    work = tmp_path_factory.mktemp("umoci")
    layout = work / "layout"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:app")

    def layer(number, change):
        bundle = work / f"bundle{number}"
        run("umoci", "unpack", "--image", f"{layout}:app", str(bundle))
        change(bundle / "rootfs")
        whole_second_mtimes(bundle / "rootfs")
        run("umoci", "repack", "--image", f"{layout}:app", str(bundle))
        return bundle / "rootfs"

    def base(root):
        for d in ("etc", "bin", "data/old/sub", "opt/thing", "home/user", "run"):
            (root / d).mkdir(parents=True)
        (root / "etc/a").write_text("first\n")
        (root / "etc/gone").write_text("soon deleted\n")
        os.link(root / "etc/a", root / "etc/hard")
        (root / "etc/link").symlink_to("a")
        (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
        (root / "bin/tool").chmod(0o4755)
        (root / "data/old/x").write_text("x\n")
        (root / "data/old/sub/deep").write_text("deep\n")
        (root / "opt/thing/inside").write_text("inside\n")
        (root / "home/user/file with space").write_text("mine\n")
        os.chown(root / "home/user", 1000, 1000)
        os.chown(root / "home/user/file with space", 1000, 1000)
        os.mkfifo(root / "run/fifo")

    def delete_a_file(root):
        (root / "etc/gone").unlink()
        (root / "etc/a").write_text("second\n")

    def replace_directories(root):
        shutil.rmtree(root / "data/old")
        (root / "data/old").mkdir()
        (root / "data/old/new").write_text("new\n")
        shutil.rmtree(root / "opt/thing")
        (root / "opt/thing").write_text("now a file\n")

    layer(1, base)
    layer(2, delete_a_file)
    expected = layer(3, replace_directories)
    run("umoci", "config", "--image", f"{layout}:app", "--config.entrypoint", "/bin/tool",
        "--config.cmd", "--flag", "--config.env", "GREETING=hi", "--config.workingdir", "/data",
        "--config.user", "1000:1000")
    return layout, expected


def whole_second_mtimes(root):
    """Tar keeps whole seconds, and tools differ on rounding them: give new files whole ones."""
    for path in [root, *root.rglob("*")]:
        info = os.lstat(path)
        if info.st_mtime_ns % 1_000_000_000 and not path.is_symlink():
            os.utime(path, ns=(info.st_mtime_ns // 10**9 * 10**9,) * 2)


def test_oci_layout_from_umoci_merges_to_the_expected_tree(store, umoci_image, tmp_path):
    layout, expected = umoci_image
    image = store.import_image(str(layout), "umoci-app")
    assert len(image.layers) == 3
    assert merged_view(image.layers, tmp_path) == snapshot(expected)
    # The deletion is an overlayfs whiteout in the second layer: a 0/0 character device.
    gone = os.lstat(image.layers[1] / "etc/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert image.config.entrypoint == ["/bin/tool"] and image.config.cmd == ["--flag"]
    assert image.config.env[-1] == "GREETING=hi"
    assert (image.config.workdir, image.config.user) == ("/data", "1000:1000")


def test_oci_layout_as_a_tar_gives_the_same_layers(store, umoci_image, tmp_path):
    layout, expected = umoci_image
    archive = tmp_path / "layout.tar"
    run("tar", "-C", str(layout), "-cf", str(archive), ".")
    from_dir = store.import_image(str(layout), "from-dir")
    from_tar = store.import_image(str(archive), "from-tar")
    assert from_tar.layers == from_dir.layers          # same diff_ids: stored once, shared
    assert len(os.listdir(store.layers_dir)) == 3


def test_docker_save_archive_from_skopeo(store, umoci_image, tmp_path):
    layout, expected = umoci_image
    archive = tmp_path / "saved.tar"
    run("skopeo", "copy", f"oci:{layout}:app", f"docker-archive:{archive}:example/app:1.0")
    image = store.import_image(str(archive), "saved")
    assert merged_view(image.layers, tmp_path) == snapshot(expected)
    assert image.config.entrypoint == ["/bin/tool"]
    # skopeo decompressed the layers, but their diff_ids are the OCI image's: the same layers.
    assert image.layers == store.import_image(str(layout), "oci").layers


def test_cli_load_of_a_docker_archive_by_tag(umoci_image, tmp_path):
    layout, _ = umoci_image
    archive = tmp_path / "saved.tar"
    run("skopeo", "copy", f"oci:{layout}:app", f"docker-archive:{archive}:example/app:1.0")
    env = dict(os.environ, MINIRUN_ROOT=str(tmp_path / "store"), MINIRUN_STATE=str(tmp_path / "s"))
    done = subprocess.run([sys.executable, "-m", "minirun", "load", f"{archive}:1.0", "app"],
                          env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "app: 3 layer(s)\n", "")


def test_opaque_directory_hides_the_lower_contents(store, tmp_path):
    """The OCI spec's own example (layer.md, "Whiteouts"): the opaque marker comes after the
    directory's new contents, and must still hide only the lower layer's."""
    lower = tar_of([("a/", "dir"), ("a/b/", "dir"), ("a/b/c/", "dir"), ("a/b/c/bar", "file"),
                    ("a/keep", "file"), ("top", "file")])
    upper = tar_of([("a/", "dir"), ("a/b/", "dir"), ("a/b/c/", "dir"), ("a/b/c/foo", "file"),
                    ("a/.wh..wh..opq", "file", b"")])
    zstd = zstandard.ZstdCompressor().compress
    layout = oci_layout(tmp_path / "layout", [lower, upper], compress=zstd,
                        media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    image = store.import_image(str(layout), "opaque")
    assert os.getxattr(image.layers[1] / "a", "trusted.overlay.opaque") == b"y"
    assert sorted(merged_view(image.layers, tmp_path)) == [".", "a", "a/b", "a/b/c", "a/b/c/foo", "top"]


def test_whiteout_of_a_directory_recreated_in_the_same_layer(store, tmp_path):
    """`.wh.d` deletes the lower `d`; a `d/` of the same layer stays, opaque over the old one."""
    lower = tar_of([("d/", "dir"), ("d/old", "file")])
    upper = tar_of([(".wh.d", "file", b""), ("d/", "dir"), ("d/new", "file")])
    image = store.import_image(str(oci_layout(tmp_path / "layout", [lower, upper])), "recreated")
    assert sorted(merged_view(image.layers, tmp_path)) == [".", "d", "d/new"]


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd", "xz"])
def test_rootfs_tarball_in_every_compression(store, umoci_image, tmp_path, compression):
    _, tree = umoci_image
    archive = tmp_path / "rootfs.tar"
    run("tar", "-C", str(tree), "-cf", str(archive), ".")
    if compression != "none":
        run({"gzip": "gzip", "zstd": "zstd", "xz": "xz"}[compression], "-q", str(archive))
        archive = next(tmp_path.glob("rootfs.tar.*"))
    image = store.import_image(str(archive), "rootfs")
    assert len(image.layers) == 1
    assert merged_view(image.layers, tmp_path) == snapshot(tree)


def test_directory(store, umoci_image, tmp_path):
    _, tree = umoci_image
    image = store.import_image(str(tree), "tree")
    assert merged_view(image.layers, tmp_path) == snapshot(tree)
    assert image.config.command([]) == []          # a bare tree has no default command


def test_an_image_of_two_layers_shares_the_one_it_has_in_common(store, tmp_path):
    base = tar_of([("etc/", "dir"), ("etc/os-release", "file", b"ID=test\n")])
    one = store.import_image(str(oci_layout(tmp_path / "one", [base, tar_of([("a", "file")])])), "one")
    two = store.import_image(str(oci_layout(tmp_path / "two", [base, tar_of([("b", "file")])])), "two")
    assert one.layers[0] == two.layers[0] and one.layers[1] != two.layers[1]
    assert len(os.listdir(store.layers_dir)) == 3


def test_gzip_layer_keeps_ownership_modes_and_capabilities(store, tmp_path):
    """File capabilities travel as a pax xattr header (security.capability), as Debian's ping."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("bin/ping")
        info.size, info.mode, info.uid, info.gid = 4, 0o755, 0, 0
        # cap_net_raw+ep, as `setcap` stores it (vfs_cap_data revision 2).
        cap = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")
        info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
        archive.addfile(info, io.BytesIO(b"ping"))
    image = store.import_image(str(oci_layout(tmp_path / "l", [buffer.getvalue()])), "caps")
    assert os.getxattr(image.layers[0] / "bin/ping", "security.capability") == cap


def test_entries_replaced_later_in_the_same_archive(store, tmp_path):
    """Tar's rule, and layer.md's: a later entry replaces an earlier one of the same name, except
    a directory over a directory, which only takes the new attributes."""
    tar = tar_of([("d/", "dir"), ("d/f", "file"), ("d", "symlink", "elsewhere"),
                  ("e", "file"), ("e/", "dir"), ("e/g", "file"),
                  ("k/", "dir"), ("k/old", "file"), ("k/", "dir")])
    image = store.import_image(str(oci_layout(tmp_path / "l", [tar])), "replaced")
    assert sorted(merged_view(image.layers, tmp_path)) == [".", "d", "e", "e/g", "k", "k/old"]
    assert os.readlink(image.layers[0] / "d") == "elsewhere"


def test_a_layout_of_several_images_is_chosen_from_by_tag(store, tmp_path, umoci_image):
    layout, _ = umoci_image
    copy = tmp_path / "layout"
    run("cp", "-a", str(layout), str(copy))
    run("umoci", "tag", "--image", f"{copy}:app", "other")
    with pytest.raises(RuntimeFailure, match=r"2 images for amd64 in it: name one as PATH:TAG "
                                             r"\(tags there: app, other\)"):
        store.import_image(str(copy), "x")
    with pytest.raises(RuntimeFailure, match="no images tagged 'nope' in it"):
        store.import_image(f"{copy}:nope", "x")
    assert len(store.import_image(f"{copy}:other", "x").layers) == 3
