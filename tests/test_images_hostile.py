"""Hostile and damaged archives: each import fails with one clear line naming the entry and why,
nothing outside the store changes, and no half-imported image or layer stays behind."""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from image_helpers import docker_save, layer_blobs, oci_layout, tar_of, tree_listing, write_blob
from minirun.errors import RuntimeFailure

SECRET = b"the host's secret\n"
STORE_SKELETON = {"store", "store/lock", "store/layers", "store/images", "store/tmp"}


@pytest.fixture
def outside(tmp_path):
    """A directory of the host next to the store, that no import may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret").write_bytes(SECRET)
    return folder


def refused(store, tmp_path, outside, source, *expected) -> str:
    """Import `source`, expect a refusal naming `expected`, and check that nothing stayed."""
    before = tree_listing(tmp_path)
    with pytest.raises(RuntimeFailure) as failure:
        store.import_image(str(source), "hostile")
    message = str(failure.value)
    assert "\n" not in message
    for text in expected:
        assert text in message
    assert (outside / "secret").read_bytes() == SECRET
    assert os.listdir(outside) == ["secret"]
    assert store.records() == []
    assert not store.layers_dir.exists() or os.listdir(store.layers_dir) == []
    assert not store.tmp_dir.exists() or os.listdir(store.tmp_dir) == []        # nor scratch
    assert tree_listing(tmp_path) - before <= STORE_SKELETON
    return message


def rootfs_tar(tmp_path, entries):
    path = tmp_path / "layer.tar"
    path.write_bytes(tar_of(entries))
    return path


# Where the layer is unpacked: store/tmp/PID-START-XXXX/1/; four levels up is tmp_path.
UP = "../../../../"


@pytest.mark.parametrize("entries, expected", [
    ([(UP + "outside/pwned", "file")], ["'../../../../outside/pwned'", "'..'"]),
    ([("ok/../../" + UP + "outside/pwned", "file")], ["'..'"]),
    ([("/OUTSIDE/pwned", "file")], ["absolute path"]),
    ([("escape", "symlink", "/OUTSIDE"), ("escape/pwned", "file")],
     ["'escape/pwned'", "goes through 'escape'", "symlink"]),
    ([("up", "symlink", UP + "outside"), ("up/pwned", "file")], ["'up/pwned'", "goes through 'up'"]),
    ([("a/", "dir"), ("a/b", "symlink", "/OUTSIDE"), ("a/b/c/d", "dir")], ["goes through 'b'"]),
    ([("steal", "hardlink", "/OUTSIDE/secret")], ["'steal'", "hard link", "outside the image"]),
    ([("steal", "hardlink", UP + "outside/secret")], ["'steal'", "hard link"]),
    ([("s", "symlink", "/OUTSIDE"), ("steal", "hardlink", "s/secret")], ["'steal'", "goes through 's'"]),
    ([("steal", "hardlink", "not-here")], ["'steal'", "not in this layer"]),
    ([("dev/sda", "blk", (8, 0))], ["'dev/sda'", "device node"]),
    ([("dev/mem", "chr", (1, 1))], ["'dev/mem'", "device node"]),
    ([("fake-whiteout", "chr", (0, 0))], ["'fake-whiteout'", "device node"]),
    ([(".wh...", "file", b"")], ["whiteout of no valid name"]),
], ids=["dotdot", "dotdot-inside", "absolute", "symlink-absolute", "symlink-relative",
        "symlink-deep", "hardlink-absolute", "hardlink-dotdot", "hardlink-via-symlink",
        "hardlink-missing", "block-device", "char-device", "premade-whiteout", "whiteout-dotdot"])
def test_hostile_entry_is_refused(store, tmp_path, outside, entries, expected):
    entries = [(name.replace("/OUTSIDE", str(outside)), kind,
                *[e.replace("/OUTSIDE", str(outside)) if isinstance(e, str) else e for e in extra])
               for name, kind, *extra in entries]
    expected = [text.replace("/OUTSIDE", str(outside)) for text in expected]
    refused(store, tmp_path, outside, rootfs_tar(tmp_path, entries), *expected)


def test_trusted_overlay_xattr_is_refused(store, tmp_path, outside):
    """trusted.overlay.redirect in an image could make overlayfs look up another path."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc"}
        archive.addfile(info)
    (tmp_path / "x.tar").write_bytes(buffer.getvalue())
    refused(store, tmp_path, outside, tmp_path / "x.tar", "'d'", "trusted.overlay.redirect")


def test_a_file_over_a_symlink_replaces_the_link_not_its_target(store, tmp_path, outside):
    """Tar's rule is that a later entry replaces an earlier one: the link goes, the host's file stays."""
    source = rootfs_tar(tmp_path, [("link", "symlink", str(outside / "secret")),
                                   ("link", "file", b"overwritten\n")])
    image = store.import_image(str(source), "replaced")
    assert (image.layers[0] / "link").read_bytes() == b"overwritten\n"
    assert not (image.layers[0] / "link").is_symlink()
    assert (outside / "secret").read_bytes() == SECRET


