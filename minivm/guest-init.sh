#!/.minivm/busybox sh
# PID 1 of the guest. The kernel runs it from the initramfs (`rdinit=/.minivm/init`) once it has
# booted; what a container runtime does from the host before exec, a VM's init does from inside.
#
# It talks to minivm over (minivm/hardware.py):
#   ttyS0  the console: kernel messages, and the lines "@minivm: ..." that report progress and,
#          at the end, the app's exit status to the host;
#   three virtio-serial ports, minivm.stdin, minivm.stdout and minivm.stderr: the app's streams;
#   or, with -it, ttyS1: the app's terminal.
# Commands here are busybox applets (this busybox runs its applets before looking at PATH), so
# the init works whatever userland the image has, busybox or none; the app itself runs the
# image's own programs. Most applets run by re-executing busybox as /proc/self/exe, so /proc
# is mounted first, by busybox's own path.

# A report is written into the kernel's log, which prints each record on the console as one
# whole line: a kernel message can come before or after it, never in the middle. Level 3 (<3>),
# because `quiet` prints only levels 0 to 3 on the console.
report() { echo "<3>@minivm: $*" >/dev/kmsg; }
fail() { report "fail $*"; poweroff -f; }

# The kernel gives PID 1 the unpacked initramfs and nothing more: its views of processes, devices
# and drivers are filesystems that userspace mounts where it wants them.
mkdir -p /proc /sys /dev /tmp
/.minivm/busybox mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t cgroup2 cgroup2 /sys/fs/cgroup     # a VM is its own cgroup v2 host, all controllers in it
mount -t debugfs debugfs /sys/kernel/debug  # where virtio_console counts each port's bytes

# This run's settings, written by minivm into the initramfs (initramfs.py).
. /.minivm/run.sh
hostname "$hostname"
# The guest's loopback starts down, as in a new network namespace: 127.0.0.1 and localhost
# answer only once it is up (minirun does the same for a container, network.bring_up_loopback).
ip link set lo up

# The drivers of the virtual hardware, in the order modules.dep gives (minivm/modules.py).
for module in $modules; do
    insmod "/.minivm/modules/$module.ko" || fail "could not load the kernel module $module"
done
report "init running"

# The image: its layers are read-only disks (minivm/disks.py), told apart by their serials. Once
# virtio_blk is loaded, the kernel finds each disk and makes /dev/vdX within milliseconds; the
# order of the letters is the order of discovery, not of the layers, so each disk is found by
# its serial. Each is mounted read-only, and the layers are stacked with overlayfs as
# `minirun run` stacks them (minirun/rootfs.py:mount_overlay): top first in lowerdir, the writes
# in an upper directory on a tmpfs (guest RAM, half of it at most, used only as it is written).
# Unlike a container's, this root is mounted without nosuid and nodev: it is the whole machine's
# root filesystem, as on a real system, and the guest's devices are the VM's own.
disk() {    # the /dev/vdX whose serial is $1, once the kernel has found it
    for block in /sys/block/vd*; do
        [ "$(cat "$block/serial" 2>/dev/null)" != "$1" ] || echo "/dev/${block##*/}"
    done
}
tries=0 lower= number=0
for serial in $disks; do
    until device=$(disk "$serial") && [ -n "$device" ]; do
        [ "$tries" -lt 1000 ] || fail "the image's disk $serial did not appear in 10 s"
        tries=$((tries + 1))
        sleep 0.01
    done
    mkdir -p "/.minivm/layers/$number"
    mount -t erofs -o ro "$device" "/.minivm/layers/$number" ||
        fail "could not mount the image's disk $serial ($device)"
    lower="$number${lower:+:$lower}"
    number=$((number + 1))
done
root=/.minivm/root
mkdir -p /.minivm/rw $root
mount -t tmpfs -o mode=0755 tmpfs /.minivm/rw && mkdir /.minivm/rw/upper /.minivm/rw/work
(cd /.minivm/layers && mount -t overlay overlay -o \
    "volatile,lowerdir=$lower,upperdir=/.minivm/rw/upper,workdir=/.minivm/rw/work" \
    "$root") || fail "could not stack the image's layers with overlayfs"
