"""The `minivm` command line: click commands only; the work is in minivm.boot and minivm.kernel,
and for detached VMs in minivm.supervisor, minivm.monitor (QMP) and minivm.agent (exec)."""
import signal

# A Ctrl-C while Python loads click and minivm's modules is held (blocked) from this first line
# until `main` begins, and lands there as one KeyboardInterrupt that main turns into 130. Caught
# as an exception around the imports instead, it could break out of any line of them (a click
# decorator, say) with a traceback. minirun holds its signals the same way (minirun/cli.py).
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

import os       # noqa: E402  (after the signal is held, on purpose)
import sys      # noqa: E402

import click    # noqa: E402

from minirun.errors import RUNTIME_FAILED, RuntimeFailure      # noqa: E402
from minirun.names import check_hostname, check_name            # noqa: E402
from minirun.units import check_env_and_workdir, parse_cpus, parse_memory     # noqa: E402
from minivm.hardware import DEFAULT_MEMORY, MIB, SMALLEST_MEMORY    # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Boot an image's app in a virtual machine with its own kernel (QEMU, driven over QMP)."""


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--memory", "-m", default=f"{DEFAULT_MEMORY // MIB}M", show_default=True,
              help="Guest RAM, e.g. 256M or 1G.")
@click.option("--cpus", default="1", show_default=True,
              help="Virtual CPUs (1.5 is rounded up to 2).")
@click.option("--hostname", default="", help="The guest's hostname [default: the image name].")
@click.option("--env", "-e", multiple=True, metavar="KEY=VALUE",
              help="Set an environment variable.")
@click.option("--workdir", "-w", default="", help="Working directory of the app in the guest.")
@click.option("--volume", "-v", "volumes", multiple=True, metavar="HOST_DIR:DIR[:ro]",
              help="Share a host directory with the guest (virtio-9p); :ro makes it read-only.")
