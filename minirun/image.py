"""The image store: images as stacks of unpacked layers plus a config, shared by minirun and minivm.

An image is the app and its userland, packaged once. On disk (under $MINIRUN_ROOT, by default
/var/lib/minirun):

    layers/<id>/          one unpacked layer, a directory tree, in overlayfs's form (whiteouts are
                          0/0 character devices, opaque directories carry trusted.overlay.opaque=y)
    images/<name>.json    {"name", "layers": [bottom ... top], "config": {Cmd, Env, ...},
                           "created", "size"}
    lock                  taken by every writer (see Store._locked)

A layer's <id> is its diff_id without the "sha256:" (the sha256 of the layer's uncompressed tar,
OCI image spec config.md): the same layer in two images has the same id, so it is unpacked and
stored once. (The bare hex also keeps ':' out of the path, as overlayfs's lowerdir= option uses
':' to separate layers.)

A container stacks the layers with overlayfs (minirun.rootfs); a VM packs them into its
initramfs (minivm.initramfs). Either way the image itself is never written to.

Importing (`minirun import`) reads the formats in minirun.formats and unpacks each layer with the
careful extractor in minirun.extract, into a scratch directory inside the store; only a fully
checked image is moved into place, by rename.

The built-in image `hello` is not downloaded: it is built here from Debian's busybox-static and
the recipe in images/hello/ the first time it is asked for.
"""
import fcntl
import io
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from minirun import state
from minirun.errors import RuntimeFailure

# Every `minirun run` and `minivm boot` loads this module, but only building and importing need
# hashlib, shutil, subprocess and tempfile (about 5 ms of imports): those functions import them.

DEFAULT_ROOT = "/var/lib/minirun"
RECIPES = Path(__file__).resolve().parent.parent / "images"
BUSYBOX = Path("/bin/busybox")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SCRATCH_PREFIX = ".new-"        # layers/.new-<pid>-XXXX: an import (or build) in progress
CHUNK = 1 << 20                 # bytes read at a time from a layer


@dataclass
class ImageConfig:
    """What the image says to run and how: the subset of the OCI image config that a run uses."""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)      # "KEY=VALUE", as in OCI and Docker
    workdir: str = "/"
    user: str = ""

    @classmethod
    def from_oci(cls, config: dict) -> "ImageConfig":
        return cls(entrypoint=list(config.get("Entrypoint") or []), cmd=list(config.get("Cmd") or []),
                   env=list(config.get("Env") or []), workdir=config.get("WorkingDir") or "/",
                   user=config.get("User") or "")

    def to_oci(self) -> dict:
        return {"Entrypoint": self.entrypoint, "Cmd": self.cmd, "Env": self.env,
                "WorkingDir": self.workdir, "User": self.user}

    def command(self, args: list[str]) -> list[str]:
        """As Docker: the entrypoint, then the given arguments or else the image's Cmd."""
        return self.entrypoint + (list(args) or self.cmd)

    def environment(self, overrides: list[str]) -> dict[str, str]:
        """The image's env with `-e KEY=VALUE` overrides on top, and a sane PATH if none."""
        env = {"PATH": DEFAULT_PATH}
        for item in self.env + list(overrides):
            key, _, value = item.partition("=")
            env[key] = value
        return env


@dataclass
class Image:
    name: str
    layers: list[Path]          # bottom first, as they are stacked
    config: ImageConfig


