"""`minicompare` runs the same image as a container and as a VM and prints one table (issue 15).

Tiny settings (one round, no warm-up, small workloads): the test checks the table's shape and the
facts that must differ between the two architectures, never a duration.

The chart (`--plot`) is drawn by matplotlib, which the `test` extra installs (it is the `plot`
extra): its tests fail rather than skip where it is missing, so CI cannot quietly stop drawing.
"""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

TINY = ["--repeat", "1", "--warmup", "0", "--cpu-mb", "1", "--syscalls", "100",
        "--files-mb", "1", "--small-files", "5", "--network-mb", "1"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One run with --json and --plot, against a store and state of its own: (figures, chart)."""
    home = tmp_path_factory.mktemp("compare")
    (home / "state").mkdir()
    env = {**os.environ, "MINIRUN_ROOT": str(home / "store"),
           "MINIRUN_STATE": str(home / "state")}
    chart = home / "compare.svg"
    result = subprocess.run([sys.executable, "-m", "minivm.compare", *TINY, "--json",
                             "--plot", str(chart)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert list((home / "state").iterdir()) == []           # every container was cleaned up
    return json.loads(result.stdout), chart


@pytest.fixture(scope="module")
def measured(compared):
    return compared[0]


def rows(measured, section):
    return {row["claim"]: row for row in measured["rows"] if row["section"] == section}


@pytest.mark.vm
def test_every_claim_has_a_row_with_a_why_and_the_measured_cells(measured):
    assert [r["section"] for r in measured["rows"]][:2] == ["start", "start"]
    assert {r["section"] for r in measured["rows"]} == {"start", "memory", "work", "network",
                                                        "isolation"}
    for row in measured["rows"]:
        assert row["why"]
        if row["figure"] != "fact":                         # a figure: a median within min-max
            for kind, cell in row["cells"].items():
                assert cell["min"] <= cell["median"] <= cell["max"], (row["claim"], kind)
    assert set(rows(measured, "work")["CPU-bound: sha256 of 1 MB"]["cells"]) == {
        "container", "vm", "host"}
    for row in rows(measured, "memory").values():
        assert row["cells"]["container"]["median"] > 0 and row["cells"]["vm"]["median"] > 0
    assert measured["accelerator"] in ("tcg", "kvm")
    assert measured["host"]["load before"] and measured["host"]["load after"]


@pytest.mark.vm
def test_the_kernel_rows_differ_and_the_containers_kernel_is_the_hosts(measured):
    facts = {claim: row["cells"] for claim, row in rows(measured, "isolation").items()}
    assert facts["kernel"]["container"] == facts["kernel"]["host"] != facts["kernel"]["vm"]
    assert facts["pid"]["container"] == "1" != facts["pid"]["vm"]
    assert int(facts["kernel threads"]["container"]) == 0 < int(facts["kernel threads"]["vm"])
    assert facts["seccomp"]["container"] == "filter" and facts["seccomp"]["vm"] == "none"
    assert facts["root mounts"] == {"container": "refused", "vm": "yes", "host": "-"}
    assert facts["needs root on the host"]["container"].startswith("yes")
    assert facts["needs root on the host"]["vm"].startswith("no")


def test_the_table_prints_every_row_with_its_why():
    from minivm.compare import table
    cell = {"median": 0.5, "min": 0.4, "max": 0.6}
    result = {"accelerator": "tcg", "settings": {},
              "host": {"when": "now", "cpu": "cpu", "cpus": 2, "memory": "1 GiB", "kernel": "k",
                       "qemu": "q", "load before": ["1"], "load after": ["2"]},
              "rows": [{"section": "start", "claim": "exit", "figure": "time", "why": "because",
                        "cells": {"container": cell, "vm": {**cell, "median": 5.0}}},
                       {"section": "isolation", "claim": "kernel", "figure": "fact", "why": "own",
                        "cells": {"container": "6.18", "vm": "6.1", "host": "6.18"}}]}
    lines = table(result).splitlines()
    assert lines[0].split() == ["container", "VM", "(tcg)", "host", "container/VM", "container/host"]
    assert lines[2].split()[:4] == ["start:", "exit", "500", "ms"] and "0.1x" in lines[2]
    assert lines[3] == "    why: because"
    assert lines[4].split() == ["isolation:", "kernel", "6.18", "6.1", "6.18"]


@pytest.mark.vm
def test_the_network_row_is_a_transfer_through_each_published_port_and_the_hosts_loopback(
        measured):
    [row] = rows(measured, "network").values()
    assert row["claim"] == "1 MB echoed via -p, MB/s (more: faster)" and row["figure"] == "rate"
    assert set(row["cells"]) == {"container", "vm", "host"}
    for cell in row["cells"].values():                      # one measured round, a real transfer
        assert cell["unit"] == "MB/s" and len(cell["values"]) == 1 and cell["median"] > 0
    assert "veth" in row["why"] and "virtio-net" in row["why"] and "TCG" in row["why"]


@pytest.mark.vm
def test_the_plot_of_a_real_run_is_an_svg_with_every_figure_row(measured, compared):
    labels = svg_texts(compared[1])
    for row in measured["rows"]:
        assert (f"{row['section']}: {row['claim']}" in labels) == (row["figure"] != "fact")
    assert {"container", f"VM ({measured['accelerator']})", "host"} <= labels


# --- the table and the chart, from figures made up here --------------------------------------------

def figures(accelerator="tcg"):
    """A result as measure() returns it, with one row of each kind of figure."""
    def cell(median, unit="s"):
        return {"median": median, "min": median * 0.8, "max": median * 1.2, "unit": unit}
    return {"accelerator": accelerator, "settings": {},
            "host": {"when": "now", "cpu": "cpu", "cpus": 2, "memory": "1 GiB", "kernel": "k",
                     "qemu": "q", "load before": ["1"], "load after": ["2"]},
            "rows": [{"section": "start", "claim": "exit", "figure": "time", "why": "because",
                      "cells": {"container": cell(0.5), "vm": cell(5.0)}},
                     {"section": "memory", "claim": "idle", "figure": "bytes", "why": "pages",
                      "cells": {"container": cell(14 << 20, "bytes"),
                                "vm": cell(270 << 20, "bytes")}},
                     {"section": "network", "claim": "8 MB echoed", "figure": "rate",
                      "why": "proxy", "cells": {"container": cell(300, "MB/s"),
                                                "vm": cell(11, "MB/s"), "host": cell(800, "MB/s")}},
                     {"section": "isolation", "claim": "kernel", "figure": "fact", "why": "own",
                      "cells": {"container": "6.18", "vm": "6.1", "host": "6.18"}}]}


def svg_texts(path) -> set[str]:
    """Every text of an SVG drawing (matplotlib keeps text as <text> with svg.fonttype none)."""
    root = ElementTree.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return {"".join(element.itertext()).strip() for element in root.iter()
            if element.tag == "{http://www.w3.org/2000/svg}text"}


def test_the_chart_is_an_svg_with_a_panel_per_kind_of_figure_and_a_bar_per_column(tmp_path):
    from minivm.compare import draw_chart
    draw_chart(figures("kvm"), tmp_path / "chart.svg")
    labels = svg_texts(tmp_path / "chart.svg")
    assert {"start: exit", "memory: idle", "network: 8 MB echoed"} <= labels
    assert "isolation: kernel" not in labels                # a fact is no bar
    assert {"container", "VM (kvm)", "host"} <= labels      # the legend: the table's columns
    assert {"seconds (log)", "MiB", "MB/s (log; more: faster)"} <= labels


def test_the_chart_is_a_png_when_its_name_says_so(tmp_path):
    from PIL import Image                                   # comes with matplotlib
    from minivm.compare import draw_chart
    draw_chart(figures(), tmp_path / "chart.png")
    data = (tmp_path / "chart.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(tmp_path / "chart.png") as image:
        assert image.format == "PNG" and image.width >= 500 and image.height >= 200
        assert len(image.getcolors(1 << 16)) > 10          # bars and text drawn, not a blank page


def minicompare(tmp_path, *args, preamble=""):
    """minicompare's entry point, as the console script calls it, after `preamble`, in an empty
    directory tmp_path/cwd, with a store and state of its own (should it get as far as them)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "MINIRUN_ROOT": str(tmp_path / "store"),
           "MINIRUN_STATE": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-c", f"{preamble}\nimport sys\nfrom minivm.compare import main\n"
                               f"sys.argv = ['minicompare', *{list(args)!r}]\nmain()"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert list(cwd.iterdir()) == []                        # no chart, nothing else
    return result


def test_plot_without_matplotlib_is_one_line_before_any_measuring(tmp_path):
    # sys.modules[name] = None is how Python marks a module as not importable: find_spec answers
    # None and `import` raises ImportError, as when the package is not installed.
    result = minicompare(tmp_path, "--plot", "chart.svg", "no-such-image",
                         preamble="import sys; sys.modules['matplotlib'] = None")
    assert result.returncode == 125
    assert result.stderr == "minicompare: --plot needs matplotlib: pip install '.[plot]'\n"
    assert result.stdout == ""


@pytest.mark.parametrize("name, complaint", [
    ("chart.pdf", "the chart is a PNG or an SVG, name it *.png or *.svg"),
    ("missing/chart.svg", "its directory does not exist"),
])
def test_a_plot_file_that_cannot_be_written_is_refused_before_any_measuring(tmp_path, name,
                                                                            complaint):
    result = minicompare(tmp_path, "--plot", name, "no-such-image")
    assert result.returncode == 125
    [line] = result.stderr.splitlines()
    assert line.startswith("minicompare: Invalid value for '--plot': ") and complaint in line


def test_without_root_it_says_so_in_one_line_before_any_measuring(tmp_path):
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "minivm.compare", "--network-mb", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr == ("minicompare: the container side and the network row need root: "
                             "run minicompare with sudo\n")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