@click.option("--user", "-u", metavar="USER[:GROUP]",
              help="Run the app as this user (name or UID), as minirun run -u [default: the image's].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop the VM (exit 125) if it runs longer than this.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="KVM (hardware) or TCG (software emulation).")
@click.option("--kernel", metavar="PATH", help="Guest kernel (bzImage or vmlinux) [default: "
              "$MINIVM_KERNEL, then minivm's cache, then /boot/vmlinuz-$(uname -r)].")
@click.option("--interactive", "-i", is_flag=True, help="Connect the terminal to the guest.")
@click.option("--tty", "-t", is_flag=True, help="Same as -i: a serial line is a terminal.")
@click.option("--verbose", is_flag=True, help="Show the guest console and QMP traffic.")
@click.option("--explain", is_flag=True, help="Print each piece of virtual hardware and why.")
@click.option("--network", type=click.Choice(["bridge", "user", "none"]),
              help="bridge: a virtio-net card on minirun's bridge (needs root, for the tap "
                   "device); user: the same card on QEMU's user-mode network (no root; the "
                   "guest reaches out, only -p reaches in); none: only lo. Default: bridge as "
                   "root, user otherwise.")
@click.option("-p", "--publish", multiple=True, metavar="[IP:]HOST_PORT:PORT[/udp]",
              help="Publish a guest's port on the host, as minirun run -p.")
@click.option("-d", "--detach", is_flag=True,
              help="Print the VM's id once it has booted and return; a supervisor keeps it "
                   "(see `minivm ps`, `logs`, `stop`, `exec`, `qmp`, `rm`).")
@click.option("--name", help="With -d: a name for the VM [default: its short id].")
@click.option("--rm", "remove", is_flag=True,
              help="With -d: remove the VM once it exits (a foreground VM never stays).")
@click.argument("image", default="hello")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def boot(memory, cpus, hostname, env, workdir, volumes, user, timeout, accel, kernel, interactive,
         tty, verbose, explain, network, publish, detach, name, remove, image, command):
    """Boot IMAGE (default: hello) in a VM and run COMMAND, or the image's own command."""
    from minivm.boot import BootOptions, boot as boot_vm
    interactive = interactive or tty
    from minirun import ports
    try:
        published = [ports.parse(text) for text in publish]
    except ValueError as error:
        raise RuntimeFailure(str(error)) from None
    # A VM needs no root, unless it is to join the bridge: a tap device and a port on the
    # bridge need CAP_NET_ADMIN. Without it, QEMU's user-mode network, which needs nothing.
    network = network or ("bridge" if os.geteuid() == 0 else "user")
    if network == "bridge" and os.geteuid() != 0:
        raise RuntimeFailure("--network bridge needs root (a tap device on minirun's bridge): "
                             "run minivm with sudo, or use --network user")
    if published and network == "none":
        raise RuntimeFailure("-p publishes a port of the guest's network card: it has none "
                             "with --network none (use --network bridge or user)")
    if interactive and detach:
        raise RuntimeFailure("-d with -i/-t: a detached VM has no terminal to attach to (use "
                             "`minivm exec` to run commands in it)")
    if (name is not None or remove) and not detach:
        flag = "--name" if name is not None else "--rm"
        raise RuntimeFailure(f"{flag} is for a detached VM: add -d")
    if hostname:                            # into every container's /etc/hosts, and the guest's
        check_hostname(hostname)
    if name is not None:
        check_name(name, "VM")
    if interactive and not sys.stdin.isatty():
        raise RuntimeFailure("-i/-t needs a terminal on stdin; drop -it to run without input")
    check_env_and_workdir(env, workdir or None)         # -e and -w as minirun's
    options = BootOptions(
        image=image, args=list(command), memory=parse_memory(memory, SMALLEST_MEMORY, "a guest"),
        cpus=parse_cpus(cpus),
        hostname=hostname, env=list(env), workdir=workdir, timeout=timeout, accel=accel,
        kernel=kernel, interactive=interactive, verbose=verbose, explain=explain, user=user,
        network=network, publish=published, volumes=list(volumes))
    if detach:
        from minivm import supervisor
        click.echo(supervisor.boot_detached(options, name or "", remove))
        return 0
    return boot_vm(options)


# -- Detached VMs: minivm/supervisor.py, monitor.py, agent.py -----------------------------------

@cli.command()
@click.option("-a", "--all", "everything", is_flag=True, help="Show exited VMs too.")
def ps(everything):
    """List detached VMs that run (with -a, exited ones too)."""
    from minirun.columns import print_table
    from minivm import supervisor
    rows = supervisor.table(everything)
    print_table(("VM ID", "NAME", "IMAGE", "QEMU PID", "CREATED", "STATUS", "COMMAND"), rows)


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing what comes, until it exits.")
@click.argument("vm")
def logs(vm, follow):
    """Print a detached VM's app's output: its stdout on stdout, its stderr on stderr."""
    from minirun.supervisor import follow_logs
    from minivm import supervisor
    record = supervisor.find(vm)
    follow_logs(supervisor.home_of(record), lambda: supervisor.is_supervised(record), follow)


@cli.command()
@click.option("-t", "--time", "grace", default=10.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0),
              help="How long the guest has to shut down after the power button, before QMP quit.")
@click.argument("vms", nargs=-1, required=True)
def stop(vms, grace):
    """Stop running VMs: the ACPI power button (QMP system_powerdown), then QMP quit."""
    from minirun.supervisor import each
    from minivm import supervisor
    return each(vms, lambda vm: supervisor.stop(vm, grace), "minivm")


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Switch a running VM off first (QMP quit).")
@click.argument("vms", nargs=-1, required=True)
def rm(vms, force):
    """Remove detached VMs that have exited (with -f, running ones too)."""
    from minirun.supervisor import each
    from minivm import supervisor
    return each(vms, lambda vm: supervisor.remove(vm, force), "minivm")


@cli.command()
@click.argument("vms", nargs=-1, required=True)
def wait(vms):
    """Wait until detached VMs exit; print each one's app's exit code."""
    from minirun.supervisor import each
    from minivm import supervisor
    return each(vms, supervisor.wait, "minivm")


@cli.command()
@click.argument("vm")
def inspect(vm):
    """Print a detached VM's record as JSON: status, exit code, QEMU's PID, its files."""
    import json
    from minivm import supervisor
    click.echo(json.dumps(supervisor.describe(vm), indent=2))


