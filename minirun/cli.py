"""The `minirun` command line: click commands only, each a thin call into the modules that work.

Errors follow `docker run`: a bad flag or a failure of minirun itself exits 125 with one line on
stderr; otherwise the exit status is the container's.
"""
import os
import signal
import sys


def _steady_the_process() -> None:
    """The first thing minirun does, before it imports anything or opens any file.

    1. Descriptors 0, 1 and 2 that the caller closed (`minirun run ... >&-`) are opened on
       /dev/null. open(2) and pipe(2) return the lowest free number, so otherwise the next
       file or pipe minirun opens would become its stdout or stderr: the container's output
       would land in a record file, or its stderr in the pipe that carries setup errors. Later
       writes to /dev/null just vanish, and the command's own status still comes back.
    2. The signals that end a run are held (blocked) from here on: a Ctrl-C that comes while
       Python imports click, or between two steps, waits instead of raising KeyboardInterrupt
       in the middle of one. A run looks for it between its steps, and once the container
       exists passes it on; every other command lets it through at once (see `cli`).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)     # the lowest free number: this very fd
            os.set_inheritable(null, True)      # Python opens close-on-exec (PEP 446)
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_AT_START)


# What `minirun.signals.FORWARDED` lists (not imported from there: it loads ctypes, which
# commands other than run and exec do not need).
HELD_AT_START = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                 signal.SIGUSR1, signal.SIGUSR2}

_steady_the_process()

import click                        # noqa: E402  (after _steady_the_process, on purpose)

from minirun import errors          # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", "oci_root", metavar="DIR",
              help="Where OCI containers' state is kept (default $MINIRUN_STATE/oci).")
@click.option("--log", "log_file", metavar="FILE", help="Also write errors to FILE (as engines ask).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              help="The format of --log's lines.")
@click.option("--systemd-cgroup", is_flag=True, help="Refused: minirun writes cgroupfs itself.")
@click.pass_context
def cli(context, oci_root, log_file, log_format, systemd_cgroup) -> None:
    """minirun: a minimal container runtime built from raw Linux namespaces, cgroups and pivot_root."""
    if context.invoked_subcommand != "run":     # run keeps them held: see _steady_the_process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_AT_START)
    _LOG.update(file=log_file, format=log_format)
    context.obj = oci_root
    if systemd_cgroup:
        raise errors.RuntimeFailure("--systemd-cgroup: minirun manages cgroups through the "
                                    "cgroup filesystem only: set the engine's cgroup manager "
                                    "to cgroupfs")


_LOG = {"file": None, "format": "text"}     # the engine's --log: where errors go too


def _also_log(message: str) -> None:
    if not _LOG["file"]:
        return
    import json
    import time
    line = json.dumps({"level": "error", "msg": message,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) \
        if _LOG["format"] == "json" else f"minirun: {message}"
    try:
        with open(_LOG["file"], "a") as log:
            log.write(line + "\n")
    except OSError:
        pass


def _need_root(command: str) -> None:
    """Containers, their cgroups, the state directory and the image store are root's: say so
    before anything is tried, rather than fail halfway with a permission error. (Only `images`
    is open to all: it reads the store, and says so in one line if it cannot.)"""
    if os.geteuid() != 0:
        raise errors.RuntimeFailure(f"`minirun {command}` needs root (containers, cgroups and "
                                    "the image store are root's): run it with sudo")


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--name", help="A name for the container (default: its short id).")
@click.option("--hostname", help="The container's hostname (default: its short id).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", metavar="USER[:GROUP]",
              help="Run as this user (a name or UID, from the image's /etc/passwd).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (it always is; for Docker's sake).")
@click.option("-t", "--tty", is_flag=True, help="Give the container a pseudo-terminal.")
@click.option("-d", "--detach", is_flag=True,
              help="Run in the background under a supervisor; print the container's id.")
@click.option("--rm", "remove", is_flag=True,
              help="Remove the container when it exits (a foreground run always is; with -d, "
                   "an exited container and its writable layer stay for `logs`, `ps -a` and "
                   "`start` until `minirun rm`).")
@click.option("--init", "use_init", is_flag=True,
              help="Run a tiny init as PID 1 that forwards signals and reaps orphans.")
@click.option("--chroot", "use_chroot", is_flag=True,
              help="Change root with chroot(2) instead of pivot_root(2): escapable, for teaching.")
@click.option("--memory", "-m", metavar="SIZE", help="Memory limit, e.g. 64M or 1G.")
@click.option("--cpus", metavar="N", help="CPU limit in cores, e.g. 0.5.")
@click.option("--pids-limit", metavar="N", help="Most processes the container may have at once.")
@click.option("--cap-add", multiple=True, metavar="CAP",
              help="Keep a capability beyond the default set (e.g. NET_ADMIN, or ALL).")
@click.option("--cap-drop", multiple=True, metavar="CAP",
              help="Drop a capability of the default set (e.g. NET_RAW, or ALL).")
@click.option("--privileged", is_flag=True,
              help="Turn off every protection: all capabilities and devices, no seccomp, no masks.")
@click.option("--read-only", is_flag=True, help="Mount the container's root read-only.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST_DIR:DIR[:ro]",
              help="Bind a host directory (or file) into the container; :ro makes it read-only.")
@click.option("--security-opt", "security_opt", multiple=True, metavar="OPT",
              help="seccomp=unconfined turns off the default system call filter.")
@click.option("--network", default="bridge", show_default=True, metavar="MODE",
              help="bridge (an address on minirun0), none (only lo) or host (the host's).")
@click.option("-p", "--publish", multiple=True, metavar="[IP:]HOST_PORT:PORT[/udp]",
              help="Publish a container's port on the host.")
@click.option("--add-host", multiple=True, metavar="NAME:IP", help="Add a line to /etc/hosts.")
@click.option("--explain", is_flag=True, help="Narrate each step of the run on stderr.")
@click.option("--stats", is_flag=True,
              help="At the end, print the peak memory and CPU time the container used.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(image, command, **options) -> int:
    """Run COMMAND (or the image's default) in a new container of IMAGE."""
    from minirun.container import ContainerSpec, run as run_container
    spec = ContainerSpec.from_options(image, list(command), options)
    if options["detach"]:
        from minirun import supervisor
        _need_root("run")
        click.echo(supervisor.run_detached(spec, options))
        return 0
    return run_container(spec)


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable.")
@click.option("-w", "--workdir", help="Working directory (default: the container's).")
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as this user (default: the container's).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (it always is).")
@click.option("-t", "--tty", is_flag=True, help="Give the command a pseudo-terminal.")
@click.option("--explain", is_flag=True, help="Narrate each step on stderr.")
@click.option("-p", "--process", "process_file", metavar="FILE",
              help="An OCI process.json to run (the form engines use), instead of COMMAND.")
@click.option("-d", "--detach", is_flag=True, help="With --process: return once it runs.")
@click.option("--pid-file", metavar="FILE", help="With --process: write its host PID here.")
@click.option("--console-socket", metavar="PATH", help="With --process: where to send its pty.")
@click.argument("container")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def exec_command(oci_root, container, command, env, workdir, user, interactive, tty, explain,
                 process_file, detach, pid_file, console_socket) -> int:
    """Run COMMAND inside the running CONTAINER (a name or id from `minirun ps`); or, as an
    engine calls it, the process of --process FILE in OCI container CONTAINER."""
    _need_root("exec")
    if process_file:
        import json
        from minirun import oci
        try:
            with open(process_file) as file:
                process = json.load(file)
        except (OSError, ValueError) as error:
            raise errors.RuntimeFailure(f"cannot read --process {process_file}: {error}") from None
        return oci.exec_process(container, process, detach, pid_file, console_socket, oci_root)
    if not command:
        raise click.UsageError("give a COMMAND to run, or --process FILE")
    from minirun.enter import exec_in
    return exec_in(container, list(command), list(env), workdir=workdir, user=user, tty=tty,
                   explain=explain)


@cli.command()
@click.option("-t", "--time", "grace", default=10.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0),         # as minivm stop's: no negative grace
              help="How long to wait after SIGTERM before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
def stop(containers, grace) -> int:
    """Stop running containers: SIGTERM, then SIGKILL after a grace period."""
    _need_root("stop")
    from minirun.lifecycle import stop as stop_container
    from minirun.supervisor import each
    return each(containers, lambda container: stop_container(container, grace)[:12], "minirun")


@cli.command()
@click.option("-a", "--all", "everything", is_flag=True,
              help="Show exited containers too (those started with -d and not removed).")
def ps(everything) -> None:
    """List running containers (with -a, exited ones too)."""
    import time
    from minirun import state, supervisor
    from minirun.columns import print_table
    _need_root("ps")
    now = time.time()
    running = {record.id: record for record in state.containers() if state.is_alive(record)}
    rows = [(record.id[:12], record.name, record.image, str(record.pid),
             f"{int(now - record.created)}s ago", "Up", " ".join(record.command))
            for record in running.values()]
    if everything:
        rows += [(record.id[:12], record.name, record.image, "-", f"{int(now - record.created)}s ago",
                  f"Exited ({record.exit_code}) {int(now - record.finished)}s ago"
                  if record.status == "exited" else "Dead (supervisor killed: `minirun gc`)",
                  " ".join(record.command))
                 for record in supervisor.records()
                 if record.id not in running and not supervisor.is_supervised(record)]
    print_table(("CONTAINER ID", "NAME", "IMAGE", "PID", "CREATED", "STATUS", "COMMAND"), rows)


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing what comes, until it exits.")
@click.argument("container")
def logs(container, follow) -> None:
    """Print a detached container's output: its stdout on stdout, its stderr on stderr."""
    _need_root("logs")
    from minirun import supervisor
    supervisor.print_logs(container, follow)


@cli.command()
@click.argument("containers", nargs=-1, required=True)
def wait(containers) -> int:
    """Wait until detached containers exit; print each one's exit code."""
    _need_root("wait")
    from minirun import supervisor
    return supervisor.each(containers, supervisor.wait, "minirun")


@cli.command()
@click.option("-b", "--bundle", default=".", show_default=True, metavar="DIR",
              help="The bundle: a directory with config.json (and usually the root in rootfs/).")
@click.option("--pid-file", metavar="FILE", help="Write the container's host PID here.")
@click.option("--console-socket", metavar="PATH",
              help="A unix socket to send the pty's master end to (process.terminal).")
@click.argument("container_id")
@click.pass_obj
def create(oci_root, container_id, bundle, pid_file, console_socket) -> None:
    """OCI: set up container CONTAINER_ID from a bundle; its process waits for `start`."""
    _need_root("create")
    from minirun import oci
    oci.create(container_id, bundle, pid_file, console_socket, oci_root)


@cli.command()
@click.argument("container_id")
@click.pass_obj
def state(oci_root, container_id) -> None:
    """OCI: print the state of container CONTAINER_ID as JSON (created, running or stopped)."""
    _need_root("state")
    import json
    from minirun import oci
    click.echo(json.dumps(oci.state_of(container_id, oci_root), indent=2))


@cli.command()
@click.option("-a", "--all", "everything", is_flag=True,
              help="Signal every process of the container, not only its first (OCI only).")
@click.argument("container_id")
@click.argument("signal_name", required=False)
@click.pass_obj
def kill(oci_root, container_id, signal_name, everything) -> None:
    """OCI: send SIGNAL (a name or number, default TERM) to container CONTAINER_ID.

    CONTAINER_ID may also be a name or id (prefix) from `minirun ps`, as with `docker kill`:
    then SIGNAL (default KILL, as Docker's) goes to the container's PID 1. A PID 1 that has
    no handler for a signal ignores it, unless it is KILL (see docs/minirun.md)."""
    _need_root("kill")
    from minirun import oci
    if oci.exists(container_id, oci_root):
        return oci.kill(container_id, signal_name or "TERM", everything, oci_root)
    from minirun.lifecycle import kill as kill_running
    if everything:
        raise errors.RuntimeFailure("--all is for OCI containers: a signal to PID 1 of a "
                                    "container of `minirun ps` (KILL) ends all its processes")
    sig = oci.parse_signal(signal_name or "KILL")
    try:
        kill_running(container_id, sig)
    except errors.RuntimeFailure:
        raise errors.RuntimeFailure(f"no container {container_id!r}: give an OCI container's "
                                    "id, or a name or id from `minirun ps`") from None


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill it first if it still runs.")
@click.argument("container_id")
@click.pass_obj
def delete(oci_root, container_id, force) -> None:
    """OCI: remove container CONTAINER_ID (its cgroup and state) once it has stopped."""
    _need_root("delete")
    from minirun import oci
    oci.delete(container_id, force, oci_root)


@cli.command()
@click.argument("container")
@click.pass_obj
def start(oci_root, container) -> None:
    """OCI: let created container CONTAINER run its program. Or, as `docker start`, run an
    exited `run -d` container (a name or id from `minirun ps -a`) again, detached, on the
    writable layer it left; print its name."""
    _need_root("start")
    from minirun import oci, supervisor
    if oci.exists(container, oci_root):             # an OCI id first, as `kill` looks it up
        return oci.start(container, oci_root)
    click.echo(supervisor.start(container))


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("containers", nargs=-1, required=True)
def rm(containers, force) -> int:
    """Remove detached containers that have exited, with their logs and writable layers (with
    -f, running ones too)."""
    _need_root("rm")
    from minirun import supervisor
    return supervisor.each(containers, lambda container: supervisor.remove(container, force)[:12],
                           "minirun")


@cli.command()
def gc() -> None:
    """Remove what killed minirun processes left behind: the records, bundles (the containers'
    writable layers) and cgroups of containers whose minirun is gone. Images and their layers
    stay (`minirun rmi` removes those)."""
    _need_root("gc")
    from minirun import garbage, supervisor
    # Killed supervisors' directories first: the layers they kept are garbage once they go.
    stale = supervisor.remove_stale()
    for container_id in sorted({*stale, *garbage.collect()}):
        click.echo(f"removed {container_id[:12]}")


@cli.command("import")
@click.option("--max-size", metavar="SIZE",
              help="Most bytes of file data the import may write, a sparse file counted in full "
                   "(default 16G).")
@click.option("--max-files", metavar="N",
              help="Most entries (files, directories, links) the import may write (default 1000000).")
@click.argument("source")
@click.argument("name")
def import_image(source, name, max_size, max_files) -> None:
    """Import SOURCE as image NAME: a directory, a rootfs tarball (plain, gzip, zstd or xz), a
    `docker save` tarball or an OCI image layout (directory or tar; PATH:TAG picks one image,
    the path being the longest part before a ':' that exists, so the tag may hold ':')."""
    _need_root("import")
    from minirun.image import Store
    from minirun.progress import Progress
    from minirun.units import parse_count, parse_size
    limits = {**({"max_size": parse_size(max_size)} if max_size else {}),
              **({"max_files": parse_count(max_files, "file count")} if max_files else {})}
    image = Store().import_image(source, name, Progress(f"importing {name}"), **limits)
    click.echo(f"{name}: {len(image.layers)} layer(s)")


cli.add_command(import_image, "load")   # Docker's name for importing a `docker save` tarball


@cli.command()
def images() -> None:
    """List the images in the store."""
    from minirun.columns import print_table
    from minirun.image import Store
    from minirun.units import format_size
    rows = [(r["name"], format_size(r.get("size", 0)), str(len(r["layers"])), r["created"])
            for r in Store().records()]
    print_table(("NAME", "SIZE", "LAYERS", "CREATED"), rows)


@cli.command()
@click.argument("name")
def rmi(name) -> None:
    """Remove image NAME (refused while a running container uses it) and the layers only it used."""
    _need_root("rmi")
    from minirun.image import Store
    deleted = Store().remove(name)
    click.echo(f"removed {name}" + (f" and {len(deleted)} unused layer(s)" if deleted else ""))


@cli.command()
@click.argument("name")
def inspect(name) -> None:
    """Print container NAME's state (status, pid, limits, mounts, network) as JSON; or, if no
    container has that name, image NAME's record: its layers, their directories, its config."""
    _need_root("inspect")       # it builds a built-in image on first use
    import json
    from minirun import supervisor
    container = supervisor.describe(name)
    if container is None:
        from minirun.image import Store
        container = Store().inspect(name)
    click.echo(json.dumps(container, indent=2))


def main() -> None:
    """Entry point: map every outcome to a Docker-style exit status and one line of error."""
    try:
        status = cli.main(prog_name="minirun", standalone_mode=False)
    except click.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        click.echo(f"minirun: {error.format_message()}{hint}", err=True)
        _also_log(error.format_message())
        status = errors.RUNTIME_FAILED
    except click.ClickException as error:
        click.echo(f"minirun: {error.format_message()}", err=True)
        status = errors.RUNTIME_FAILED
    except (click.Abort, KeyboardInterrupt):
        status = 128 + signal.SIGINT
    except errors.RuntimeFailure as failure:
        click.echo(f"minirun: {failure}", err=True)
        _also_log(str(failure))
        status = failure.exit_code
    except OSError as error:    # what no step foresaw: still one line, and the cleanup has run
        where = f"{error.filename}: " if error.filename else ""
        click.echo(f"minirun: {where}{error.strerror or error}", err=True)
        status = errors.RUNTIME_FAILED
    # Skip the interpreter's teardown: freeing every module and object costs ~6 ms (a tenth of
    # a run) and nothing in it matters to a process that is ending. Flush what it would have
    # (a reader that went away, as in `minirun ps | head -1`, gets no more).
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream:
                stream.flush()
        except OSError:
            pass
    os._exit(status if isinstance(status, int) else 0)
