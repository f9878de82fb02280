#!/.minivm/busybox sh
# PID 1 of the guest. The kernel runs it from the initramfs (`rdinit=/.minivm/init`) once it has
# booted; what a container runtime does from the host before exec, a VM's init does from inside.
#
# It talks to minivm over two serial ports (minivm/hardware.py):
#   ttyS0  the console: kernel messages, and the lines starting "@minivm:" that report progress
#          and, at the end, the app's exit status to the host;
#   ttyS1  the app's own terminal: its stdin, stdout and stderr, nothing else.
# Commands here are busybox applets (this busybox runs its applets before looking at PATH), so
# the init works whatever userland the image has, busybox or none; the app itself runs the
# image's own programs. Most applets run by re-executing busybox as /proc/self/exe, so /proc
# is mounted first, by busybox's own path.

report() { echo "@minivm: $*" >/dev/ttyS0; }

# The kernel gives PID 1 the unpacked initramfs and nothing more: its views of processes, devices
# and drivers are filesystems that userspace mounts where it wants them.
mkdir -p /proc /sys /dev /tmp
/.minivm/busybox mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t cgroup2 cgroup2 /sys/fs/cgroup     # a VM is its own cgroup v2 host, all controllers in it
report "init running"

# This run's settings, written by minivm into the second initramfs archive (initramfs.py).
. /.minivm/run.sh
hostname "$hostname"

# The app runs in its working directory with exactly the environment the image and `-e` give it,
# as the image's user: $become, if set, is /.minivm/become UID GID GROUPS (minivm/become.c).
# `env` (or become) execs the command: 127 if it does not exist, 126 if it cannot be executed,
# else the app's own status, 128+N if signal N killed it.
run_app() {
    mkdir -p "$workdir" && cd "$workdir" || exit 126     # created if missing, as Docker does
    eval "exec $session env -i $environment $become \"\$@\""
}

if [ -n "$interactive" ]; then
    # A terminal session: the host's terminal is raw, so this tty does the line editing, echo and
    # Ctrl-C; it is told the size of the host's window, as a terminal emulator would. A tty keeps
    # its size only while it is open (the kernel frees it with the tty at the last close, unlike
    # the modes), so the size is set on the descriptors the app inherits. The app leads a new
    # session with ttyS1 as its controlling terminal, for job control.
    session="setsid -c"
    (stty sane rows "$rows" cols "$columns"; run_app "$@") </dev/ttyS1 >/dev/ttyS1 2>&1
else
    # Output only, like a pipe: no echo, and "\n" stays "\n" (no "\r\n" from the line discipline).
    # No session and no controlling terminal here: when a session leader exits, the kernel hangs
    # up its terminal and throws away output not yet sent (tty_vhangup_session), which would cut
    # the end of the app's output.
    stty -F /dev/ttyS1 raw -echo
    session=""
    (run_app "$@") </dev/null >/dev/ttyS1 2>&1
fi
report "exit $?"

# Power off: the kernel syncs and switches the (virtual) machine off, and QEMU exits.
poweroff -f
