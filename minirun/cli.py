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
@click.pass_context
def cli(context) -> None:
    """minirun: a minimal container runtime built from raw Linux namespaces, cgroups and pivot_root."""
    if context.invoked_subcommand != "run":     # run keeps them held: see _steady_the_process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_AT_START)


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
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits (always, for now).")
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
@click.option("--explain", is_flag=True, help="Narrate each step of the run on stderr.")
@click.option("--stats", is_flag=True,
              help="At the end, print the peak memory and CPU time the container used.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(image, command, **options) -> int:
    """Run COMMAND (or the image's default) in a new container of IMAGE."""
    from minirun.container import ContainerSpec, run as run_container
    return run_container(ContainerSpec.from_options(image, list(command), options))


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable.")
@click.option("-w", "--workdir", help="Working directory (default: the container's).")
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as this user (default: the container's).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (it always is).")
@click.option("-t", "--tty", is_flag=True, help="Give the command a pseudo-terminal.")
@click.option("--explain", is_flag=True, help="Narrate each step on stderr.")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(container, command, env, workdir, user, interactive, tty, explain) -> int:
    """Run COMMAND inside the running CONTAINER (a name or id from `minirun ps`)."""
    _need_root("exec")
    from minirun.container import exec_in
    return exec_in(container, list(command), list(env), workdir=workdir, user=user, tty=tty,
                   explain=explain)


@cli.command()
@click.option("-t", "--time", "grace", default=10.0, show_default=True, metavar="SECONDS",
              help="How long to wait after SIGTERM before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
def stop(containers, grace) -> None:
    """Stop running containers: SIGTERM, then SIGKILL after a grace period."""
    _need_root("stop")
    from minirun.container import stop as stop_container
    for container in containers:
        click.echo(stop_container(container, grace)[:12])


@cli.command()
def ps() -> None:
    """List running containers."""
    import time
    from minirun import state
    _need_root("ps")
    rows = [(record.id[:12], record.name, record.image, str(record.pid),
             f"{int(time.time() - record.created)}s ago", " ".join(record.command))
            for record in state.containers() if state.is_alive(record)]
    _table(("CONTAINER ID", "NAME", "IMAGE", "PID", "CREATED", "COMMAND"), rows)


@cli.command()
def gc() -> None:
    """Remove what killed minirun processes left behind: the records, bundles (the containers'
    writable layers) and cgroups of containers whose minirun is gone. Images and their layers
    stay (`minirun rmi` removes those)."""
    _need_root("gc")
    from minirun.container import collect_garbage
    for container_id in collect_garbage():
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
    from minirun.image import Store
    from minirun.units import format_size
    rows = [(r["name"], format_size(r.get("size", 0)), str(len(r["layers"])), r["created"])
            for r in Store().records()]
    _table(("NAME", "SIZE", "LAYERS", "CREATED"), rows)


def _table(header: tuple, rows: list[tuple]) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


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
    """Print image NAME's record as JSON: its layers, their directories, its config."""
    _need_root("inspect")       # it builds a built-in image on first use
    import json
    from minirun.image import Store
    click.echo(json.dumps(Store().inspect(name), indent=2))


def main() -> None:
    """Entry point: map every outcome to a Docker-style exit status and one line of error."""
    try:
        status = cli.main(prog_name="minirun", standalone_mode=False)
    except click.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        click.echo(f"minirun: {error.format_message()}{hint}", err=True)
        status = errors.RUNTIME_FAILED
    except click.ClickException as error:
        click.echo(f"minirun: {error.format_message()}", err=True)
        status = errors.RUNTIME_FAILED
    except (click.Abort, KeyboardInterrupt):
        status = 128 + signal.SIGINT
    except errors.RuntimeFailure as failure:
        click.echo(f"minirun: {failure}", err=True)
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