def test_a_bad_second_layer_leaves_no_first_layer(store, tmp_path, outside):
    good = tar_of([("etc/", "dir"), ("etc/ok", "file")])
    bad = tar_of([("evil", "symlink", str(outside)), ("evil/pwned", "file")])
    layout = oci_layout(tmp_path / "layout", [good, bad])
    refused(store, tmp_path, outside, layout, "layer 2 of 2", "'evil/pwned'")


def test_a_failed_import_keeps_the_image_of_the_same_name(store, tmp_path, outside):
    good = oci_layout(tmp_path / "good", [tar_of([("app", "file", b"v1\n")])])
    store.import_image(str(good), "app")
    bad = rootfs_tar(tmp_path, [("/x", "file")])
    with pytest.raises(RuntimeFailure):
        store.import_image(str(bad), "app")
    assert (store.get("app").layers[0] / "app").read_bytes() == b"v1\n"


def test_truncated_compressed_tarball(store, tmp_path, outside):
    data = gzip.compress(tar_of([("big", "file", os.urandom(200_000))]))
    (tmp_path / "rootfs.tar.gz").write_bytes(data[: len(data) // 2])
    refused(store, tmp_path, outside, tmp_path / "rootfs.tar.gz", "truncated or corrupt")


def test_truncated_plain_tarball(store, tmp_path, outside):
    data = tar_of([("a", "file", b"x" * 10_000), ("b", "file", b"y" * 10_000)])
    (tmp_path / "rootfs.tar").write_bytes(data[:15_000])
    refused(store, tmp_path, outside, tmp_path / "rootfs.tar", "truncated or corrupt")


def test_truncated_layer_blob_in_oci_layout(store, tmp_path, outside):
    layout = oci_layout(tmp_path / "layout", [tar_of([("a", "file", os.urandom(50_000))])])
    blob = layer_blobs(layout)[0]
    blob.write_bytes(blob.read_bytes()[:-100])
    refused(store, tmp_path, outside, layout, "layer sha256:", "truncated or corrupt")


def test_wrong_layer_digest(store, tmp_path, outside):
    """One flipped byte inside a file's data: the tar still parses, the digest does not match."""
    tar = tar_of([("a", "file", b"A" * 4096)])
    layout = oci_layout(tmp_path / "layout", [tar], compress=lambda t: t,
                        media_type="application/vnd.oci.image.layer.v1.tar")
    blob = layer_blobs(layout)[0]
    data = bytearray(blob.read_bytes())
    data[data.index(b"AAAA")] = ord("B")
    blob.write_bytes(bytes(data))
    refused(store, tmp_path, outside, layout, "the layer blob is corrupt", "digest")


def with_diff_ids(layout, diff_ids: list) -> None:
    """Rewrite the layout's config to list `diff_ids`, re-chaining every digest above it, as a
    forger would: the digests still match, only what they vouch for is a lie."""
    index = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs" / index["manifests"][0]["digest"].replace(":", "/")
    manifest = json.loads(manifest_path.read_text())
    config_path = layout / "blobs" / manifest["config"]["digest"].replace(":", "/")
    config = json.loads(config_path.read_text())
    config["rootfs"]["diff_ids"] = diff_ids
    manifest["config"].update(write_blob(layout, json.dumps(config).encode()))
    index["manifests"][0].update(write_blob(layout, json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))


def test_wrong_diff_id(store, tmp_path, outside):
    """A config that lies about the uncompressed layer: caught after decompression."""
    layout = oci_layout(tmp_path / "layout", [tar_of([("a", "file")])])
    with_diff_ids(layout, ["sha256:" + hashlib.sha256(b"other").hexdigest()])
    refused(store, tmp_path, outside, layout, "the uncompressed layer is corrupt")


@pytest.mark.parametrize("diff_id", ["{outside}", "sha256:../../../{outside}", "sha256:" + "A" * 64])
def test_a_diff_id_that_names_a_path_is_refused(store, tmp_path, outside, diff_id):
    """A diff_id becomes the store's layer directory name. One that names a host directory
    must not make that directory a layer (it would be a container's lower dir)."""
    layout = oci_layout(tmp_path / "layout", [tar_of([("a", "file")])])
    with_diff_ids(layout, [diff_id.format(outside=outside)])
    refused(store, tmp_path, outside, layout, "malformed diff_id")


def test_tampered_config_breaks_the_chain(store, tmp_path, outside):
    layout = oci_layout(tmp_path / "layout", [tar_of([("a", "file")])], config={"Cmd": ["/a"]})
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / index["manifests"][0]["digest"].replace(":", "/")).read_text())
    config_path = layout / "blobs" / manifest["config"]["digest"].replace(":", "/")
    config_path.write_text(config_path.read_text().replace('"/a"', '"/b"'))
    refused(store, tmp_path, outside, layout, "is corrupt")