def store_root() -> Path:
    return Path(os.environ.get("MINIRUN_ROOT", DEFAULT_ROOT))


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else store_root()
        self.layers_dir = self.root / "layers"
        self.images_dir = self.root / "images"

    # -- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> Image:
        """The image called `name`; a built-in one is built on first use."""
        if (RECIPES / name / "image.json").is_file():
            return self._builtin(name)
        data = self._record(name)
        return self._image(name, data["layers"], ImageConfig.from_oci(data["config"]))

    def _image(self, name: str, layer_ids: list[str], config: ImageConfig) -> Image:
        """An image as overlayfs can stack it. An image may list one layer twice (every empty
        layer has the same diff_id), but overlayfs refuses a directory twice in lowerdir
        ("conflicting lowerdir path"). A layer applied again overrides all that its earlier
        copy did, so only the topmost copy counts: that is the one kept."""
        topmost_first = []
        for layer_id in reversed(layer_ids):
            if layer_id not in topmost_first:
                topmost_first.append(layer_id)
        layers = [self.layers_dir / _checked_layer_id(layer) for layer in reversed(topmost_first)]
        return Image(name=name, layers=layers, config=config)

    def names(self) -> list[str]:
        found = {p.stem for p in self.images_dir.glob("*.json")} if self.images_dir.is_dir() else set()
        return sorted(found | {p.parent.name for p in RECIPES.glob("*/image.json")})

    def records(self) -> list[dict]:
        """Every stored image's record (built-in images appear once they have been built)."""
        return [json.loads(path.read_text()) for path in sorted(self.images_dir.glob("*.json"))]

    def inspect(self, name: str) -> dict:
        """The image's record, with each layer's directory, as `minirun inspect` prints it."""
        self.get(name)
        record = self._record(name)
        record["layer_dirs"] = [str(self.layers_dir / layer) for layer in record["layers"]]
        return record

    def _record(self, name: str) -> dict:
        record = self.images_dir / f"{name}.json"
        if not _valid_name(name) or not record.is_file():
            known = ", ".join(self.names()) or "none"
            raise RuntimeFailure(f"no image {name!r} in {self.images_dir} (images here: {known}); "
                                 f"import one with `minirun import SOURCE {name}`")
        return json.loads(record.read_text())

    # -- importing -----------------------------------------------------------------------------
    def import_image(self, source: str, name: str, progress=None) -> Image:
        """Import a directory, rootfs tarball, docker save tarball or OCI layout as image `name`.

        Each layer is unpacked into a scratch directory inside the store and checked against
        its digests while it is read. Only when every layer is good are they renamed into
        layers/ and the record written: a failure at any point leaves the store as it was.
        """
        from minirun import formats
        from minirun.progress import Progress
        _check_name(name)
        if (RECIPES / name / "image.json").is_file():
            raise RuntimeFailure(f"{name!r} is the name of a built-in image: choose another name")
        replacing = (self.images_dir / f"{name}.json").is_file()
        if replacing:
            self._refuse_if_in_use(name, "import the new image")
        progress = progress or Progress(name, stream=io.StringIO())  # no terminal: quiet
        try:
            with formats.open_source(source) as found, self._scratch() as scratch:
                unpacked = []                       # (layer id, its tree; None if stored already)
                for number, layer in enumerate(found.layers, 1):
                    progress.layer(number, len(found.layers), layer.size)
                    try:
                        unpacked.append(self._unpack_new(layer, scratch / str(number), progress))
                    except RuntimeFailure as failure:
                        raise RuntimeFailure(f"{found.kind}, layer {number} of "
                                             f"{len(found.layers)}: {failure}") from None
                with self._locked():
                    for layer_id, tree in unpacked:
                        if tree:
                            self.commit_layer(tree, layer_id)
                    image = self._save_image(name, [layer_id for layer_id, _ in unpacked],
                                             ImageConfig.from_oci(found.config))
                    if replacing:                   # the old image's own layers are garbage now
                        self._collect_garbage()
        except RuntimeFailure as failure:
            raise RuntimeFailure(f"cannot import {source}: {failure}") from None
        finally:
            progress.clear()
        return image

    def _unpack_new(self, layer, tree: Path, progress) -> tuple[str, Path | None]:
        """Unpack a layer the store does not have yet into `tree`: its (id, tree), or (id, None)
        when its diff_id, vouched for by a checked config, names a layer we have already."""
        known = layer.diff_id and _layer_id(layer.diff_id)
        if known and (self.layers_dir / known).is_dir():
            return known, None                      # shared with another image: not read again
        tree.mkdir()
        try:
            return _layer_id(_unpack(layer, tree, progress)), tree
        except _damaged_errors() as error:
            raise RuntimeFailure(f"the layer is truncated or corrupt "
                                 f"({error or type(error).__name__})") from None

    # -- writing -------------------------------------------------------------------------------
    def commit_layer(self, tree: Path, layer_id: str) -> str:
        """Move the directory `tree` into the store as layer `layer_id` (atomically, by rename).

        If another process committed the same layer first, ours is discarded: same id, same content.
        """
        import shutil
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tree, self.layers_dir / _checked_layer_id(layer_id))
        except OSError:
            if not (self.layers_dir / layer_id).is_dir():
                raise
            shutil.rmtree(tree)
        return layer_id

    def save_image(self, name: str, layer_ids: list[str], config: ImageConfig) -> Image:
        with self._locked():
            return self._save_image(name, layer_ids, config)

    def _save_image(self, name: str, layer_ids: list[str], config: ImageConfig,
                    recipe: str | None = None) -> Image:
        _check_name(name)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        record = {"name": name, "layers": layer_ids, "config": config.to_oci(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "size": sum(_tree_size(self.layers_dir / layer) for layer in set(layer_ids))}
        if recipe:
            record["recipe"] = recipe       # a built-in image: the fingerprint of its inputs
        _write_atomically(self.images_dir / f"{name}.json", json.dumps(record, indent=2))
        return self._image(name, layer_ids, config)

    def scratch_dir(self) -> Path:
        """A temporary directory inside the store, on the same filesystem as the layers (so that
        committing is a rename). Its name carries our pid, so `remove` can tell a crashed
        import's leftovers from a running import's work."""
        import tempfile
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=self.layers_dir))

    @contextmanager
    def _scratch(self) -> Iterator[Path]:
        import shutil
        scratch = self.scratch_dir()
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- removing ------------------------------------------------------------------------------
    def remove(self, name: str) -> list[str]:
        """Remove image `name`, unless a running container uses it; then delete the layers that
        no image uses any more. Returns the ids of the layers deleted."""
        self._record(name)
        self._refuse_if_in_use(name, "remove the image")
        with self._locked():
            (self.images_dir / f"{name}.json").unlink()
            return self._collect_garbage()

    def _refuse_if_in_use(self, name: str, then: str) -> None:
        """A running container's root is an overlay over its image's layers: they must stay
        until it ends. As long as no in-use image is removed or replaced, the layers of every
        running container are named by an image record, and so spared by the collector."""
        users = [c.id for c in state.containers() if c.image == name and state.is_alive(c)]
        if users:
            raise RuntimeFailure(f"image {name!r} is in use by running container(s) "
                                 f"{', '.join(users)}: stop them first, then {then}")

    def _collect_garbage(self) -> list[str]:
        """Delete the layers no image names, and scratch directories of imports that died.
        Called with the lock held: a layer committed but not yet named by its image's record
        would otherwise look like garbage."""
        import shutil
        used = {layer for record in self.records() for layer in record["layers"]}
        deleted = []
        for path in self.layers_dir.iterdir() if self.layers_dir.is_dir() else []:
            if path.name.startswith(SCRATCH_PREFIX):
                if not state.process_exists(int(path.name[len(SCRATCH_PREFIX):].split("-")[0])):
                    shutil.rmtree(path, ignore_errors=True)
            elif path.name not in used:
                shutil.rmtree(path)
                deleted.append(path.name)
        return deleted

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: an exclusive flock(2) on the store's lock file, released by the
        kernel even if we are killed."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- the built-in images -------------------------------------------------------------------
    def _builtin(self, name: str) -> Image:
        """A recipe image, built when its inputs changed since it was last built.

        Whether they changed is told by their sizes and modification times (a few stats), not
        their contents: hashing the 2 MB busybox binary on every run would cost milliseconds.
        """
        recipe = RECIPES / name
        if not BUSYBOX.is_file():
            raise RuntimeFailure(f"the built-in image {name!r} needs {BUSYBOX}: "
                                 "install it with `apt-get install busybox-static`")
        fingerprint = _fingerprint([BUSYBOX, *_files_below(recipe)])
        try:
            data = json.loads((self.images_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("recipe") == fingerprint and (self.layers_dir / data["layers"][-1]).is_dir():
            return self._image(name, data["layers"], ImageConfig.from_oci(data["config"]))
        return self._build_builtin(name, recipe, fingerprint)

    def _build_builtin(self, name: str, recipe: Path, fingerprint: str) -> Image:
        """Build a recipe image: busybox-static's applets plus the recipe's rootfs/ files.

        The layer id is a hash of the inputs' contents, so editing the recipe or upgrading
        busybox builds a new layer, while touching a file without changing it builds nothing.
        """
        import shutil
        layer_id = _hash_recipe(recipe)
        config = ImageConfig.from_oci(json.loads((recipe / "image.json").read_text())["config"])
        if (self.layers_dir / layer_id).is_dir():
            with self._locked():
                return self._save_image(name, [layer_id], config, recipe=fingerprint)
        with self._scratch() as scratch:
            tree = scratch / "layer"
            tree.mkdir()
            _install_busybox(tree)
            shutil.copytree(recipe / "rootfs", tree, symlinks=True, dirs_exist_ok=True)
            with self._locked():
                self.commit_layer(tree, layer_id)
                return self._save_image(name, [layer_id], config, recipe=fingerprint)


def _unpack(layer, tree: Path, progress) -> str:
    """Unpack one layer into `tree`, checking its digests; return its diff_id.

    The bytes flow once through: blob → sha256 (the blob's digest) → decompressor → sha256 (the
    diff_id) → the extractor. Both digests are judged at the end; a mismatch discards the tree.
    """
    from minirun import extract, formats
    with layer.open() as blob:
        stored = formats.Hashing(blob, progress.advance)
        buffered = io.BufferedReader(stored, CHUNK)
        plain = formats.decompressed(buffered)
        if plain is buffered:                   # an uncompressed tar: blob digest == diff_id
            uncompressed, stream = stored, buffered
        else:
            uncompressed = formats.Hashing(plain)
            stream = io.BufferedReader(uncompressed, CHUNK)
        extract.unpack_layer(stream, str(tree))
        for rest in (stream, buffered):         # the tar's end padding is part of its digest
            while rest.read(CHUNK):
                pass
    if layer.digest:
        formats.verify(layer.digest, stored.digest(), "the layer blob")
    if layer.diff_id:
        formats.verify(layer.diff_id, uncompressed.digest(), "the uncompressed layer")
    return uncompressed.digest()


def _damaged_errors() -> tuple[type[BaseException], ...]:
    """What the tar reader and the decompressors raise on a truncated or damaged stream."""
    import gzip
    import lzma
    import tarfile
    import zlib
    import zstandard
    return (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile,
            zstandard.ZstdError)


def _layer_id(diff_id: str) -> str:
    return _checked_layer_id(diff_id.removeprefix("sha256:"))


def _checked_layer_id(layer_id: str) -> str:
    """A layer id becomes a path, layers/<id>: only 64 hex digits may ever be joined to it."""
    if len(layer_id) != 64 or not all(c in "0123456789abcdef" for c in layer_id):
        raise RuntimeFailure(f"invalid layer id {layer_id!r}: a layer is named by 64 hex digits")
    return layer_id


def _tree_size(tree: Path) -> int:
    """Bytes of the files in a tree, counting a hard-linked file once."""
    seen, total = set(), 0
    for folder, _, files in os.walk(tree):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def _install_busybox(tree: Path) -> None:
    """A minimal Unix userland: the FHS directories and one busybox binary with a link per applet."""
    import shutil
    import subprocess
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "run",
              "var", "tmp"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, tree / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:                          # e.g. "usr/bin/awk"
        link = tree / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")


def _files_below(folder: Path) -> list[Path]:
    return sorted(Path(top, name) for top, dirs, files in os.walk(folder) for name in dirs + files)


def _fingerprint(paths: list[Path]) -> str:
    """Size, mtime and mode of each path: changes whenever a file is rewritten."""
    stats = (os.lstat(path) for path in paths)
    return ";".join(f"{info.st_size}:{info.st_mtime_ns}:{info.st_mode:o}" for info in stats)


def _hash_recipe(recipe: Path) -> str:
    import hashlib
    digest = hashlib.sha256(BUSYBOX.read_bytes())
    for path in _files_below(recipe):
        digest.update(str(path.relative_to(recipe)).encode() + oct(path.lstat().st_mode).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise RuntimeFailure(f"invalid image name {name!r}: use lower-case letters, digits, "
                             "'.', '_', '-' and ':'")


def _valid_name(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789._:-")
    return bool(name) and name[0].isalnum() and set(name) <= allowed and ".." not in name


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.rename(tmp, path)
