"""Helpers for the image tests: archives and OCI layouts made on purpose, and what a layer stack
looks like once overlayfs has merged it."""
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def snapshot(root) -> dict:
    """Every path under `root` with what an image must keep: type, mode, owner, and the content
    (or link target). Timestamps of files too; directories' change whenever they are written."""
    root = str(root)
    found = {".": _describe(root)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = _describe(path)
    return found


def _describe(path: str) -> list:
    info = os.lstat(path)
    kind = stat.S_IFMT(info.st_mode)
    common = [stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid]
    if kind == stat.S_IFREG:
        return ["file", *common, info.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest()]
    if kind == stat.S_IFLNK:
        return ["symlink", info.st_uid, info.st_gid, os.readlink(path)]
    if kind == stat.S_IFDIR:
        return ["dir", *common]
    if kind == stat.S_IFIFO:
        return ["fifo", *common]
    return ["other", oct(info.st_mode), os.major(info.st_rdev), os.minor(info.st_rdev)]


_MERGE = """
import json, subprocess, sys
sys.path.insert(0, sys.argv[3])
from image_helpers import snapshot
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + sys.argv[1], sys.argv[2]],
               check=True)
print(json.dumps(snapshot(sys.argv[2])))
"""


def merged_view(layer_dirs, scratch: Path) -> dict:
    """Mount the layers (bottom first) read-only with overlayfs, exactly as a container's root
    sits on them, in a private mount namespace that dies with the child, and snapshot it.
    An empty bottom layer is added: overlayfs wants two lower layers when there is no upper."""
    empty, mountpoint = scratch / "empty", scratch / "merged"
    empty.mkdir(exist_ok=True)
    mountpoint.mkdir(exist_ok=True)
    lowerdir = ":".join(str(d) for d in reversed([empty, *layer_dirs]))
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                          _MERGE, lowerdir, str(mountpoint), str(HERE)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def tar_of(entries) -> bytes:
    """A tar from a list of (name, kind, extra): kind is 'file' (extra: bytes), 'dir', 'symlink'
    or 'hardlink' (extra: target), "chr" or "blk" (extra: (major, minor)); made as an attacker would."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, *extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1700000000, 0o755 if kind == "dir" else 0o644
            data = None
            if kind == "file":
                data = extra[0] if extra else b"data\n"
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, extra[0]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, extra[0]
            elif kind in ("chr", "blk"):
                info.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                info.devmajor, info.devminor = extra[0]
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def write_blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(layout: Path, layer_tars: list, config: dict | None = None,
               compress=gzip.compress, media_type="application/vnd.oci.image.layer.v1.tar+gzip") -> Path:
    """An OCI image layout (image-layout.md) of the given uncompressed layer tars, written by hand."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = [{"mediaType": media_type, **write_blob(layout, compress(tar))} for tar in layer_tars]
    config_blob = {"architecture": "amd64", "os": "linux", "config": config or {},
                   "rootfs": {"type": "layers",
                              "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layer_tars]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **write_blob(layout, json.dumps(config_blob).encode())},
                "layers": layers}
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         **write_blob(layout, json.dumps(manifest).encode()),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def layer_blobs(layout: Path) -> list[Path]:
    """The layer blob files of the (only) image in an OCI layout, bottom first."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob_path(layout, index["manifests"][0]["digest"]).read_text())
    return [_blob_path(layout, layer["digest"]) for layer in manifest["layers"]]


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / digest.replace(":", "/")


def tree_listing(root: Path) -> set[str]:
    """All paths under root, relative, for checking that nothing appeared or vanished."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


def docker_save(path: Path, layer_tars: list, config=None, tags=("example/app:1.0",),
                document=None) -> Path:
    """A `docker save` archive (manifest.json, a config named by its sha256, one tar per layer)
    written by hand; `document` replaces the whole config file, to make a malformed one."""
    if document is None:
        document = {"architecture": "amd64", "os": "linux", "config": config or {},
                    "rootfs": {"type": "layers", "diff_ids": [
                        f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layer_tars]}}
    config_bytes = json.dumps(document).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    files = {config_name: config_bytes}
    for number, tar in enumerate(layer_tars):
        files[f"{number}/layer.tar"] = tar
    files["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": list(tags),
                                          "Layers": [f"{n}/layer.tar" for n in range(len(layer_tars))]}]).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def build_static(source: Path, directory: Path, *flags: str) -> Path:
    """Compile a test's C probe statically (the container's image has no C library to link
    against) into `directory`; returns the binary."""
    import shutil
    if not shutil.which("gcc"):
        raise AssertionError(f"gcc is needed to build {source.name}: apt-get install gcc libc6-dev")
    binary = Path(directory) / source.stem
    subprocess.run(["gcc", "-static", "-O2", *flags, "-o", str(binary), str(source)], check=True)
    return binary


def hello_with(store, binary: Path, image: str) -> str:
    """Save image `image`: `hello` plus one layer holding `binary` in /usr/local/bin."""
    import shutil
    hello = store.get("hello")
    tree = store.scratch_dir()
    (tree / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(binary, tree / "usr/local/bin" / binary.name)
    layer = store.commit_layer(tree, hashlib.sha256(binary.read_bytes()).hexdigest())
    store.save_image(image, [path.name for path in hello.layers] + [layer], hello.config)
    return image
