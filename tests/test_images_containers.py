"""Containers of an imported image: it runs with the image's config, each container writes only
to its own overlayfs upper directory, and the image's layers never change."""
import subprocess

import pytest

from conftest import read_line
from image_helpers import snapshot
from minirun.image import Store


def run(*command):
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture(scope="module")
def app_layout(tmp_path_factory):
    """An OCI layout made by umoci: busybox's userland (the built-in image's tree), then an app
    layer that adds a script and deletes /etc/group (a whiteout), with the app's config."""
    work = tmp_path_factory.mktemp("app")
    userland = Store(work / "builtin").get("hello").layers[0]
    layout = work / "layout"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:app")
    run("umoci", "unpack", "--image", f"{layout}:app", str(work / "b1"))
    run("cp", "-a", f"{userland}/.", str(work / "b1/rootfs"))
    run("umoci", "repack", "--image", f"{layout}:app", str(work / "b1"))
    run("umoci", "unpack", "--image", f"{layout}:app", str(work / "b2"))
    app = work / "b2/rootfs/app/run.sh"
    app.write_text('#!/bin/sh\necho "$GREETING from $(pwd)"\n'
                   'test -e /etc/group && echo "group is there" || echo "group is gone"\n')
    app.chmod(0o755)
    (work / "b2/rootfs/etc/group").unlink()
    run("umoci", "repack", "--image", f"{layout}:app", str(work / "b2"))
    run("umoci", "config", "--image", f"{layout}:app", "--config.cmd", "/app/run.sh",
        "--config.env", "GREETING=hello", "--config.workingdir", "/app")
    return layout


@pytest.fixture
def app(minirun, app_layout):
    done = minirun("import", str(app_layout), "app")
    assert done.returncode == 0, done.stderr
    return "app"


def test_a_container_of_an_imported_image_runs_its_config(minirun, app):
    done = minirun("run", app)
    assert (done.returncode, done.stdout) == (0, "hello from /app\ngroup is gone\n"), done.stderr
    done = minirun("run", "-e", "GREETING=bonjour", app)
    assert done.stdout.startswith("bonjour from /app\n")


def test_two_containers_of_one_image_do_not_see_each_others_writes(minirun, start_minirun, app):
    first = start_minirun("run", "-i", app, "sh", "-c",
                          "echo first > /mark; echo ready; read line; cat /mark",
                          stdin=subprocess.PIPE)
    assert read_line(first) == "ready\n"
    second = minirun("run", app, "sh", "-c", "cat /mark 2>&1; echo second > /mark; cat /mark")
    assert second.stdout == "cat: can't open '/mark': No such file or directory\nsecond\n"
    first.stdin.write("go\n")
    first.stdin.close()
    assert first.wait(timeout=30) == 0
    assert first.stdout.read() == "first\n"


def test_the_image_is_unchanged_after_a_container_wrote_to_root(minirun, minirun_env, app):
    layers = Store(minirun_env["MINIRUN_ROOT"]).get(app).layers
    before = [snapshot(layer) for layer in layers]
    done = minirun("run", app, "sh", "-c",
                   "echo changed > /app/run.sh && rm -rf /bin/ls /etc && mkdir /new && "
                   "echo x > /new/file && chmod 700 /app && echo done")
    assert done.stdout == "done\n", done.stderr
    assert [snapshot(layer) for layer in layers] == before
    again = minirun("run", app)
    assert again.stdout == "hello from /app\ngroup is gone\n"


def test_rmi_is_refused_while_a_container_of_the_image_runs(minirun, start_minirun, app):
    running = start_minirun("run", "-i", app, "sh", "-c", "echo up; read line",
                            stdin=subprocess.PIPE)
    assert read_line(running) == "up\n"
    refused = minirun("rmi", app)
    assert refused.returncode == 125
    assert refused.stderr.startswith("minirun: image 'app' is in use by running container(s) ")
    running.stdin.write("done\n")
    running.stdin.close()
    assert running.wait(timeout=30) == 0
    assert minirun("rmi", app).stdout.startswith("removed app")
