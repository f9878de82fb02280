"""The image store: images as stacks of unpacked layers plus a config, shared by minirun and minivm.

An image is the app and its userland, packaged once. On disk (under $MINIRUN_ROOT, by default
/var/lib/minirun):

    layers/<id>/          one unpacked layer, a directory tree, in overlayfs's form (whiteouts are
                          0/0 character devices, opaque directories carry trusted.overlay.opaque=y)
    images/<name>.json    {"name", "layers": [bottom ... top], "config": {Cmd, Env, ...},
                           "created", "size"}; a '/' of the name is written '+' in the file name
    containers/<id>/      each running container's writable layer (minirun.rootfs)
    tmp/<pid>-<start>-*   scratch space of an import or build in progress (see Store.scratch_dir)
    lock                  taken by every writer (see Store._locked)

The root is mode 0700: no one but root may even look in. The layers hold what images carry,
set-user-ID-root programs included, and so do the containers' writable layers: were the store
open to all, any local user could run such a program through the store's path and be root.

An imported layer's <id> is its diff_id without the "sha256:" (the sha256 of the layer's
uncompressed tar, OCI image spec config.md): the same layer in two images has the same id, so it
is unpacked and stored once. A built-in image's layer has no tar and so no diff_id: its <id> is a
hash of the recipe's inputs (see Store._build_builtin). (The bare hex also keeps ':' out of the path, as overlayfs's lowerdir= option uses
':' to separate layers.)

A container stacks the layers with overlayfs (minirun.rootfs); a VM packs them into its
initramfs (minivm.initramfs). Either way the image itself is never written to.

Importing (`minirun import`) reads the formats in minirun.formats and unpacks each layer with the
careful extractor in minirun.extract, into a scratch directory inside the store; only a fully
checked image is moved into place, by rename. An import may write at most IMPORT_MAX_SIZE bytes
and IMPORT_MAX_FILES entries (`minirun import --max-size/--max-files`), so that a small archive
that unpacks to a huge one (a compression or sparse-file bomb) cannot fill the disk.

The built-in image `hello` is not downloaded: it is built here from Debian's busybox-static and
the recipe in images/hello/ the first time it is asked for.
"""
import errno
import fcntl
import io
import json
import os
import re
import stat
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
CHUNK = 1 << 20                 # bytes read at a time from a layer
ROOT_MODE = 0o700               # the store's root: see the module's docstring
IMPORT_MAX_SIZE = 16 << 30      # bytes of file data one import may write (a Debian image: ~0.3G)
IMPORT_MAX_FILES = 1_000_000    # entries one import may write (a Debian image: ~13,000)

# An image name, as Docker's reference grammar has it (distribution/reference): path components
# of lower-case letters and digits, joined inside by '.', '_', '__' or runs of '-', separated by
# '/', and an optional ':TAG'. No component can be '.' or '..', and no name starts with '/': a
# name is never a path. (Docker's optional registry host, "host:port/", is left out: there is
# no registry here.) The record's file name is the name with '+' for '/', plus ".json": 250
# characters keep it under the 255 bytes a file name may have.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_PATTERN = rf"{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
NAME_MAX = 250


@dataclass
class ImageConfig:
    """What the image says to run and how: the subset of the OCI image config that a run uses."""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)      # "KEY=VALUE", as in OCI and Docker
    workdir: str = "/"
    user: str = ""

    @classmethod
    def from_oci(cls, config) -> "ImageConfig":
        """The config's fields, each of the type the OCI image spec gives it (config.md).

        The config is the image's, untrusted: a field of another type is refused, not guessed
        at. `"User": 1000` is refused too, as Docker's JSON decoder refuses it (a Go string
        field takes no number); accepting it would make images that every other tool rejects.
        """
        if not isinstance(config, dict):
            raise RuntimeFailure(f"the image's config is {_json_type(config)}, not a JSON object")
        return cls(entrypoint=_strings(config, "Entrypoint"), cmd=_strings(config, "Cmd"),
                   env=_strings(config, "Env"), workdir=_string(config, "WorkingDir") or "/",
                   user=_string(config, "User"))

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


def _strings(config: dict, key: str) -> list[str]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RuntimeFailure(f"the image's config has {key} {_shown(value)}: the OCI image spec "
                             "wants a list of strings; fix the image's config")
    return value


