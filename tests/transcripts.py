"""The console transcripts of README.md and docs/: found, run for real, and compared with the text.

A ```console block is a transcript. A line starting with `# ` (root's prompt) or `$ ` is a
command, continued over the next lines while a quote is open; the lines after it, up to the next
command, are what it printed (stdout and stderr, in order). In those lines, `...` alone stands
for any number of lines, and two or more spaces then `#` start a note for the reader, not output.
A block opened with ```console continued goes on from the file's previous transcript, in the same
shell (its variables, its files, its images). A block that is not a transcript (commands to
type, with no output to check) is ```sh instead.

Some of what a run prints differs from run to run and machine to machine: MASKS replaces it, on
both sides, with a placeholder, before the two are compared.
"""
import difflib
import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PROMPTS = ("# ", "$ ")
ANY_LINES = "..."
NOTE = re.compile(r"\s{2,}#.*$")        # `output   # a note for the reader`

# What legitimately varies, each with why. Keep it short: every mask is something a stale
# transcript could hide behind, so each one is as narrow as the thing it hides.
MASKS = [
    # container ids (64 hex, or the first 12 as a hostname) and sha256 layer digests
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<id>"),
    # --explain's speaker: minirun's or minivm's PID on the host; `minirun[1]` (PID 1 of the
    # container's namespace) stays as it is
    (re.compile(r"\b(minirun|minivm)\[(?!1\])\d+\]"), r"\1[<pid>]"),
    (re.compile(r"host PID \d+"), "host PID <pid>"),
    # hello's `pid:` line in a guest (a container's app is PID 1: that one stays): how many
    # processes the guest kernel started before the app varies from boot to boot
    (re.compile(r"^(  pid: +)(?!1$)\d+$", re.M), r"\1<pid>"),
    # --explain's first column: milliseconds since the run began; then any other duration in ms
    (re.compile(r"^ *\d+\.\d\d ms  ", re.M), "<ms>  "),
    (re.compile(r"\b\d+\.\d\d ms\b"), "<ms>"),
    # --stats: CPU time and time spent throttled, in seconds with three decimals
    (re.compile(r"\b\d+\.\d{3}s\b"), "<s>"),
    # --stats: peak memory depends on the page cache and the allocator, not only on the app
    (re.compile(r"peak memory \d+(\.\d)?[KMGT]?B?"), "peak memory <size>"),
    # how many CFS periods a busy loop is throttled in depends on the machine's load
    (re.compile(r"^(nr_periods|nr_throttled|throttled_time) \d+$", re.M), r"\1 <n>"),
    (re.compile(r"throttled in \d+ periods"), "throttled in <n> periods"),
    # a kernel release (the host's, or the guest's Debian kernel): 6.18.44-fc-v657, 6.1.0-56-amd64
    (re.compile(r"\b\d+\.\d+\.\d+-[\w.+-]*\w"), "<kernel>"),
    # when an image or a layer was made: `minirun images` (ISO 8601) and `ls -l`
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<date>"),
    (re.compile(r"\b[A-Z][a-z]{2} [ \d]\d \d\d:\d\d\b"), "<date>"),
]


def mask(text: str) -> str:
    for pattern, placeholder in MASKS:
        text = pattern.sub(placeholder, text)
    return text


@dataclass
class Command:
    line: int                   # where it starts in its file
    prompt: str                 # `# ` or `$ `
    text: str                   # without the prompt; may span lines
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    path: Path
    line: int                   # of the opening ```console
    commands: list[Command]

    @property
    def boots_vm(self) -> bool:
        return any("minivm boot" in command.text for command in self.commands)


def find_blocks(path: Path) -> list[Block]:
    """Every transcript of a Markdown file, parsed into commands and their output; a block
    marked `continued` is added to the one before it."""
    blocks, lines = [], path.read_text().splitlines()
    number = 0
    while number < len(lines):
        opening = lines[number].split()
        if opening[:1] == ["```console"]:
            end = number + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            try:
                commands = parse(lines[number + 1:end], number + 2)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
            if opening[1:] == ["continued"] and blocks:
                blocks[-1].commands += commands
            else:
                blocks.append(Block(path, number + 1, commands))
            number = end
        number += 1
    return blocks


