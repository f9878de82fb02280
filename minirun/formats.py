"""The formats images travel in, all read into one shape: layers (bottom first) and a config.

    directory            a root filesystem as a plain tree of files: one layer
    rootfs tarball       `tar -C rootfs -c .` or `docker export`; plain, gzip, zstd or xz: one layer
    docker save tarball  manifest.json → a config JSON and one tar per layer (Docker's format)
    OCI image layout     a directory or a tar holding `oci-layout`, `index.json` and
                         `blobs/sha256/<hex>`, as `skopeo copy ... oci:DIR` and umoci write it

The OCI layout is a chain of content addresses (OCI image spec: image-layout.md, manifest.md,
config.md): index.json names a manifest by the sha256 of its bytes; the manifest names the config
and each layer blob the same way; the config lists each layer's `diff_id`, the sha256 of the
layer's *uncompressed* tar. Check every link, and one trusted index vouches for every byte below
it. A docker save archive has the same chain from its config down (the config's file name is its
own sha256). A rootfs tarball or a directory carries no digests: its diff_id is computed on import.
"""
import gzip
import hashlib
import io
import json
import lzma
import platform
import re
import subprocess
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator

from minirun.errors import RuntimeFailure

INDEX_MEDIA_TYPES = {"application/vnd.oci.image.index.v1+json",
                     "application/vnd.docker.distribution.manifest.list.v2+json"}
REF_NAME = "org.opencontainers.image.ref.name"      # the tag of a manifest in an OCI index
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}  # uname's names → OCI's (Go's) names


@dataclass
class Layer:
    open: Callable[[], ContextManager[BinaryIO]]    # the blob as stored: a tar, maybe compressed
    size: int | None                                # its size in bytes, if known (for progress)
    digest: str | None = None       # "sha256:<hex>" of the blob as stored, where the format says
    diff_id: str | None = None      # "sha256:<hex>" of the uncompressed tar, where the format says


@dataclass
class Source:
    kind: str                       # "directory", "rootfs tarball", "docker save", "OCI layout"
    layers: list[Layer]
    config: dict = field(default_factory=dict)  # the config's "config": Entrypoint, Cmd, Env, ...


@contextmanager
def open_source(spec: str) -> Iterator[Source]:
    """Open what `minirun import SOURCE` names: a path, or PATH:REF to pick one tagged image out
    of an OCI layout or docker save archive that holds several."""
    path, ref = split_source(spec)
    if path.is_dir():
        folder = _Folder(path)
        yield _read_bundle(folder, ref) or _single("directory", Layer(partial(_tar_of, path), None), ref)
        return
    with open(path, "rb") as file:
        compressed = _compression(file.read(6)) is not None
    if not compressed and tarfile.is_tarfile(path):
        with tarfile.open(path, "r:") as archive:
            try:
                members = _Archive(archive)
            except tarfile.TarError as error:
                raise RuntimeFailure(f"the tar is truncated or corrupt ({error})") from None
            found = _read_bundle(members, ref)
            if found:
                yield found
                return
    yield _single("rootfs tarball", Layer(partial(open, path, "rb"), path.stat().st_size), ref)


def _single(kind: str, layer: Layer, ref: str | None) -> Source:
    """A directory or rootfs tarball: one image of one layer, with no tags to pick it by."""
    if ref:
        raise RuntimeFailure(f"it is a {kind}, which holds one untagged image, but the tag "
                             f"{ref!r} was asked for: give the path alone")
    return Source(kind, [layer])


def split_source(spec: str) -> tuple[Path, str | None]:
    """SOURCE as (path, tag or None). A tag may hold ':' (docker save names images like
    `library/app:1.0`), and so may a path; the rule that makes it unambiguous: SOURCE is a path
    if it exists; else the path is the longest part before a ':' that exists, and the tag is all
    after that ':'. So `app.tar:library/app:1.0` is app.tar's image library/app:1.0."""
    if Path(spec).exists():
        return Path(spec), None
    for cut in reversed([at for at, char in enumerate(spec) if char == ":" and at > 0]):
        if Path(spec[:cut]).exists():
            if cut == len(spec) - 1:
                raise RuntimeFailure("no tag after the ':': name one as PATH:TAG, or give the "
                                     "path alone")
            return Path(spec[:cut]), spec[cut + 1:]
    raise RuntimeFailure("no such file or directory")


# -- the two files-of-files: an image as a directory, or as a tar read in place ------------------

