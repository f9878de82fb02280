"""An image name is a name, never a path: one grammar (Docker's reference grammar, without a
registry host), checked by one function at every entry point; a bad name is one line, exit 125,
and nothing is left in the store."""
import json
import os
import subprocess
import sys

import pytest

from image_helpers import oci_layout, tar_of, tree_listing
from minirun import image
from minirun.errors import RuntimeFailure

GOOD = ["hello", "a", "app:1", "library/app:1.0", "registry.example/ns/app:v1", "a__b", "a--b",
        "a.b_c-d", "app:Tag_1.x-y", "app:" + "t" * 128, "a" * 250]
BAD = ["", "../images/hello", "../../../etc", "/etc", "./hello", "hello/", "a//b", "a/../b", "..",
       "Hello", "a..b", "a___b", "-a", "a-", "_a", "a b", "a\nb", "a:", "a:-x", "a:.x", "a:b:c",
       "app:" + "t" * 129, "a" * 251, "localhost:5000/app"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name):
    assert image.check_name(name) == name


@pytest.mark.parametrize("name", BAD)
def test_bad_names(name):
    with pytest.raises(RuntimeFailure, match="invalid image name .*it is never a path"):
        image.check_name(name)


def cli(root, *args):
    env = dict(os.environ, MINIRUN_ROOT=str(root), MINIRUN_STATE=str(root.parent / "state"))
    return subprocess.run([sys.executable, "-m", "minirun", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def host_recipe(tmp_path):
    """A directory of the host shaped like a recipe (image.json, rootfs/), outside images/, and
    the name that reached it as a path from images/ before names were checked."""
    recipe = tmp_path / "host-dir"
    (recipe / "rootfs").mkdir(parents=True)
    (recipe / "rootfs/host-file").write_text("a file of the host\n")
    (recipe / "image.json").write_text(json.dumps({"config": {"Cmd": ["/bin/false"]}}))
    return recipe, os.path.relpath(recipe, image.RECIPES)


@pytest.mark.parametrize("command", ["run", "rmi", "inspect", "import"])
def test_every_entry_point_refuses_a_path_as_a_name(tmp_path, host_recipe, command):
    store = tmp_path / "store"
    assert cli(store, "run", "hello", "true").returncode == 0
    before = tree_listing(store)
    recipe, as_name = host_recipe
    args = [command, as_name] if command != "import" else [command, str(recipe), as_name]
    done = cli(store, *args)
    assert done.returncode == 125
    assert done.stderr == f"minirun: invalid image name {as_name!r}: a name is lower-case " \
                          "letters and digits, joined by '.', '_', '__' or '-', in parts " \
                          "separated by '/', with an optional ':TAG' (e.g. library/app:1.0), " \
                          "at most 250 characters; it is never a path\n"
    assert tree_listing(store) == before                     # no layer built from the host dir


def test_the_builtin_image_is_found_by_its_exact_name_only(store):
    assert image._recipe("hello") == image.RECIPES / "hello"
    for name in ("hello:latest", "library/hello", "hello/rootfs"):
        assert image._recipe(image.check_name(name)) is None
        with pytest.raises(RuntimeFailure, match=f"no image '{name}'"):
            store.get(name)


def test_a_name_with_slashes_is_one_record_file(store, tmp_path):
    layout = oci_layout(tmp_path / "layout", [tar_of([("a", "file")])])
    imported = store.import_image(str(layout), "library/app:1.0")
    assert os.listdir(store.images_dir) == ["library+app:1.0.json"]   # no images/library/ dir
    assert store.names() == ["hello", "library/app:1.0"]
    assert store.get("library/app:1.0").layers == imported.layers
    assert store.inspect("library/app:1.0")["name"] == "library/app:1.0"
    store.remove("library/app:1.0")
    assert os.listdir(store.images_dir) == [] and os.listdir(store.layers_dir) == []


def test_a_bad_name_of_run_leaves_nothing(tmp_path, host_recipe):
    """Before names were checked, `run <path to a host dir>` built a layer from it, then failed
    to run /bin/false... and the layer stayed."""
    store = tmp_path / "store"
    _, as_name = host_recipe
    done = cli(store, "run", as_name)
    assert done.returncode == 125 and done.stderr.count("\n") == 1
    assert not store.exists()
