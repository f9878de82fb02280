"""The store's own life: listing, inspecting, removing (never under a running container),
collecting layers no image uses, and the built-in image beside imported ones."""
import io
import json
import os
import subprocess
import sys
import time

import pytest

from image_helpers import merged_view, oci_layout, tar_of
from minirun import state
from minirun.errors import RuntimeFailure
from minirun.progress import Progress

BASE = tar_of([("etc/", "dir"), ("etc/os-release", "file", b"ID=test\n")])


def cli(*args):
    return subprocess.run([sys.executable, "-m", "minirun", *args], capture_output=True, text=True)


def two_images(store, tmp_path):
    """Images `one` and `two`, sharing their bottom layer."""
    store.import_image(str(oci_layout(tmp_path / "one", [BASE, tar_of([("a", "file")])])), "one")
    store.import_image(str(oci_layout(tmp_path / "two", [BASE, tar_of([("b", "file")])])), "two")


def a_container_of(image: str, runtime_pid: int) -> None:
    state.save(state.ContainerRecord(id="c0ffee", name="c0ffee", image=image, command=["sh"],
                                     runtime_pid=runtime_pid,
                                     runtime_start=state.start_time(runtime_pid) or 0,
                                     created=time.time()))


def test_rmi_is_refused_while_a_running_container_uses_the_image(store, tmp_path):
    two_images(store, tmp_path)
    a_container_of("one", runtime_pid=os.getpid())            # alive: this very process
    with pytest.raises(RuntimeFailure, match="in use by running container.*c0ffee"):
        store.remove("one")
    assert "one" in store.names()
    done = cli("rmi", "one")
    assert done.returncode == 125 and "c0ffee" in done.stderr
    assert all(layer.is_dir() for layer in store.get("one").layers)


def test_rmi_of_an_image_whose_container_is_gone(store, tmp_path):
    two_images(store, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    a_container_of("one", runtime_pid=dead.pid)               # a crashed runtime's leftover
    assert len(store.remove("one")) == 1


def test_rmi_collects_only_the_layers_no_image_uses(store, tmp_path):
    two_images(store, tmp_path)
    shared, only_one = store.get("one").layers
    deleted = store.remove("one")
    assert deleted == [only_one.name]
    assert shared.is_dir() and not only_one.exists()
    assert store.remove("two") and os.listdir(store.layers_dir) == []
    assert store.records() == []


def test_rmi_clears_leftovers_of_a_crashed_import(store, tmp_path):
    two_images(store, tmp_path)
    crashed = store.tmp_dir / f"{dead_pid()}-{state.start_time(os.getpid())}-abcd"
    running = store.scratch_dir()                              # ours: an import in progress
    (crashed / "1").mkdir(parents=True)
    old_version = store.layers_dir / ".new-1234-abcd"          # where older versions unpacked
    (old_version / "1").mkdir(parents=True)
    store.remove("two")
    assert not crashed.exists() and not old_version.exists() and running.is_dir()


def dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def test_cli_images_inspect_rmi(store, tmp_path):
    layout = oci_layout(tmp_path / "layout", [BASE], config={"Cmd": ["/bin/sh"], "Env": ["A=1"]})
    assert cli("import", str(layout), "app:1").stdout == "app:1: 1 layer(s)\n"
    lines = cli("images").stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "LAYERS", "CREATED"]
    assert lines[1].split()[:3] == ["app:1", "8B", "1"]
    record = json.loads(cli("inspect", "app:1").stdout)
    assert record["config"]["Cmd"] == ["/bin/sh"] and record["config"]["Env"] == ["A=1"]
    assert os.path.isfile(os.path.join(record["layer_dirs"][0], "etc/os-release"))
    assert cli("rmi", "app:1").stdout == "removed app:1 and 1 unused layer(s)\n"
    done = cli("inspect", "app:1")
    assert done.returncode == 125 and done.stderr.startswith("minirun: no image 'app:1'")


def test_a_layer_listed_twice_is_stacked_once(store, tmp_path):
    """Two empty layers have one diff_id; overlayfs would refuse the same lowerdir twice."""
    empty, middle = tar_of([]), tar_of([("m", "file")])
    image = store.import_image(str(oci_layout(tmp_path / "l", [empty, middle, empty])), "twice")
    assert len(store.inspect("twice")["layers"]) == 3
    assert [layer.name for layer in image.layers] == [store.inspect("twice")["layers"][i] for i in (1, 2)]
    assert sorted(merged_view(image.layers, tmp_path)) == [".", "m"]


def test_builtin_hello_still_builds_beside_imported_images(store, tmp_path):
    two_images(store, tmp_path)
    hello = store.get("hello")
    assert (hello.layers[0] / "app/hello.sh").is_file()
    assert hello.config.cmd == ["/app/hello.sh"]
    assert store.names() == ["hello", "one", "two"]
    store.remove("one")                                       # the collector spares hello's layer
    assert hello.layers[0].is_dir()


def test_progress_is_drawn_on_a_terminal_only(store, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    layout = oci_layout(tmp_path / "layout", [BASE, tar_of([("a", "file")])])
    quiet, terminal = io.StringIO(), Terminal()
    store.import_image(str(layout), "quiet", Progress("importing quiet", quiet))
    store.remove("quiet")
    store.import_image(str(layout), "shown", Progress("importing shown", terminal))
    assert quiet.getvalue() == ""
    assert "importing shown: layer 1/2" in terminal.getvalue()
    assert "layer 2/2" in terminal.getvalue() and terminal.getvalue().endswith("\r\033[K")


def test_importing_over_a_name_replaces_the_image_and_frees_its_layers(store, tmp_path):
    two_images(store, tmp_path)
    old_top = store.get("one").layers[1]
    new = oci_layout(tmp_path / "new", [BASE, tar_of([("c", "file")])])
    a_container_of("one", runtime_pid=os.getpid())
    with pytest.raises(RuntimeFailure, match="in use by running container.*then import the new"):
        store.import_image(str(new), "one")
    state.remove("c0ffee")
    replaced = store.import_image(str(new), "one")
    assert (replaced.layers[1] / "c").is_file()
    assert not old_top.exists() and replaced.layers[0].is_dir()


def test_a_builtin_name_is_not_imported_over(store, tmp_path):
    with pytest.raises(RuntimeFailure, match="built-in image"):
        store.import_image(str(oci_layout(tmp_path / "l", [BASE])), "hello")