def _string(config: dict, key: str) -> str:
    value = config.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        example = f' such as "{value}"' if type(value) in (int, float) else ""
        raise RuntimeFailure(f"the image's config has {key} {_shown(value)}, {_json_type(value)}: "
                             f"the OCI image spec wants a string{example}; fix the image's config")
    return value


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _shown(value) -> str:
    """A value of an untrusted config, short enough for one line of error."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        self.tmp_dir = self.root / "tmp"
        _close_root(self.root)

    # -- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> Image:
        """The image called `name`; a built-in one is built on first use."""
        recipe = _recipe(check_name(name))
        if recipe:
            return self._builtin(name, recipe)
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
        found = {record["name"] for record in self.records()}
        return sorted(found | {p.parent.name for p in RECIPES.glob("*/image.json")})

    def records(self) -> list[dict]:
        """Every stored image's record (built-in images appear once they have been built)."""
        return [json.loads(path.read_text()) for path in sorted(self.images_dir.glob("*.json"))]

    def inspect(self, name: str) -> dict:
        """The image's record, with each layer's directory, as `minirun inspect` prints it."""
        self.get(check_name(name))
        record = self._record(name)
        record["layer_dirs"] = [str(self.layers_dir / layer) for layer in record["layers"]]
        return record

    def _record_path(self, name: str) -> Path:
        """images/<name>.json, one file whatever the name: a '/' of the name is written '+',
        which no name holds, so no name makes a subdirectory and no two names share a file."""
        return self.images_dir / (check_name(name).replace("/", "+") + ".json")

    def _record(self, name: str) -> dict:
        record = self._record_path(name)
        if not record.is_file():
            known = ", ".join(self.names()) or "none"
            raise RuntimeFailure(f"no image {name!r} in {self.images_dir} (images here: {known}); "
                                 f"import one with `minirun import SOURCE {name}`")
        return json.loads(record.read_text())

    # -- importing -----------------------------------------------------------------------------
    def import_image(self, source: str, name: str, progress=None, max_size: int = IMPORT_MAX_SIZE,
                     max_files: int = IMPORT_MAX_FILES) -> Image:
        """Import a directory, rootfs tarball, docker save tarball or OCI layout as image `name`.

        Each layer is unpacked into a scratch directory inside the store and checked against
        its digests while it is read, and all of them together may write at most `max_size`
        bytes of file data and `max_files` entries. Only when every layer is good are they
        renamed into layers/ and the record written: a failure at any point, a full disk
        included, leaves the store as it was.
        """
        from minirun import extract, formats
        from minirun.progress import Progress
        if _recipe(check_name(name)):
            raise RuntimeFailure(f"{name!r} is the name of a built-in image: choose another name")
        replacing = self._record_path(name).is_file()
        if replacing:
            self._refuse_if_in_use(name, "import the new image")
        self.remove_stale_scratch()                 # what killed imports left
        progress = progress or Progress(name, stream=io.StringIO())  # no terminal: quiet
        budget = extract.Budget(max_size, max_files)
        try:
            with formats.open_source(source) as found, self._scratch() as scratch:
                config = ImageConfig.from_oci(found.config)     # refused before any unpacking
                unpacked = []                       # (layer id, its tree; None if stored already)
                for number, layer in enumerate(found.layers, 1):
                    progress.layer(number, len(found.layers), layer.size)
                    try:
                        unpacked.append(self._unpack_new(layer, scratch / str(number), progress,
                                                         budget))
                    except RuntimeFailure as failure:
                        raise RuntimeFailure(f"{found.kind}, layer {number} of "
                                             f"{len(found.layers)}: {failure}") from None
                with self._locked():
                    image = self._commit(name, unpacked, config)
                    if replacing:                   # the old image's own layers are garbage now
                        self._collect_garbage()
        except RuntimeFailure as failure:
            raise RuntimeFailure(f"cannot import {source}: {failure}") from None
        except OSError as error:
            raise self._failure(f"cannot import {source}", error) from None
        finally:
            progress.clear()
        return image

    def _unpack_new(self, layer, tree: Path, progress, budget) -> tuple[str, Path | None]:
        """Unpack a layer the store does not have yet into `tree`: its (id, tree), or (id, None)
        when its diff_id, vouched for by a checked config, names a layer we have already."""
        known = layer.diff_id and _layer_id(layer.diff_id)
        if known and (self.layers_dir / known).is_dir():
            return known, None                      # shared with another image: not read again
        tree.mkdir()
        try:
            return _layer_id(_unpack(layer, tree, progress, budget)), tree
        except _damaged_errors() as error:
            raise RuntimeFailure(f"the layer is truncated or corrupt "
                                 f"({error or type(error).__name__})") from None

    # -- writing -------------------------------------------------------------------------------
    def commit_layer(self, tree: Path, layer_id: str) -> str:
        """Move the directory `tree` into the store as layer `layer_id` (atomically, by rename).

        If another process committed the same layer first, ours is discarded: same id, same content.
        """
        import shutil
        try:
            os.rename(tree, self._directory(self.layers_dir) / _checked_layer_id(layer_id))
        except OSError:
            if not (self.layers_dir / layer_id).is_dir():
                raise
            shutil.rmtree(tree)
        return layer_id

    def save_image(self, name: str, layer_ids: list[str], config: ImageConfig) -> Image:
        with self._locked():
            return self._save_image(name, layer_ids, config)

    def _commit(self, name: str, unpacked: list[tuple[str, Path | None]], config: ImageConfig,
                recipe: str | None = None) -> Image:
        """With the lock held: move the new layers (those with a tree) into layers/, then write
        the record that names them. Should that fail half-way (a full disk), the layers that no
        record names are removed again: a layer nothing names would stay forever."""
        try:
            for layer_id, tree in unpacked:
                if tree:
                    self.commit_layer(tree, layer_id)
            return self._save_image(name, [layer_id for layer_id, _ in unpacked], config, recipe)
        except BaseException:
            self._collect_garbage()
            raise

    def _save_image(self, name: str, layer_ids: list[str], config: ImageConfig,
                    recipe: str | None = None) -> Image:
        record = {"name": check_name(name), "layers": layer_ids, "config": config.to_oci(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "size": sum(_tree_size(self.layers_dir / layer) for layer in set(layer_ids))}
        if recipe:
            record["recipe"] = recipe       # a built-in image: the fingerprint of its inputs
        # Written whole in tmp/, then renamed: readers see the old record or the new, never half.
        with self._scratch() as scratch:
            (scratch / "record").write_text(json.dumps(record, indent=2))
            self._directory(self.images_dir)
            os.rename(scratch / "record", self._record_path(name))
        return self._image(name, layer_ids, config)

    # -- scratch space -------------------------------------------------------------------------
    def scratch_dir(self) -> Path:
        """A new directory in tmp/, on the store's filesystem (so that committing a layer is a
        rename), named after its owner: our PID and our start time (see state.start_time).

        A PID alone would not do: once its owner is killed, the number goes to another process,
        and the leftover would look owned for as long as that stranger runs. A PID with its start time names one process
        for good, and needs nothing held open, unlike an flock(2) per directory. tmp/ holds
        every scratch directory, so that one listdir finds the leftovers."""
        import tempfile
        owner = f"{os.getpid()}-{state.start_time(os.getpid())}-"
        return Path(tempfile.mkdtemp(prefix=owner, dir=self._directory(self.tmp_dir)))

    @contextmanager
    def _scratch(self) -> Iterator[Path]:
        import shutil
        scratch = self.scratch_dir()
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def remove_stale_scratch(self) -> list[str]:
        """Remove what killed imports and builds left in tmp/: each entry whose owner is gone.

        `minirun gc` (and so every `minirun run`) and every import call this. With no leftover
        it costs one listdir(2) of a directory that is usually empty or missing."""
        import shutil
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return []
        stale = [name for name in names if not _owner_is_alive(name)]
        for name in stale:
            path = self.tmp_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stale

    def _directory(self, directory: Path) -> Path:
        """A directory of the store (layers/, images/, tmp/), made if missing; the store's root
        is made first, mode ROOT_MODE, before anything is put in it."""
        if not self.root.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.root, ROOT_MODE)
            except FileExistsError:
                _close_root(self.root)              # made meanwhile by someone else: check it
        directory.mkdir(exist_ok=True)
        return directory

    def _failure(self, what: str, error: OSError) -> RuntimeFailure:
        """An OSError of a store operation as one line; a full disk says what to do."""
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return RuntimeFailure(f"{what}: the filesystem of the image store {self.root} is full "
                                  f"({error.strerror}): free space or inodes there, or point "
                                  "MINIRUN_ROOT at a store on a larger one")
        where = f": {error.filename}" if error.filename else ""
        return RuntimeFailure(f"{what}: {error.strerror or error}{where}")

    # -- removing ------------------------------------------------------------------------------
    def remove(self, name: str) -> list[str]:
        """Remove image `name`, unless a running container uses it; then delete the layers that
        no image uses any more. Returns the ids of the layers deleted."""
        self._record(check_name(name))
        self._refuse_if_in_use(name, "remove the image")
        with self._locked():
            self._record_path(name).unlink()
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
        """Delete what in layers/ no image names (the leftovers of older minirun versions, which
        unpacked into layers/.new-*, among them), and scratch space whose owner is gone.
        Called with the lock held: a layer committed but not yet named by its image's record
        would otherwise look like garbage."""
        import shutil
        used = {layer for record in self.records() for layer in record["layers"]}
        deleted = []
        for path in self.layers_dir.iterdir() if self.layers_dir.is_dir() else []:
            if path.name not in used:
                shutil.rmtree(path)
                deleted.append(path.name)
        self.remove_stale_scratch()
        return deleted

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: an exclusive flock(2) on the store's lock file, released by the
        kernel even if we are killed."""
        self._directory(self.root)
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- the built-in images -------------------------------------------------------------------
    def _builtin(self, name: str, recipe: Path) -> Image:
        """A recipe image, built when its inputs changed since it was last built.

        Whether they changed is told by their sizes and modification times (a few stats), not
        their contents: hashing the 2 MB busybox binary on every run would cost milliseconds.
        """
        if not BUSYBOX.is_file():
            raise RuntimeFailure(f"the built-in image {name!r} needs {BUSYBOX}: "
                                 "install it with `apt-get install busybox-static`")
        fingerprint = _fingerprint([BUSYBOX, *_files_below(recipe)])
        try:
            data = json.loads(self._record_path(name).read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("recipe") == fingerprint and (self.layers_dir / data["layers"][-1]).is_dir():
            return self._image(name, data["layers"], ImageConfig.from_oci(data["config"]))
        try:
            return self._build_builtin(name, recipe, fingerprint)
        except OSError as error:
            raise self._failure(f"cannot build the built-in image {name!r}", error) from None

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
                return self._commit(name, [(layer_id, tree)], config, recipe=fingerprint)


def _close_root(root: Path) -> None:
    """Make an existing store's root ROOT_MODE, as older minirun versions left it 0755: one
    lstat(2) on every use, and a chmod only when needed.

    A symlink is refused rather than followed (chmod through a link changes its target, which
    need not be ours), and so is a root that belongs to another user: its owner could change
    every image in it, and chmod it back open."""
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return                                  # made with ROOT_MODE when first written to
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeFailure(f"the image store {root} is not a directory (a symlink is not "
                             "followed): point MINIRUN_ROOT at the directory itself")
    if info.st_uid != os.geteuid():
        raise RuntimeFailure(f"the image store {root} belongs to uid {info.st_uid}, not to you "
                             f"(uid {os.geteuid()}): its owner could change every image; use a "
                             "store of your own (MINIRUN_ROOT)")
    if stat.S_IMODE(info.st_mode) != ROOT_MODE:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, ROOT_MODE)
        finally:
            os.close(fd)


def _owner_is_alive(scratch_name: str) -> bool:
    """Whether the process named by a scratch entry's "<pid>-<start time>-..." still runs."""
    pid, _, rest = scratch_name.partition("-")
    start = rest.partition("-")[0]
    return pid.isdigit() and start.isdigit() and state.start_time(int(pid)) == int(start)


def _recipe(name: str) -> Path | None:
    """The recipe of the built-in image `name`: images/<name>/ of this project, for a name of
    one component only (no '/', no tag), so a name can never reach another directory."""
    if "/" in name or ":" in name:
        return None
    recipe = RECIPES / name
    return recipe if (recipe / "image.json").is_file() else None


def check_name(name: str) -> str:
    """`name` if it is a valid image name (NAME_PATTERN), else a one-line refusal. Every entry
    point that takes an image name (get, import, rmi, inspect) checks it here, first."""
    if len(name) > NAME_MAX or not re.fullmatch(NAME_PATTERN, name):
        raise RuntimeFailure(f"invalid image name {name!r}: a name is lower-case letters and "
                             "digits, joined by '.', '_', '__' or '-', in parts separated by '/', "
                             "with an optional ':TAG' (e.g. library/app:1.0), at most "
                             f"{NAME_MAX} characters; it is never a path")
    return name


def _unpack(layer, tree: Path, progress, budget) -> str:
    """Unpack one layer into `tree`, checking its digests and spending `budget`; return its diff_id.

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
        extract.unpack_layer(stream, str(tree), budget)
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
