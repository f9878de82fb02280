"""The image store: images as stacks of unpacked layers plus a config, shared by minirun and minivm.

An image is the app and its userland, packaged once. On disk (under $MINIRUN_ROOT, by default
/var/lib/minirun):

    layers/<id>/          one unpacked layer, a directory tree (shared by every image that has it)
    images/<name>.json    {"name", "layers": [bottom ... top], "config": {Cmd, Env, ...}, "created"}

A container stacks the layers with overlayfs (minirun.rootfs); a VM packs them into its
initramfs (minivm.initramfs). Either way the image itself is never written to.

The built-in image `hello` is not downloaded: it is built here from Debian's busybox-static and
the recipe in images/hello/ the first time it is asked for.
"""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from minirun.errors import RuntimeFailure

DEFAULT_ROOT = "/var/lib/minirun"
RECIPES = Path(__file__).resolve().parent.parent / "images"
BUSYBOX = Path("/bin/busybox")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
        record = self.images_dir / f"{name}.json"
        if (RECIPES / name / "image.json").is_file():
            self._build_builtin(name)
        elif not _valid_name(name) or not record.is_file():
            known = ", ".join(self.names()) or "none"
            raise RuntimeFailure(f"no image {name!r} in {self.images_dir} (images here: {known}); "
                                 f"import one with `minirun import SOURCE {name}`")
        data = json.loads(record.read_text())
        return Image(name=name, layers=[self.layers_dir / layer for layer in data["layers"]],
                     config=ImageConfig.from_oci(data["config"]))

    def names(self) -> list[str]:
        found = {p.stem for p in self.images_dir.glob("*.json")} if self.images_dir.is_dir() else set()
        return sorted(found | {p.parent.name for p in RECIPES.glob("*/image.json")})

    # -- writing -------------------------------------------------------------------------------
    def commit_layer(self, tree: Path, layer_id: str) -> str:
        """Move the directory `tree` into the store as layer `layer_id` (atomically, by rename).

        If another process committed the same layer first, ours is discarded: same id, same content.
        """
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tree, self.layers_dir / layer_id)
        except OSError:
            if not (self.layers_dir / layer_id).is_dir():
                raise
            shutil.rmtree(tree)
        return layer_id

    def save_image(self, name: str, layer_ids: list[str], config: ImageConfig) -> Image:
        if not _valid_name(name):
            raise RuntimeFailure(f"invalid image name {name!r}: use lower-case letters, digits, "
                                 "'.', '_', '-' and ':'")
        self.images_dir.mkdir(parents=True, exist_ok=True)
        record = {"name": name, "layers": layer_ids, "config": config.to_oci(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_atomically(self.images_dir / f"{name}.json", json.dumps(record, indent=2))
        return self.get(name)

    def scratch_dir(self) -> Path:
        """A temporary directory inside the store, on the same filesystem as the layers."""
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".new-", dir=self.layers_dir))

    # -- the built-in images -------------------------------------------------------------------
    def _build_builtin(self, name: str) -> None:
        """Build a recipe image: busybox-static's applets plus the recipe's rootfs/ files.

        The layer id is a hash of the inputs, so editing the recipe or upgrading busybox builds
        a new layer, and an unchanged recipe costs one stat.
        """
        recipe = RECIPES / name
        if not BUSYBOX.is_file():
            raise RuntimeFailure(f"the built-in image {name!r} needs {BUSYBOX}: "
                                 "install it with `apt-get install busybox-static`")
        layer_id = _hash_recipe(recipe)
        record = self.images_dir / f"{name}.json"
        if (self.layers_dir / layer_id).is_dir() and record.is_file() \
                and json.loads(record.read_text())["layers"] == [layer_id]:
            return
        tree = self.scratch_dir()
        try:
            _install_busybox(tree)
            shutil.copytree(recipe / "rootfs", tree, symlinks=True, dirs_exist_ok=True)
            self.commit_layer(tree, layer_id)
        except BaseException:
            shutil.rmtree(tree, ignore_errors=True)
            raise
        config = json.loads((recipe / "image.json").read_text())["config"]
        self.save_image(name, [layer_id], ImageConfig.from_oci(config))


def _install_busybox(tree: Path) -> None:
    """A minimal Unix userland: the FHS directories and one busybox binary with a link per applet."""
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


def _hash_recipe(recipe: Path) -> str:
    digest = hashlib.sha256(BUSYBOX.read_bytes())
    for path in sorted(recipe.rglob("*")):
        digest.update(str(path.relative_to(recipe)).encode() + oct(path.lstat().st_mode).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _valid_name(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789._:-")
    return bool(name) and name[0].isalnum() and set(name) <= allowed and ".." not in name


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.rename(tmp, path)
