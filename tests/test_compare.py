"""`minicompare` runs the same image as a container and as a VM and prints one table (issue 15).

Tiny settings (one round, no warm-up, small workloads): the test checks the table's shape and the
facts that must differ between the two architectures, never a duration.
"""
import json
import os
import subprocess
import sys

import pytest

TINY = ["--repeat", "1", "--warmup", "0", "--cpu-mb", "1", "--syscalls", "100",
        "--files-mb", "1", "--small-files", "5"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One run with --json, against a store and state of its own."""
    home = tmp_path_factory.mktemp("compare")
    (home / "state").mkdir()
    env = {**os.environ, "MINIRUN_ROOT": str(home / "store"),
           "MINIRUN_STATE": str(home / "state")}
    result = subprocess.run([sys.executable, "-m", "minivm.compare", *TINY, "--json"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert list((home / "state").iterdir()) == []           # every container was cleaned up
    return json.loads(result.stdout)


def rows(measured, section):
    return {row["claim"]: row for row in measured["rows"] if row["section"] == section}


@pytest.mark.vm
def test_every_claim_has_a_row_with_a_why_and_the_measured_cells(measured):
    assert [r["section"] for r in measured["rows"]][:2] == ["start", "start"]
    assert {r["section"] for r in measured["rows"]} == {"start", "memory", "work", "isolation"}
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