def parse(lines: list[str], first: int) -> list[Command]:
    commands, index = [], 0
    while index < len(lines):
        line = lines[index]
        if line.startswith(PROMPTS):
            start, text = first + index, line[2:]
            while not complete(text):           # a quote is still open: the command goes on
                index += 1
                if index == len(lines):
                    raise ValueError(f"line {first + index - 1}: a quote is never closed")
                text += "\n" + lines[index]
            commands.append(Command(start, line[:2], text))
        elif not commands:
            raise ValueError(f"line {first + index}: output before any command: {line!r}")
        else:
            commands[-1].expected.append(NOTE.sub("", line))
        index += 1
    return commands


def complete(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:                          # "No closing quotation"
        return False
    return True


# --- running a block ---------------------------------------------------------------------------

MARK = "@@end-of-transcript-step@@"


def run(commands: list[Command], env: dict, cwd: Path, paths: dict, timeout: float) -> list[tuple]:
    """Run the commands in order in one bash, as a reader would type them: (status, output) each.

    `paths` maps the directories the docs show (/var/lib/minirun, ...) to this run's own: they
    are put into the commands, and taken out of the output again.
    """
    script = []
    for command in commands:
        script.append(to_run(command.text, paths))
        # the status of the command, and a mark that ends its output; then $? is its again
        script.append(f'__status=$?; printf "%s %d\\n" {MARK} $__status; (exit $__status)')
    # a file, not bash's stdin: a command that reads its stdin must not eat the commands after it
    script_file = cwd.parent / "transcript.sh"
    script_file.write_text("\n".join(script) + "\n")
    process = subprocess.Popen(["bash", "--norc", "--noprofile", str(script_file)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, cwd=cwd, env=env, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # all it started: they run in its session
        output, _ = process.communicate()
        output += f"\n(the block did not finish in {timeout:.0f} s and was killed)\n"
    for real, shown in paths.items():
        output = output.replace(str(real), shown)
    results, rest = [], output
    for _ in commands:
        step, found, rest = rest.partition(MARK + " ")
        if not found:
            results.append((None, step))
            rest = ""
            continue
        status, _, rest = rest.partition("\n")
        results.append((int(status), step))
    return results


def to_run(text: str, paths: dict) -> str:
    for real, shown in paths.items():
        text = text.replace(shown, str(real))
    return text


# --- comparing -----------------------------------------------------------------------------------

def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line, where `...` matches any number of lines (none included)."""
    pattern = "".join(r"(?:.*\n)*?" if line.strip() == ANY_LINES else re.escape(line + "\n")
                      for line in expected)
    return re.fullmatch(pattern, "".join(line + "\n" for line in actual)) is not None


def shown_like(expected: list[str], actual: list[str]) -> list[str]:
    """The expected lines with each `...` replaced by the actual lines it stands for (those
    between the lines that match around it), so that a diff shows only what really differs."""
    matched = {}                                # index in expected -> index in actual
    for first, first_actual, size in difflib.SequenceMatcher(None, expected, actual,
                                                             autojunk=False).get_matching_blocks():
        matched.update((first + k, first_actual + k) for k in range(size))
    filled = []
    for index, line in enumerate(expected):
        if line.strip() != ANY_LINES:
            filled.append(line)
            continue
        start = max((at + 1 for e, at in matched.items() if e < index), default=0)
        end = min((at for e, at in matched.items() if e > index), default=len(actual))
        filled.extend(actual[start:end])
    return filled


def check(block: Block, results: list[tuple], root: Path) -> list[str]:
    """What is wrong with the block, command by command, as unified diffs: [] when it is true."""
    problems = []
    for index, (command, (status, output)) in enumerate(zip(block.commands, results)):
        where = f"{block.path.relative_to(root)}:{command.line}"
        # compared as a terminal shows them: tabs as spaces, trailing blanks invisible
        expected = [mask(line).expandtabs().rstrip() for line in command.expected]
        actual = [line.expandtabs().rstrip() for line in mask(output).splitlines()]
        if not matches(expected, actual):
            diff = difflib.unified_diff(shown_like(expected, actual), actual, "the transcript says",
                                        "the command printed", lineterm="", n=2)
            problems.append(f"{where}: {command.prompt}{command.text}\n" + "\n".join(diff)
                            + "\nwhat it printed, unmasked:\n" + output)
        following = block.commands[index + 1].text if index + 1 < len(block.commands) else ""
        shows_status = "echo $?" in command.text or following.strip() == "echo $?"
        if status is None:
            problems.append(f"{where}: {command.prompt}{command.text}\n(it never ended, and "
                            "the commands after it did not run)")
            break
        if status != 0 and not shows_status:
            problems.append(f"{where}: {command.prompt}{command.text}\nexited with {status}, which the "
                            "transcript does not show: follow it with `# echo $?`")
    return problems