class _Folder:
    def __init__(self, path: Path):
        self.path = path

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def size(self, name: str) -> int:
        return self._file(name).stat().st_size

    def open(self, name: str) -> BinaryIO:
        return open(self._file(name), "rb")

    def _file(self, name: str) -> Path:
        if not self.has(_inside(name)):
            raise RuntimeFailure(f"the image names {name!r}, which is not in {self.path}")
        return self.path / name


class _Archive:
    """A tar is seekable: its members are read where they lie, never unpacked to disk first."""

    def __init__(self, archive: tarfile.TarFile):
        self.archive = archive
        self.members = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}

    def has(self, name: str) -> bool:
        return name in self.members

    def size(self, name: str) -> int:
        return self._member(name).size

    def open(self, name: str) -> BinaryIO:
        return self.archive.extractfile(self._member(name))

    def _member(self, name: str) -> tarfile.TarInfo:
        try:
            return self.members[_inside(name)]
        except KeyError:
            raise RuntimeFailure(f"the image names {name!r}, which is not in the archive") from None


def _inside(name: str) -> str:
    """A file name taken from the image's own JSON must stay inside the image."""
    if name.startswith("/") or ".." in name.split("/"):
        raise RuntimeFailure(f"the image names the file {name!r}, outside itself")
    return name


def _read_bundle(bundle, ref: str | None) -> Source | None:
    """The image in an OCI layout or a docker save archive; None if it is neither."""
    read = (_read_oci if bundle.has("oci-layout") and bundle.has("index.json") else
            _read_docker_save if bundle.has("manifest.json") else None)
    try:
        return read and read(bundle, ref)
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise RuntimeFailure(f"its metadata is not a valid image description "
                             f"({type(error).__name__}: {error})") from None


# -- OCI image layout ----------------------------------------------------------------------------

def _read_oci(bundle, ref: str | None) -> Source:
    index = _read_json(bundle, "index.json")
    manifest = _read_json(bundle, *_blob(_choose(index, ref)))
    while "manifests" in manifest or manifest.get("mediaType") in INDEX_MEDIA_TYPES:
        manifest = _read_json(bundle, *_blob(_choose(manifest, None)))   # a multi-platform index
    config = _read_json(bundle, *_blob(manifest["config"]))
    descriptors, diff_ids = manifest["layers"], config["rootfs"]["diff_ids"]
    if len(descriptors) != len(diff_ids):
        raise RuntimeFailure(f"the image's manifest has {len(descriptors)} layers but its config "
                             f"lists {len(diff_ids)}")
    layers = []
    for descriptor, diff_id in zip(descriptors, diff_ids):
        name, digest = _blob(descriptor)
        if bundle.size(name) != descriptor["size"]:
            raise RuntimeFailure(f"layer {digest} has {bundle.size(name)} bytes but its manifest "
                                 f"says {descriptor['size']}: the blob is truncated or corrupt")
        layers.append(Layer(partial(bundle.open, name), descriptor["size"], digest,
                            _checked_digest(diff_id, "diff_id")))
    return Source("OCI layout", layers, config.get("config") or {})


def _blob(descriptor: dict) -> tuple[str, str]:
    """A descriptor's blob: its path in the layout (blobs/<algorithm>/<hex>) and its digest."""
    digest = _checked_digest(descriptor["digest"], "digest")
    return "blobs/" + digest.replace(":", "/"), digest