@cli.command()
def gc():
    """Remove what killed supervisors left: their VMs' directories (QEMU died with them), and
    as root the bridge addresses their VMs leased (the tap went with QEMU)."""
    from minivm import supervisor
    for vm_id in supervisor.remove_stale():
        click.echo(f"removed {vm_id[:12]}")
    if os.geteuid() == 0:
        from minirun import network
        for address in network.collect_leases():
            click.echo(f"released {address}")


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.argument("vm")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(vm, command):
    """Run COMMAND in a running VM's guest, as its app runs; its output and exit status."""
    from minivm import agent, supervisor
    record = supervisor.find_running(vm)
    return agent.run(supervisor.home_of(record) / supervisor.EXEC, list(command))


@cli.command()
@click.argument("vm")
@click.argument("command")
@click.argument("arguments", required=False)
def qmp(vm, command, arguments):
    """Send one QMP COMMAND (with ARGUMENTS, a JSON object) to a running VM; print the reply."""
    import json
    from minivm import monitor, supervisor
    example = "e.g. '{\"command-line\": \"info cpus\"}' for human-monitor-command"
    try:
        parsed = json.loads(arguments) if arguments is not None else None
    except ValueError as error:
        raise RuntimeFailure(f"ARGUMENTS is not JSON ({error}): give an object, {example}") \
            from None
    if parsed is not None and not isinstance(parsed, dict):
        raise RuntimeFailure(f"ARGUMENTS must be a JSON object, {example}")
    record = supervisor.find_running(vm)
    reply = monitor.execute(supervisor.home_of(record) / supervisor.MONITOR, command, parsed)
    # human-monitor-command answers with the HMP's text: print it as text, not as a JSON string.
    click.echo(reply.rstrip() if isinstance(reply, str) else json.dumps(reply, indent=2))


@cli.group("kernel")
def kernel_group():
    """The guest kernel."""


@kernel_group.command("fetch")
def kernel_fetch():
    """Put Debian's linux-image-amd64 kernel into minivm's cache (quick if already there)."""
    from minivm.kernel import fetch
    click.echo(f"guest kernel: {fetch()}")


@cli.group("cache", invoke_without_command=True)
@click.pass_context
def cache_group(context):
    """List minivm's cache: every file, its size and when a boot last used it."""
    if context.invoked_subcommand is not None:
        return
    import time
    from minivm import cache
    entries = cache.entries()
    for path, size, used in entries:
        last_use = time.strftime("%Y-%m-%d %H:%M", time.localtime(used))
        click.echo(f"{_megabytes(size):>10}  {last_use}  {path.relative_to(cache.cache_dir())}")
    click.echo(f"{_megabytes(sum(size for _, size, _ in entries)):>10}  in all, in "
               f"{cache.cache_dir()}")


@cache_group.command("prune")
@click.option("--unused-for", type=click.FloatRange(min=0), default=7, show_default=True,
              metavar="DAYS", help="Remove what no boot has used for this many days.")
def cache_prune(unused_for):
    """Remove layer disks and unpacked kernels that no boot has used lately (the next boot
    that needs one rebuilds it), and what killed writers left half-written."""
    from minivm import cache
    removed = cache.prune(unused_for * 24 * 3600)
    for path, size in removed:
        click.echo(f"removed {path.relative_to(cache.cache_dir())} ({_megabytes(size)})")
    click.echo(f"freed {_megabytes(sum(size for _, size in removed))}")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def main() -> None:
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})    # a held Ctrl-C lands here
        status = cli.main(prog_name="minivm", standalone_mode=False)
    except click.UsageError as error:
        click.echo(f"minivm: {error.format_message()} (see `minivm --help`)", err=True)
        sys.exit(RUNTIME_FAILED)
    except click.ClickException as error:
        click.echo(f"minivm: {error.format_message()}", err=True)
        sys.exit(RUNTIME_FAILED)
    except RuntimeFailure as error:
        click.echo(f"minivm: {error}", err=True)
        sys.exit(error.exit_code)
    except (click.Abort, KeyboardInterrupt):    # Ctrl-C before minivm's own handler was set
        sys.exit(130)
    sys.exit(status or 0)