def test_cli_refusal_is_one_line_and_exit_125(tmp_path, outside):
    source = rootfs_tar(tmp_path, [("escape", "symlink", str(outside)), ("escape/pwned", "file")])
    env = dict(os.environ, MINIRUN_ROOT=str(tmp_path / "store"), MINIRUN_STATE=str(tmp_path / "st"))
    done = subprocess.run([sys.executable, "-m", "minirun", "import", str(source), "evil"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 125
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minirun: cannot import ")
    assert "'escape/pwned' goes through 'escape'" in lines[0]
    assert os.listdir(outside) == ["secret"]


def test_hard_link_to_a_directory_is_one_clear_line(store, tmp_path, outside):
    source = rootfs_tar(tmp_path, [("d/", "dir"), ("h", "hardlink", "d")])
    refused(store, tmp_path, outside, source, "'h' could not be created")


def test_missing_blob_and_malformed_metadata(store, tmp_path, outside):
    layout = oci_layout(tmp_path / "layout", [tar_of([("a", "file")])])
    layer_blobs(layout)[0].unlink()
    refused(store, tmp_path, outside, layout, "names 'blobs/sha256/", "which is not in")
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{}]}))
    refused(store, tmp_path, outside, layout, "not a valid image description")


@pytest.mark.parametrize("document, expected", [
    ([{"config": {}}], "is a list, not a JSON object"),
    ("just a string", "is a string, not a JSON object"),
    ({"config": ["/bin/sh"], "rootfs": {"diff_ids": []}}, "the image's config is a list"),
    ({"config": {"Cmd": "/bin/sh"}, "rootfs": {"diff_ids": []}},
     'has Cmd "/bin/sh": the OCI image spec wants a list of strings'),
    ({"config": {"Env": [1]}, "rootfs": {"diff_ids": []}}, "has Env [1]"),
    ({"config": {"User": 1000}, "rootfs": {"diff_ids": []}},
     'has User 1000, a number: the OCI image spec wants a string such as "1000"'),
    ({"config": {"WorkingDir": {"a": 1}}, "rootfs": {"diff_ids": []}}, "has WorkingDir"),
], ids=["config-list", "config-string", "config-config-list", "cmd-string", "env-number",
        "user-number", "workdir-object"])
def test_docker_save_with_a_malformed_config(store, tmp_path, outside, document, expected):
    """Refused by name, in one line, before any layer is unpacked."""
    archive = docker_save(tmp_path / "saved.tar", [], document=document)
    refused(store, tmp_path, outside, archive, expected)


def test_a_malformed_config_is_refused_before_a_layer_is_read(store, tmp_path, outside):
    layer = tar_of([("big", "file", b"x" * 100_000)])
    document = {"config": {"User": 0}, "rootfs": {"diff_ids": [
        "sha256:" + hashlib.sha256(layer).hexdigest()]}}
    archive = docker_save(tmp_path / "saved.tar", [layer], document=document)
    message = refused(store, tmp_path, outside, archive, "has User 0, a number")
    assert "layer" not in message


def test_import_path_tag_where_the_tag_holds_a_colon(store, tmp_path):
    """The path is the longest part before a ':' that exists; the tag, all after it."""
    tars = [tar_of([("a", "file")])]
    folder = tmp_path / "odd:dir"
    folder.mkdir()
    (tmp_path / "odd").write_text("a shorter path that exists too: not the one meant")
    docker_save(folder / "saved.tar", tars, tags=["docker.io/library/app:1.0", "other:2"])
    assert store.import_image(f"{folder}/saved.tar:library/app:1.0", "app").layers
    assert store.import_image(f"{folder}/saved.tar:other:2", "other").layers
    with pytest.raises(RuntimeFailure, match=r"no images tagged 'library/app:9' in it \(tags there: "
                                             r"docker.io/library/app:1.0, other:2\)"):
        store.import_image(f"{folder}/saved.tar:library/app:9", "x")
    with pytest.raises(RuntimeFailure, match="no tag after the ':'"):
        store.import_image(f"{folder}/saved.tar:", "x")
    with pytest.raises(RuntimeFailure, match="no such file or directory"):
        store.import_image(f"{tmp_path}/none/nothing.tar:app:1.0", "x")
    with pytest.raises(RuntimeFailure, match="a rootfs tarball, which holds one untagged image, "
                                             "but the tag 'latest' was asked for"):
        store.import_image(f"{tmp_path}/odd:latest", "x")
    with pytest.raises(RuntimeFailure, match="a directory, which holds one untagged image"):
        store.import_image(f"{tmp_path}:latest", "x")