# The kernel's views, in the image's root as a container has them (proc, sys, dev); here the
# devices are the VM's own, so /dev is the kernel's devtmpfs.
mkdir -p $root/proc $root/sys $root/dev
mount -t proc proc $root/proc
mount -t sysfs sysfs $root/sys
mount -t cgroup2 cgroup2 $root/sys/fs/cgroup
mount -t devtmpfs devtmpfs $root/dev
mkdir -p $root/dev/shm
mount -t devpts devpts $root/dev/pts
mount -t tmpfs -o mode=1777 shm $root/dev/shm

# The host's shared folders (-v), each a virtio-9p device named by its tag (minivm/hardware.py),
# mounted where the app expects it, read-only if asked.
share() {
    mkdir -p "$root$2" && mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$3" \
        "$1" "$root$2" || fail "could not mount the shared folder $2"
}
shared_folders

# /etc/hosts, /etc/hostname and /etc/resolv.conf for this boot (minirun/hosts.py), as a
# container gets them, written into the writable layer over the image's own.
mkdir -p $root/etc
for file in /.minivm/etc/*; do
    [ -f "$file" ] || continue
    rm -f "$root/etc/${file##*/}" && cat "$file" >"$root/etc/${file##*/}" ||
        fail "could not write /etc/${file##*/}"
done

# How many bytes of the app's output the guest's driver has handed to the host on a port.
sent() {
    while read -r key value; do
        [ "$key" != "bytes_sent:" ] || echo "$value"
    done <"/sys/kernel/debug/virtio-ports/${1##*/}"
}
# eth0, the virtio-net card, is there once its driver is loaded: its address and the default
# route through the host's bridge, as minirun gives a container's eth0 (minirun/network.py).
if [ -n "$address" ]; then
    ip addr add "$address" dev eth0 && ip link set eth0 up &&
        ip route add default via "$gateway" || fail "could not configure eth0 as $address"
fi

# The app runs with exactly the environment the image and `-e` give it, in the image's root (a
# mount namespace of its own where the overlay is /), in its working directory, as the image's user ($user: become's -u UID:GID:GROUPS, or nothing for root). busybox `env -i`
# only sets the environment: the program it runs is become (minivm/become.c), by its full path,
# and become finds the command on the app's PATH, so no busybox applet can stand in for it.
# The status is 127 if the command does not exist, 126 if it cannot be executed, else the app's
# own, 128+N if signal N killed it.
run_app() {
    eval "exec $session env -i $environment /.minivm/become -r $root -w \"\${workdir:-/}\" $user \"\$@\""
}

# A detached VM (minivm boot -d) has a control plane: the ACPI power button, which `minivm stop`
# presses, and an agent that runs `minivm exec`'s commands (minivm/agent.py).
#
# The kernel's button driver turns a press into a key event of an input device (KEY_POWER), and
# evdev makes that device readable as /dev/input/eventN; nothing else happens by itself (on a
# full system acpid or systemd-logind reads it). Here a reader waits for the first event: each
# is a struct input_event of 24 bytes (linux/input.h), and a press is the only thing this device
# ever reports. Then, as a container's `stop` sends SIGTERM, the app's session gets SIGTERM, and
# the init reports the app's exit as always: minivm delivers the output and switches off.
power_button() {    # the event device of the ACPI power button, once its drivers made it
    tries=0
    while [ "$tries" -lt 1000 ]; do
        for input in /sys/class/input/event*; do
            [ "$(cat "$input/device/name" 2>/dev/null)" != "Power Button" ] ||
                { echo "/dev/input/${input##*/}"; return; }
        done
        tries=$((tries + 1))
        sleep 0.01
    done
    fail "the ACPI power button did not appear in 10 s"
}
on_power_button() {     # stdin: the power button's event device
    dd of=/dev/null bs=24 count=1 2>/dev/null || return
    report "power button: SIGTERM to the app"
    kill -TERM -"$app" 2>/dev/null
}
# The agent reads one request a line from its port, the command's words shell-quoted by the host
# and base64-encoded (so that any byte, newlines included, fits on one line), and runs it as the
# app runs (its environment, working directory, user), through the relay (minivm/relay.c): the
# relay starts the command's session in place of setsid (and runs env as busybox, by its path:
# it executes a file, where this shell would find its own applet), and streams the command's
# stdout and stderr to the port as they come, in frames, then its exit status. An empty line
# is the host hanging up an exec that had already ended (relay.c): there is nothing to run.
agent() {
    exec 3<>"$1"
    while read -r request <&3; do
        [ -n "$request" ] || continue
        eval "set -- $(echo "$request" | base64 -d)"
        (session="/.minivm/relay /.minivm/busybox"; run_app "$@") <&3 >&3 3>&-
    done
}

if [ -n "$interactive" ]; then
    # A terminal session: the host's terminal is raw, so this tty does the line editing, echo and
    # Ctrl-C; it is told the size of the host's window, as a terminal emulator would. A tty keeps
    # its size only while it is open (the kernel frees it with the tty at the last close, unlike
    # the modes), so the size is set on the descriptors the app inherits. The app leads a new
    # session with ttyS1 as its controlling terminal, for job control.
    session="setsid -c"
    (stty sane rows "$rows" cols "$columns"; run_app "$@") </dev/ttyS1 >/dev/ttyS1 2>&1
    report "exit $?"
else
    # The app's streams are pipes, as in a pipeline on the host, and busybox `cat` copies each
    # to or from its port. The ports themselves would refuse a second open (virtio_console
    # allows one at a time), so an app that opens /dev/stdout or /dev/stderr again would fail.
    # Once loaded, virtio_console learns the ports and their names from the device, and makes a
    # /dev/vportNpM for each, within milliseconds: wait for the three minivm named.
    tries=0 stdin= stdout= stderr= agent=
    until [ -n "$stdin" ] && [ -n "$stdout" ] && [ -n "$stderr" ] &&
          { [ -z "$detached" ] || [ -n "$agent" ]; }; do
        [ "$tries" -lt 1000 ] || fail "the app's virtio ports did not appear in 10 s"
        [ "$tries" -eq 0 ] || sleep 0.01
        tries=$((tries + 1))
        for named in /sys/class/virtio-ports/*/name; do
            read -r name <"$named" 2>/dev/null || continue
            named=${named%/name}
            case "$name" in
                minivm.stdin) stdin=/dev/${named##*/} ;;
                minivm.stdout) stdout=/dev/${named##*/} ;;
                minivm.stderr) stderr=/dev/${named##*/} ;;
                minivm.agent) agent=/dev/${named##*/} ;;
            esac
        done
    done
    mkfifo /.minivm/stdout /.minivm/stderr
    cat /.minivm/stdout >"$stdout" & out=$!
    cat /.minivm/stderr >"$stderr" & err=$!
    # The app leads a session of its own (no terminal), so that whatever it leaves running can be
    # stopped with it, as a container's processes end with its PID 1.
    session="setsid"
    cat "$stdin" | (run_app "$@") >/.minivm/stdout 2>/.minivm/stderr &
    app=$!
    if [ -n "$detached" ]; then
        agent "$agent" &
        # Opened here, before the report that ends `boot -d`: a press from now on waits in
        # evdev's buffer for its reader (one that came before any open would be lost).
        exec 4<"$(power_button)"
        on_power_button <&4 & button=$!
        exec 4<&-
        report "app running"
    fi
    wait "$app"
    status=$?
    kill -KILL -"$app" ${button:+"$button"} 2>/dev/null
    wait "$out" "$err"      # every byte of output is in its port now
    # The host ends the machine once it has received as many bytes as the driver sent it: data
    # still in flight (in QEMU, in a socket) would be lost if the guest powered off by itself.
    report "exit $status out=$(sent "$stdout") err=$(sent "$stderr")"
fi

# minivm switches the machine off with QMP's `quit` once it has all the app's output: its disks
# are read-only and its writes live in RAM, so there is nothing to save.
while :; do sleep 3600; done