def _checked_digest(value, what: str) -> str:
    """A digest from untrusted metadata, if it is exactly "sha256:" and 64 hex digits.

    Digests become file names (blobs/sha256/<hex>, the store's layers/<hex>): anything looser,
    such as a diff_id of "/etc" or "sha256:../../x", would name a path outside the image.
    """
    if not isinstance(value, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise RuntimeFailure(f"unsupported or malformed {what} {value!r} in the image's metadata "
                             "(minirun takes sha256:<64 hex digits>)")
    return value


def _choose(index: dict, ref: str | None) -> dict:
    """One manifest of an index: the one tagged `ref`, else the only one for this machine."""
    manifests = index.get("manifests") or []
    tags = [(m.get("annotations") or {}).get(REF_NAME) for m in manifests]
    if ref:
        return _exactly_one([m for m, tag in zip(manifests, tags) if tag == ref], ref, tags, "")
    arch = ARCHITECTURES.get(platform.machine(), platform.machine())
    chosen = [m for m in manifests if m.get("platform", {}).get("architecture", arch) == arch]
    return _exactly_one(chosen, ref, tags, f" for {arch}")


# -- docker save ---------------------------------------------------------------------------------

def _read_docker_save(bundle, ref: str | None) -> Source:
    entries = _read_json(bundle, "manifest.json", shape=list)
    tags = [e.get("RepoTags") or [] for e in entries]
    if ref:         # Docker writes full names: `docker.io/library/app:1.0` matches `app:1.0`, `1.0`
        entries = [e for e, names in zip(entries, tags)
                   if any(t == ref or t.endswith(("/" + ref, ":" + ref)) for t in names)]
    entry = _exactly_one(entries, ref, [t for names in tags for t in names], "")
    config = _read_json(bundle, entry["Config"], _digest_in_name(entry["Config"]))
    diff_ids = config["rootfs"]["diff_ids"]
    if len(entry["Layers"]) != len(diff_ids):
        raise RuntimeFailure(f"the archive's manifest has {len(entry['Layers'])} layers but its "
                             f"config lists {len(diff_ids)}")
    layers = [Layer(partial(bundle.open, name), bundle.size(name), None,
                    _checked_digest(diff_id, "diff_id"))
              for name, diff_id in zip(entry["Layers"], diff_ids)]
    return Source("docker save", layers, config.get("config") or {})


def _exactly_one(chosen: list, ref: str | None, tags: list, where: str):
    """The one image asked for; else say how many there are, and their tags."""
    if len(chosen) == 1:
        return chosen[0]
    known = ", ".join(sorted(filter(None, tags))) or "none"
    count = len(chosen) or "no"
    if ref:
        raise RuntimeFailure(f"{count} images tagged {ref!r} in it (tags there: {known})")
    raise RuntimeFailure(f"{count} images{where} in it: name one as PATH:TAG (tags there: {known})")


def _digest_in_name(name: str) -> str | None:
    """Docker names the config file after its sha256: `<hex>.json`, or `blobs/sha256/<hex>`."""
    found = re.fullmatch(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", name)
    return f"sha256:{found.group(1)}" if found else None


def _read_json(bundle, name: str, digest: str | None = None, shape: type = dict):
    """A JSON document of the image, which must be an object (or, for docker's manifest.json,
    a list): a config that is a list or a string is refused here, by name, not later by a
    confusing TypeError."""
    with bundle.open(name) as file:
        data = file.read()
    if digest:
        verify(digest, "sha256:" + hashlib.sha256(data).hexdigest(), name)
    try:
        document = json.loads(data)
    except ValueError as error:
        raise RuntimeFailure(f"{name} in the image is not valid JSON: {error}") from None
    if not isinstance(document, shape):
        found = {dict: "an object", list: "a list", str: "a string"}.get(type(document), "a scalar")
        wanted = "a JSON object" if shape is dict else "a JSON list"
        raise RuntimeFailure(f"{name} in the image is {found}, not {wanted}: "
                             "it is not a valid image description")
    return document


def verify(expected: str, actual: str, what: str) -> None:
    if expected != actual:
        raise RuntimeFailure(f"{what} is corrupt: its digest is {actual[:19]}… but the image says "
                             f"{expected[:19]}…; get a fresh copy of the image")


# -- a directory, as `tar -c` would write it -----------------------------------------------------

@contextmanager
def _tar_of(directory: Path) -> Iterator[BinaryIO]:
    """A directory is imported as the tar stream `tar -c` makes of it (in a second process, on
    the second core), so every source goes through the one careful extractor."""
    tar = subprocess.Popen(["tar", "-C", str(directory), "--sort=name", "--numeric-owner",
                            "-cf", "-", "."], stdout=subprocess.PIPE)
    try:
        yield tar.stdout
    finally:
        tar.stdout.close()
        status = tar.wait()
    if status != 0:
        raise RuntimeFailure(f"tar could not read all of {directory} (see its message above)")


# -- reading a layer: counted, hashed, decompressed ----------------------------------------------

class Hashing(io.RawIOBase):
    """A stream passed through unchanged, while its bytes are hashed (sha256) and counted."""

    def __init__(self, source: BinaryIO, on_read: Callable[[int], None] = lambda n: None):
        self.source, self.sha256, self.on_read = source, hashlib.sha256(), on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.source.readinto(buffer)
        self.sha256.update(memoryview(buffer)[:count])
        self.on_read(count)
        return count

    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def _compression(head: bytes) -> str | None:
    """The compression of a stream, by its first bytes (each format's magic number)."""
    for magic, name in ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"),
                        (b"\xfd7zXZ\x00", "xz")):
        if head.startswith(magic):
            return name
    return None


def decompressed(stream: io.BufferedReader) -> BinaryIO:
    """The uncompressed bytes of a layer, whichever of the compressions OCI allows (or xz)."""
    compression = _compression(stream.peek(6)[:6])
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    if compression == "xz":
        return lzma.LZMAFile(stream)
    return stream
