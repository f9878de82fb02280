"""Every console transcript of README.md and docs/ is true: run as written, it prints what it shows.

So a changed message, a renamed flag or a new step breaks this test, not the reader (issue 15).
How a transcript is written, run and compared, and what is masked: tests/transcripts.py. Each
block runs in one bash of its own, as root, in an empty directory, against an image store, a
state directory and a minivm cache of its own, which the output shows as the default paths.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BOOT_TIMEOUT, leftovers
from transcripts import check, find_blocks, mask, matches, run

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_TIMEOUT = 120     # seconds for a block of containers; a block that boots VMs gets BOOT_TIMEOUT


def blocks():
    for path in DOCS:
        for block in find_blocks(path):
            yield pytest.param(block, id=f"{path.relative_to(ROOT)}:{block.line}",
                               marks=[pytest.mark.vm] if block.boots_vm else [])


@pytest.fixture(scope="session")
def commands(tmp_path_factory) -> Path:
    """`minirun` and `minivm` on PATH, run by this Python (and so from this worktree's code)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name in ("minirun", "minivm"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {sys.executable} -m {name} "$@"\n')
        (bin_dir / name).chmod(0o755)
    return bin_dir


def mounts_under(directory: Path) -> list[str]:
    """The host's mounts on `directory` or below it: there, a container's would show if it leaked
    (the rest of the table is shared with whatever else runs on the machine)."""
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if Path(line.split()[4]).is_relative_to(directory)]


def environment(tmp_path: Path, commands: Path, guest=None) -> tuple:
    """A block's own store, state, minivm cache, temp dir and working directory: (env, paths, cwd).
    `paths` maps each of those directories to the one the docs show."""
    store, state, cwd = tmp_path / "store", tmp_path / "state", tmp_path / "cwd"
    state.mkdir()
    cwd.mkdir()
    env = {**os.environ, "PATH": f"{commands}:{os.environ['PATH']}",
           "MINIRUN_ROOT": str(store), "MINIRUN_STATE": str(state),
           "MINIVM_STATE": str(tmp_path / "vm")}
    if guest:
        env.update({name: guest[1][name] for name in ("MINIVM_KERNEL", "MINIVM_CACHE", "TMPDIR")})
    else:
        (tmp_path / "tmp").mkdir()
        env.update(MINIVM_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path / "tmp"))
    paths = {store: "/var/lib/minirun", state: "/run/minirun",
             Path(env["MINIVM_CACHE"]): "/var/cache/minivm"}
    return env, paths, cwd


def run_block(block, env: dict, paths: dict, cwd: Path, timeout: float) -> list[tuple]:
    results = run(block.commands, env, cwd, paths, timeout)
    if any(status is None for status, _ in results):    # killed: let minirun clean up after itself
        # `gc` takes a record for alive while its minirun is a zombie not yet reaped: try again
        deadline = time.monotonic() + 30
        while os.listdir(env["MINIRUN_STATE"]) and time.monotonic() < deadline:
            subprocess.run([sys.executable, "-m", "minirun", "gc"], env=env, capture_output=True)
            time.sleep(0.1)
    return results


def assert_nothing_left(env: dict, home: Path, guest=None) -> None:
    """No container's record or bundle, no mount under the block's directory, no QEMU, no temp file."""
    assert sorted(os.listdir(env["MINIRUN_STATE"])) == []
    assert not os.path.exists(env["MINIVM_STATE"]) or os.listdir(env["MINIVM_STATE"]) == []
    bundles = Path(env["MINIRUN_ROOT"]) / "containers"
    assert not bundles.exists() or os.listdir(bundles) == []
    assert mounts_under(home) == []
    if guest:
        assert leftovers(guest) == ([], [])
    else:
        assert os.listdir(env["TMPDIR"]) == []


