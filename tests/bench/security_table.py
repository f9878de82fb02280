#!/usr/bin/env python3
"""How isolated is a container? minirun's defaults against runc's, measured from inside both.

    PYTHONPATH=. .venv/bin/python tests/bench/security_table.py [--also "--privileged" ...]

Both runtimes run the same static probe (tests/programs/escape_probe.c, built here with gcc)
in the same busybox root filesystem (the `hello` image's layer plus the probe); runc with the
config `runc spec` writes (its defaults), minirun with none of its flags. From inside each: the
process's capabilities, seccomp and no_new_privs (/proc/self/status), its mounts (masked and
read-only paths, from /proc/self/mountinfo), its /dev, the descriptors it inherited (a host
directory is left open for both), and every escape route of docs/security.md. From outside:
which cgroup the container's process is in, in every hierarchy of the host.

Printed: a Markdown table, one row per property or route, one column per runtime; `--also FLAGS`
adds a column of minirun run with those flags (e.g. --privileged, --init), `--minivm` one of the
probe in a minivm guest, where every route meets the guest's kernel instead of the host's. Nothing is left
behind: a private image store and state directory in a temporary directory, runc's containers
deleted, and runc's cgroups under an absolute parent of our own (never a relative cgroupsPath,
which runc would resolve under the caller's own cgroup) removed.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE_SOURCE = Path(__file__).resolve().parent.parent / "programs" / "escape_probe.c"
sys.path.insert(0, str(PROBE_SOURCE.parent.parent))
from image_helpers import build_static, hello_with  # noqa: E402
CGROUP_PARENT = "minirun-security"          # runc's cgroupsPath is /minirun-security/<name>
MASKED = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
          "/proc/latency_stats", "/proc/acpi", "/proc/scsi", "/sys/firmware"]
READ_ONLY = ["/", "/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/sys"]
CAPABILITY_NAMES = [
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore"]


class Runtime:
    """One column: how to run a command in a fresh container, and find its host PID."""
    name: str

    def run(self, command: list[str], pass_fd: int | None = None) -> str:
        raise NotImplementedError

    def host_cgroup(self) -> str:
        raise NotImplementedError


class Minirun(Runtime):
    def __init__(self, env: dict, flags: list[str]):
        self.env, self.flags = env, flags
        self.name = "minirun " + " ".join(flags) if flags else "minirun (defaults)"

    def _command(self, command, name=None):
        named = ["--name", name] if name else []
        return [sys.executable, "-m", "minirun", "run", *named, *self.flags, "probe", *command]

    def _stop(self, name: str, process: subprocess.Popen) -> None:
        """`minirun stop`, not a kill of minirun: so that it removes the cgroup and bundle."""
        subprocess.run([sys.executable, "-m", "minirun", "stop", "-t", "0", name], env=self.env,
                       capture_output=True, timeout=60)
        process.communicate(timeout=60)

    def run(self, command, pass_fd=None):
        result = subprocess.run(self._command(command), env=self.env, capture_output=True,
                                text=True, timeout=120, pass_fds=(pass_fd,) if pass_fd else ())
        return result.stdout + (result.stderr if result.returncode == 125 else "")

    def host_cgroup(self):
        state = Path(self.env["MINIRUN_STATE"])
        process = subprocess.Popen(self._command(["sleep", "30"], "table-cgroups"), env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(1000):
                for record in state.glob("*.json"):
                    pid = json.loads(record.read_text()).get("pid")
                    if pid:
                        return Path(f"/proc/{pid}/cgroup").read_text()
                time.sleep(0.01)
            return "(the container did not start)"
        finally:
            self._stop("table-cgroups", process)


    def host_routes(self) -> dict[str, str]:
        """The routes that start on the host: the store as an unprivileged host user, and an
        image name that is a path."""
        root = Path(self.env["MINIRUN_ROOT"])
        rows = {"store root mode": oct(root.stat().st_mode & 0o7777)}
        planter = subprocess.Popen(self._command(
            ["sh", "-c", "cp /usr/local/bin/escape_probe /tmp/suid && chmod 4755 /tmp/suid && "
             "echo ready && exec sleep 30"], "table-planter"), env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        try:
            planter.stdout.readline()
            planted = next(root.glob("containers/*/upper/tmp/suid"), None)
            if planted is None:
                rows["route: setuid file in an upper dir, run by host user nobody"] = \
                    "BLOCKED - no upper dir with the file under the store"
            else:
                ran = subprocess.run([str(planted), "ids"], user=65534, group=65534,
                                     extra_groups=[], capture_output=True, text=True)
                rows["route: setuid file in an upper dir, run by host user nobody"] = (
                    f"ESCAPED {ran.stdout.strip()}" if "euid=0" in ran.stdout else
                    f"BLOCKED {ran.stdout.strip() or ran.stderr.strip()}")
        except PermissionError as error:
            rows["route: setuid file in an upper dir, run by host user nobody"] = \
                f"BLOCKED EACCES {error.strerror}"
        finally:
            self._stop("table-planter", planter)
        ran = subprocess.run([sys.executable, "-m", "minirun", "run", "../images/hello", "true"],
                             env=self.env, capture_output=True, text=True)
        rows["route: image name ../images/hello"] = (
            f"ESCAPED exit {ran.returncode}: ran the recipe at that path" if ran.returncode == 0
            else f"BLOCKED exit {ran.returncode}: {ran.stderr.strip()}")
        return rows


class Minivm(Runtime):
    """The same probe in a minivm guest: every route is tried against the guest's kernel."""
    name = "minivm (a guest kernel)"

    def __init__(self, env: dict):
        self.env = env

    def run(self, command, pass_fd=None):
        result = subprocess.run([sys.executable, "-m", "minivm", "boot", "-e", "ESCAPE_PROBE_IN_A_VM=1",
                                 "probe", *command], env=self.env, capture_output=True, text=True,
                                timeout=600, pass_fds=(pass_fd,) if pass_fd else ())
        return result.stdout

    def host_cgroup(self):
        return ""       # the guest's processes are not the host's: only QEMU's threads are