@pytest.mark.parametrize("block", list(blocks()))
def test_transcript_is_true(block, tmp_path, commands, request):
    guest = request.getfixturevalue("guest") if block.boots_vm else None
    env, paths, cwd = environment(tmp_path, commands, guest)
    results = run_block(block, env, paths, cwd, BOOT_TIMEOUT if guest else BLOCK_TIMEOUT)
    problems = check(block, results, ROOT)
    if problems:
        pytest.fail("\n\n".join(problems) + "\n\n(fix the transcript, or the code: what a "
                    "transcript may contain and what is masked is in tests/transcripts.py)",
                    pytrace=False)
    assert_nothing_left(env, tmp_path, guest)


def test_a_block_that_never_ends_is_killed_and_leaves_nothing(tmp_path, commands):
    doc = tmp_path / "doc.md"
    doc.write_text("```console\n# minirun run --explain hello sleep 60\n```\n")
    [block] = find_blocks(doc)
    env, paths, cwd = environment(tmp_path, commands)
    [(status, output)] = run_block(block, env, paths, cwd, timeout=3)
    assert status is None and "did not finish in 3 s" in output
    [container] = set(re.findall(r"containers/([0-9a-f]{64})", output))
    assert_nothing_left(env, tmp_path)
    assert not list(Path("/sys/fs/cgroup").glob(f"*/minirun/{container}"))


# --- the reader of transcripts itself: fast, no container ----------------------------------------

def test_a_command_goes_on_while_its_quote_is_open_and_notes_are_not_output(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n```console\n# sh -c 'echo a;\n    echo b'   # two lines\na\nb   # a note\n"
                   "$ echo '#' $?\n# 0\n```\n\n```console continued\n# true\n```\n")
    [block] = find_blocks(doc)
    assert [(c.line, c.prompt, c.text, c.expected) for c in block.commands] == [
        (3, "# ", "sh -c 'echo a;\n    echo b'   # two lines", ["a", "b"]),
        (7, "$ ", "echo '#' $?", []),
        (8, "# ", "0", []),
        (12, "# ", "true", [])]


def test_dots_match_any_number_of_lines_and_nothing_else_is_loose():
    assert matches(["a", "...", "d"], ["a", "d"])
    assert matches(["a", "  ...", "d"], ["a", "b", "c", "d"])
    assert not matches(["a", "...", "d"], ["a", "b", "c", "e"])
    assert not matches(["exit 2"], ["exit 3"])
    assert not matches(["a"], ["a", "b"])


def test_masks_hide_what_varies_and_keep_what_a_reader_reads():
    assert mask("   3.71 ms  minirun[26412] exit") == mask(" 109.58 ms  minirun[99] exit")
    assert mask("minirun[1] cgroup") == "minirun[1] cgroup"
    assert mask("  41.07 ms  minivm[4077] network") == mask("   0.52 ms  minivm[12] network")
    assert mask("limit of 32.0M") != mask("limit of 32M")
    assert mask("  pid:        1") != mask("  pid:        89")
    assert mask("kernel: 6.1.0-57-amd64") == mask("kernel: 6.18.44-fc-v669")
    assert mask("nr_bursts 0") != mask("nr_bursts 1")
    assert mask("installed in 0.30 ms;") == mask("installed in 12.05 ms;")


def test_a_failure_shows_where_the_command_and_a_diff(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```console\n# echo hi; exit 3\nho\n```\n")
    [block] = find_blocks(doc)
    [problem, status] = check(block, [(3, "hi\n")], tmp_path)
    assert problem.startswith("doc.md:2: # echo hi; exit 3\n") and "\n-ho\n+hi\n" in problem
    assert "exited with 3" in status


def test_output_is_compared_as_a_terminal_shows_it(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```console\n# grep Seccomp /proc/self/status\nSeccomp:        2   # a note\n```\n")
    [block] = find_blocks(doc)
    assert check(block, [(0, "Seccomp:\t2 \n")], tmp_path) == []
    assert check(block, [(0, "Seccomp:\t\t2\n")], tmp_path) != []