class Runc(Runtime):
    name = "runc (`runc spec`)"

    def __init__(self, rootfs: Path, workdir: Path):
        self.bundle = workdir / "runc-bundle"
        self.bundle.mkdir()
        subprocess.run(["runc", "spec"], cwd=self.bundle, check=True)
        self.config = json.loads((self.bundle / "config.json").read_text())
        self.config["root"]["path"] = str(rootfs)
        self.config["process"]["terminal"] = False
        self.count = 0

    def _configure(self, command) -> str:
        self.count += 1
        name = f"minirun-security-{os.getpid()}-{self.count}"
        self.config["process"]["args"] = command
        self.config["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{name}"   # absolute: see above
        (self.bundle / "config.json").write_text(json.dumps(self.config))
        return name

    def run(self, command, pass_fd=None):
        name = self._configure(command)
        try:
            result = subprocess.run(["runc", "run", "--bundle", str(self.bundle), name],
                                    capture_output=True, text=True, timeout=120,
                                    pass_fds=(pass_fd,) if pass_fd else ())
            return result.stdout + result.stderr
        finally:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True)

    def host_cgroup(self):
        name = self._configure(["sleep", "30"])
        process = subprocess.Popen(["runc", "run", "--bundle", str(self.bundle), name],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(1000):
                state = subprocess.run(["runc", "state", name], capture_output=True, text=True)
                if state.returncode == 0 and json.loads(state.stdout).get("status") == "running":
                    return Path(f"/proc/{json.loads(state.stdout)['pid']}/cgroup").read_text()
                time.sleep(0.01)
            return "(the container did not start)"
        finally:
            subprocess.run(["runc", "kill", name, "KILL"], capture_output=True)
            process.wait()
            subprocess.run(["runc", "delete", "--force", name], capture_output=True)


# --- From what a container shows to a table row ------------------------------------------------

def capabilities(mask: str) -> str:
    bits = int(mask, 16)
    names = [name for number, name in enumerate(CAPABILITY_NAMES) if bits >> number & 1]
    if len(names) > 20:
        return f"{mask} ({len(names)}: all)"
    return f"{mask} ({len(names)}: {' '.join(names) or 'none'})"


def status_rows(status: str) -> dict[str, str]:
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    seccomp = {"0": "0 (no filter)", "1": "1 (strict)", "2": "2 (filter)"}
    return {"CapEff (effective capabilities)": capabilities(fields.get("CapEff", "0")),
            "CapBnd (bounding set)": capabilities(fields.get("CapBnd", "0")),
            "NoNewPrivs": fields.get("NoNewPrivs", "?"),
            "Seccomp": seccomp.get(fields.get("Seccomp", "?"), fields.get("Seccomp", "?"))}


def mount_rows(mountinfo: str, dev_listing: str) -> dict[str, str]:
    """proc(5): field 5 is the mount point, field 6 its per-mount options; after " - " the
    filesystem type. The last mount on a path is the one seen."""
    mounts = {}
    for line in mountinfo.splitlines():
        fields, _, fs = line.partition(" - ")
        fields = fields.split()
        if len(fields) >= 6:
            mounts[fields[4]] = (fields[5], fs.split()[0] if fs else "?")
    present = [path for path in MASKED if os.path.exists(path)]   # this kernel's, on the host
    masked = [path for path in present if path in mounts]
    read_only = [path for path in READ_ONLY if path in mounts and "ro" in mounts[path][0].split(",")]
    dev = mounts.get("/dev", ("?", "?"))
    devices = sorted(name for name in dev_listing.split() if name not in ("pts", "shm", "mqueue"))
    if len(devices) > 16:
        devices = devices[:12] + [f"... ({len(devices)} in all)"]
    return {"masked paths (of those this kernel has)":
            f"{len(masked)}/{len(present)}: " + (" ".join(masked) or "none"),
            "read-only paths": " ".join(read_only) or "none",
            "/dev": f"{dev[1]} {dev[0]}; {' '.join(devices)}"}


def cgroup_row(text: str) -> str:
    """Which hierarchies hold the container in a cgroup of its own, which leave it in the root."""
    own, root = [], []
    for line in text.strip().splitlines():
        _, controllers, path = line.split(":", 2)
        (root if path == "/" else own).append(controllers or "cgroup2")
    return f"own in {len(own)}, host's root in {len(root)}" + (f" ({' '.join(root)})" if root else "")


def probe_rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        route, sep, outcome = line.partition(": ")
        if sep and route != "fds" and outcome.split(" ", 1)[0] in ("ESCAPED", "BLOCKED"):
            rows[f"route: {route}"] = outcome
    return rows


def short(outcome: str, guest: bool = False) -> str:
    """ESCAPED/BLOCKED with the errno and failing step: enough to tell which defence held.
    In a VM guest a route that works reaches the guest's kernel, not the host's."""
    word, _, rest = outcome.partition(" ")
    if word == "BLOCKED":
        return "blocked: " + rest
    return ("reached, in the guest: " if guest else "**escaped**: ") + rest


def measure(runtime: Runtime, hostdir: Path, secret: str) -> dict[str, str]:
    print(f"measuring {runtime.name}...", file=sys.stderr)
    rows = status_rows(runtime.run(["cat", "/proc/self/status"]))
    rows.update(mount_rows(runtime.run(["cat", "/proc/self/mountinfo"]), runtime.run(["ls", "/dev"])))
    host_view = runtime.host_cgroup()
    rows["cgroups (host's view of PID 1)"] = cgroup_row(host_view) if host_view else "n/a"
    rows["/proc/self/cgroup (inside)"] = " ".join(
        sorted({line.split(":", 2)[2] for line in runtime.run(["cat", "/proc/self/cgroup"]).split()
                if line.count(":") >= 2}))[:60]
    fd = os.open(hostdir, os.O_RDONLY | os.O_DIRECTORY)     # as a shell's `exec 9</dir`
    try:
        rows["route: fds (a host directory left open)"] = \
            runtime.run(["escape_probe", "fds"], pass_fd=fd).strip()
    finally:
        os.close(fd)
    rows.update(probe_rows(runtime.run(["escape_probe", "all"])))
    if isinstance(runtime, Minirun) and not runtime.flags:
        rows.update(runtime.host_routes())
    if isinstance(runtime, Minirun) and "--init" in runtime.flags:
        rows.update(probe_rows(runtime.run(["escape_probe", "init"])))
        rows["route: environ1"] = runtime.run(["escape_probe", "environ1", secret]).strip()
    return rows


# --- Setting up: the probe, a private store, the rootfs for runc --------------------------------

def make_probe_image(binary: Path) -> Path:
    """`hello` plus the probe, as image `probe` in the private store; returns hello's layer."""
    from minirun.image import Store
    store = Store()
    hello_with(store, binary, "probe")
    return store.get("hello").layers[0]


def runc_rootfs(layer: Path, binary: Path, workdir: Path) -> Path:
    rootfs = workdir / "rootfs"
    shutil.copytree(layer, rootfs, symlinks=True)
    (rootfs / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, rootfs / "usr/local/bin/escape_probe")
    for mountpoint in ("dev/pts", "dev/shm", "dev/mqueue", "sys/fs/cgroup"):
        (rootfs / mountpoint).mkdir(parents=True, exist_ok=True)   # runc's root is read-only
    return rootfs


def remove_runc_cgroup_parents(existed: set[Path]) -> None:
    for parent in list(Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}")) + \
            list(Path("/sys/fs/cgroup").glob(CGROUP_PARENT)):
        if parent not in existed:
            try:
                parent.rmdir()
            except OSError as error:
                print(f"could not remove {parent}: {error}", file=sys.stderr)


def table(columns: dict[str, dict[str, str]], runtimes: dict[str, Runtime]) -> str:
    names = list(columns)
    rows = list(dict.fromkeys(row for rows in columns.values() for row in rows))
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        cells = []
        for name in names:
            value = columns[name].get(row, "n/a")
            if row.startswith("route:") and value != "n/a":
                value = short(value, guest=isinstance(runtimes[name], Minivm))
            cells.append(value.replace("|", "\\|").replace("\n", " "))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--also", action="append", default=[], metavar="FLAGS",
                        help="another minirun column, run with these flags (quoted)")
    parser.add_argument("--no-runc", action="store_true", help="minirun's columns only")
    parser.add_argument("--minivm", action="store_true",
                        help="a column for the same probe in a minivm guest (slow: a boot per row)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("security_table.py: run as root")
    if not shutil.which("gcc"):
        sys.exit("security_table.py: needs gcc (apt-get install gcc libc6-dev)")

    workdir = Path(tempfile.mkdtemp(prefix="minirun-security-"))
    workdir.chmod(0o755)        # so that only the store's own mode keeps host users out of it
    hostdir = workdir / "hostdir"
    hostdir.mkdir(mode=0o777)
    hostdir.chmod(0o777)                # writable through the descriptor by any user the container runs as
    secret = "MINIRUN_TABLE_HOST_ONLY"
    env = {**os.environ, "MINIRUN_ROOT": str(workdir / "store"),
           "MINIRUN_STATE": str(workdir / "state"), secret: "1"}
    os.environ.update(MINIRUN_ROOT=env["MINIRUN_ROOT"], MINIRUN_STATE=env["MINIRUN_STATE"])
    existed = set(Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"))
    columns = {}
    try:
        binary = build_static(PROBE_SOURCE, workdir)
        layer = make_probe_image(binary)
        runtimes: list[Runtime] = []
        if not args.no_runc and shutil.which("runc"):
            runtimes.append(Runc(runc_rootfs(layer, binary, workdir), workdir))
        runtimes.append(Minirun(env, []))
        runtimes += [Minirun(env, shlex.split(flags)) for flags in args.also]
        if args.minivm:
            runtimes.append(Minivm(env))
        for runtime in runtimes:
            columns[runtime.name] = measure(runtime, hostdir, secret)
        by_name = {runtime.name: runtime for runtime in runtimes}
    finally:
        remove_runc_cgroup_parents(existed)
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(columns, by_name))


if __name__ == "__main__":
    main()
