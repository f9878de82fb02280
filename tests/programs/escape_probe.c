/* escape_probe: what an attacker inside a container would try first, one route per subcommand.
 *
 * Each subcommand tries one way out of the container (or into the host's kernel) and prints
 * one line: "ESCAPED <what it reached>" when the route works, "BLOCKED <ERRNO> <step>" when
 * something stopped it, naming the step that failed, so that a reader can tell a capability
 * check (mknod: EPERM) from the device cgroup (open: EPERM) from a seccomp filter (EPERM on a
 * call every process may otherwise make). Exit status: 0 escaped, 1 blocked, 2 usage.
 * `escape_probe all` runs every route that needs no argument, each in a child of its own;
 * `escape_probe init` the routes through PID 1, telling only under `minirun run --init`.
 *
 * Nothing here harms the host: block devices are only read, the cgroup routes only look and
 * write a limit back unchanged, a ptrace attach is detached at once. Built statically
 * (gcc -static), so it runs in any image: tests/test_escapes.py, tests/bench/security_table.py.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static int escaped(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("ESCAPED ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return 0;
}

/* BLOCKED with the errno's name (EPERM, EACCES...) and the step that failed. */
static int blocked(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("BLOCKED %s ", err ? strerrorname_np(err) : "-");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return 1;
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    int err = errno;
    close(fd);
    errno = err;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* --- 1. Descriptors the runtime forgot to close -------------------------------------------- */

/* Every descriptor above 2 that this process was given: where it leads, and for a directory,
 * a file created through it (openat(2) resolves the name from that directory, wherever it is:
 * a directory of the host is as good as a door). */
static int probe_fds(void) {
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    int found = 0, wrote = 0;
    char report[4096] = "";
    for (int fd = 3; fd < (int)limit.rlim_cur && fd < 65536; fd++) {
        if (fcntl(fd, F_GETFD) < 0)
            continue;
        char link[64], target[512] = "?";
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        target[n > 0 ? n : 1] = 0;
        struct stat info;
        char name[64] = "";
        if (fstat(fd, &info) == 0 && S_ISDIR(info.st_mode)) {
            snprintf(name, sizeof name, "escaped-through-fd-%d", fd);
            int file = openat(fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (file >= 0) {
                dprintf(file, "written from inside a container through descriptor %d\n", fd);
                close(file);
                wrote++;
            } else {
                name[0] = 0;
            }
        }
        size_t used = strlen(report);
        snprintf(report + used, sizeof report - used, "%sfd %d -> %s%s%s", found ? "; " : "", fd,
                 target, name[0] ? ", wrote " : "", name);
        found++;
    }
    if (!found)
        return blocked(0, "no descriptor above 2");
    return escaped("%d inherited descriptor(s)%s: %s", found, wrote ? ", wrote through" : "", report);
}

/* PID 1's descriptors (an init left by the runtime): a namespace of the host among them is a
 * handle on the host (setns(2) takes such a descriptor). Reading /proc/1/fd needs ptrace
 * access to PID 1 (proc(5)): an init that is not dumpable keeps them to itself. */
static int probe_pid1_fds(void) {
    DIR *dir = opendir("/proc/1/fd");
    if (!dir)
        return blocked(errno, "opendir /proc/1/fd");
    char own[64] = "";
    ssize_t n = readlink("/proc/self/ns/pid", own, sizeof own - 1);
    own[n > 0 ? n : 0] = 0;
    struct dirent *entry;
    errno = 0;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.')
            continue;
        char link[300], target[256];
        snprintf(link, sizeof link, "/proc/1/fd/%s", entry->d_name);
        n = readlink(link, target, sizeof target - 1);
        if (n < 0)
            return blocked(errno, "readlink %s", link);
        target[n] = 0;
        if (strncmp(target, "pid:[", 5) == 0 && strcmp(target, own) != 0) {
            closedir(dir);
            return escaped("PID 1 holds fd %s -> %s, a PID namespace not ours (%s): the host's",
                           entry->d_name, target, own);
        }
    }
    int err = errno;
    closedir(dir);
    return err ? blocked(err, "readdir /proc/1/fd") : blocked(0, "PID 1 holds no foreign namespace");
}

/* --- 2. Devices of the host ----------------------------------------------------------------- */

/* mknod a device node in /dev (or, if that is not writable, in /tmp), then open it:
 * CAP_MKNOD decides the first step (mknod(2)); the device cgroup, or a nodev mount, the second.
 * A block device is read, never written: an ext4 superblock in the first 2 KiB says it is a
 * disk. */
static int probe_device(char type, unsigned major_, unsigned minor_, const char *mode,
                        const char *text) {
    const char *node = "/dev/escape-probe-dev";
    mode_t kind = (type == 'b' ? S_IFBLK : S_IFCHR) | 0600;
    unlink(node);
    int made = mknod(node, kind, makedev(major_, minor_));
    if (made < 0 && (errno == EROFS || errno == EACCES)) {
        node = "/tmp/escape-probe-dev";
        unlink(node);
        made = mknod(node, kind, makedev(major_, minor_));
    }
    if (made < 0)
        return blocked(errno, "mknod %c %u %u", type, major_, minor_);
    int flags = strcmp(mode, "rw") == 0 ? O_RDWR : strcmp(mode, "w") == 0 ? O_WRONLY : O_RDONLY;
    int fd = open(node, flags | O_NOCTTY | O_CLOEXEC);
    int err = errno;
    unlink(node);
    if (fd < 0)
        return blocked(err, "open %c %u %u", type, major_, minor_);
    if (text) {
        ssize_t n = write(fd, text, strlen(text));
        err = errno;
        close(fd);
        if (n < 0)
            return blocked(err, "write %c %u %u", type, major_, minor_);
        return escaped("wrote %zd bytes to %c %u:%u", n, type, major_, minor_);
    }
    if (type == 'b') {
        unsigned char sector[2048];
        ssize_t n = pread(fd, sector, sizeof sector, 0);
        err = errno;
        close(fd);
        if (n < 0)
            return blocked(err, "read b %u %u", major_, minor_);
        int ext4 = n >= 1082 && sector[1080] == 0x53 && sector[1081] == 0xef;
        char start[33] = "";
        for (int i = 0; i < 32 && i < n; i++)
            start[i] = sector[i] >= 32 && sector[i] < 127 ? sector[i] : '.';
        return escaped("read %zd bytes of block device %u:%u%s: %s", n, major_, minor_,
                       ext4 ? " (an ext4 superblock)" : "", start);
    }
    close(fd);
    return escaped("opened %c %u:%u for %s", type, major_, minor_, mode);
}

/* --- 3. The host's cgroups ------------------------------------------------------------------ */

/* Become root of a new user namespace (mapped to the uid we are), with a mount and a cgroup
 * namespace of our own: cgroupfs may then be mounted (it is FS_USERNS_MOUNT), rooted at the
 * cgroup we are in (cgroup_namespaces(7)). user_namespaces(7): a process may map its own uid. */
static int enter_user_namespace(void) {
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP) < 0)
        return blocked(errno, "unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWCGROUP)");
    char map[64];
    snprintf(map, sizeof map, "0 %u 1", uid);
    if (write_file("/proc/self/uid_map", map) < 0)
        return blocked(errno, "write uid_map");
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "0 %u 1", gid);
    if (write_file("/proc/self/gid_map", map) < 0)
        return blocked(errno, "write gid_map");
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    /* A tmpfs of our own namespace over /tmp: the mount point, without writing the image. */
    if (mount("tmpfs", "/tmp", "tmpfs", 0, "size=64k") < 0)
        return blocked(errno, "mount tmpfs on /tmp");
    mkdir("/tmp/cg", 0755);
    return -1;      /* -1: in, go on */
}

static int mount_cgroupfs(const char *hierarchy) {
    int ok = strcmp(hierarchy, "cgroup2") == 0
        ? mount("cgroup2", "/tmp/cg", "cgroup2", 0, NULL)
        : mount("cgroup", "/tmp/cg", "cgroup", 0, hierarchy);
    return ok;
}

/* The root cgroup lacks the files the kernel gives only to its descendants (freezer.state in
 * v1's freezer, cgroup.events in v2): if the mount's root lacks them, the container was left
 * in the host's root cgroup, and the whole host tree is below us, writable. */
static int probe_cgroupfs(const char *hierarchy) {
    int in = enter_user_namespace();
    if (in >= 0)
        return in;
    if (mount_cgroupfs(hierarchy) < 0)
        return blocked(errno, "mount %s", hierarchy);
    const char *marker = strcmp(hierarchy, "cgroup2") == 0 ? "/tmp/cg/cgroup.events"
                       : strcmp(hierarchy, "freezer") == 0 ? "/tmp/cg/freezer.state"
                       : "/tmp/cg/notify_on_release";
    if (access(marker, F_OK) == 0)
        return blocked(0, "%s mounted, but its root is the container's own cgroup", hierarchy);
    int children = 0;
    DIR *dir = opendir("/tmp/cg");
    for (struct dirent *entry; dir && (entry = readdir(dir));)
        children += entry->d_type == DT_DIR && entry->d_name[0] != '.';
    if (dir)
        closedir(dir);
    int writable = access("/tmp/cg/cgroup.procs", W_OK) == 0;
    return escaped("mounted the host's root %s cgroup: %d host cgroup(s) below it, "
                   "cgroup.procs %s", hierarchy, children, writable ? "writable" : "read-only");
}

/* The container's own limit, rewritten from inside: the value written is the value read, so
 * nothing changes, but a write that succeeds could as well have raised it. */
static int probe_cgroup_limit(void) {
    int in = enter_user_namespace();
    if (in >= 0)
        return in;
    const char *file = "/tmp/cg/memory.limit_in_bytes";
    if (mount_cgroupfs("memory") < 0) {
        file = "/tmp/cg/memory.max";
        if (mount_cgroupfs("cgroup2") < 0)
            return blocked(errno, "mount memory cgroup");
    }
    char value[64] = "";
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        return blocked(errno, "open %s", file);
    ssize_t n = read(fd, value, sizeof value - 1);
    close(fd);
    value[n > 0 ? n : 0] = 0;
    value[strcspn(value, "\n")] = 0;
    if (write_file(file, value) < 0)
        return blocked(errno, "write %s", file + 8);
    return escaped("rewrote the container's own %s (%s) from inside", file + 8, value);
}

/* --- 4. System calls a container has no use for -------------------------------------------- */

/* The user keyring of uid 0 is one for the whole machine (keyrings(7), user-keyring(7)): a
 * container's root that can call keyctl(2) reads the host root's keys. */
static int probe_keyring(void) {
    long id = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0);
    if (id < 0)
        return blocked(errno, "keyctl(KEYCTL_GET_KEYRING_ID, @u)");
    char description[256] = "";
    if (syscall(SYS_keyctl, KEYCTL_DESCRIBE, id, description, sizeof description - 1) < 0)
        return blocked(errno, "keyctl(KEYCTL_DESCRIBE, @u)");
    int keys[256];
    long size = syscall(SYS_keyctl, KEYCTL_READ, id, keys, sizeof keys);
    if (size < 0)
        return blocked(errno, "keyctl(KEYCTL_READ, @u)");
    char names[2048] = "";
    for (long i = 0; i < size / (long)sizeof(int) && i < 256; i++) {
        char key[256] = "";
        if (syscall(SYS_keyctl, KEYCTL_DESCRIBE, keys[i], key, sizeof key - 1) >= 0) {
            size_t used = strlen(names);
            snprintf(names + used, sizeof names - used, " [%s]", strrchr(key, ';') + 1);
        }
    }
    return escaped("read @u (%s): %ld key(s)%s", strrchr(description, ';') + 1,
                   size / (long)sizeof(int), names);
}

static int probe_userns(void) {
    if (unshare(CLONE_NEWUSER) < 0)
        return blocked(errno, "unshare(CLONE_NEWUSER)");
    return escaped("a new user namespace: every capability inside it");
}

/* The smallest program the verifier accepts: r0 = 0; exit. */
static int probe_bpf(void) {
    struct bpf_insn program[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0},
        {.code = BPF_JMP | BPF_EXIT},
    };
    union bpf_attr attr = {0};
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insns = (unsigned long)program;
    attr.insn_cnt = 2;
    attr.license = (unsigned long)"GPL";
    long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
    if (fd < 0)
        return blocked(errno, "bpf(BPF_PROG_LOAD)");
    return escaped("bpf(BPF_PROG_LOAD) loaded a program: fd %ld", fd);
}

static int probe_perf(void) {
    struct perf_event_attr attr = {0};
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.exclude_kernel = attr.exclude_hv = 1;
    long fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    if (fd < 0)
        return blocked(errno, "perf_event_open");
    return escaped("perf_event_open: fd %ld", fd);
}

static int probe_userfaultfd(void) {
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return blocked(errno, "userfaultfd");
    return escaped("userfaultfd: fd %ld", fd);
}

static int probe_io_uring(void) {
    struct io_uring_params params = {0};
    long fd = syscall(SYS_io_uring_setup, 8, &params);
    if (fd < 0)
        return blocked(errno, "io_uring_setup");
    return escaped("io_uring_setup: fd %ld", fd);
}

/* --- 6. PID 1, when the runtime put an init of its own there -------------------------------- */

/* PTRACE_SEIZE attaches without stopping the tracee, and the kernel detaches it when this
 * (child) process exits. Allowed by ptrace_may_access() when PID 1 runs as our uid and is
 * dumpable (ptrace(2), "Ptrace access mode checking"). */
static int probe_ptrace1(void) {
    if (ptrace(PTRACE_SEIZE, 1, 0, 0) < 0)
        return blocked(errno, "ptrace(PTRACE_SEIZE, 1)");
    return escaped("attached to PID 1 with ptrace: its memory and registers are ours");
}

/* PID 1's environment: the container's, or the runtime's (the host's) if the runtime's own
 * process became PID 1 without an execve. NAME is a variable only the host's side has. */
static int probe_environ1(const char *name) {
    int fd = open("/proc/1/environ", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return blocked(errno, "open /proc/1/environ");
    static char text[1 << 20];
    ssize_t size = 0, n;
    while ((n = read(fd, text + size, sizeof text - 1 - size)) > 0)
        size += n;
    int err = errno;
    close(fd);
    if (n < 0)
        return blocked(err, "read /proc/1/environ");
    size_t length = strlen(name);
    int count = 0, found = 0;
    for (char *item = text; item < text + size; item += strlen(item) + 1) {
        count++;
        found |= strncmp(item, name, length) == 0 && item[length] == '=';
    }
    if (found)
        return escaped("/proc/1/environ holds the host's %s (%d variables)", name, count);
    return blocked(0, "/proc/1/environ has %d variables, %s not among them", count, name);
}

/* /proc/1/exe opens the very file PID 1 runs, wherever it is: if that file is not the one at
 * the same path inside the container, it is the host's. */
static int probe_exe1(void) {
    char target[512];
    ssize_t n = readlink("/proc/1/exe", target, sizeof target - 1);
    if (n < 0)
        return blocked(errno, "readlink /proc/1/exe");
    target[n] = 0;
    int fd = open("/proc/1/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return blocked(errno, "open /proc/1/exe (-> %s)", target);
    struct stat through_proc, inside;
    fstat(fd, &through_proc);
    close(fd);
    if (stat(target, &inside) == 0 && inside.st_dev == through_proc.st_dev &&
        inside.st_ino == through_proc.st_ino)
        return blocked(0, "/proc/1/exe is %s, a file of the container", target);
    return escaped("/proc/1/exe opens %s, a file of the host (%lld bytes) not in the container",
                   target, (long long)through_proc.st_size);
}

/* --- 8. A process the runtime is still turning into one of ours (minirun exec, before exec) ---
 * Until its execve, a process entering the container is the runtime's own program: the host's
 * interpreter as /proc/PID/exe, the host caller's environment in /proc/PID/environ, the
 * runtime's descriptors in /proc/PID/fd. Each of these, and ptrace, needs ptrace access
 * (proc(5), ptrace(2)): a process that is not dumpable refuses it to anyone without
 * CAP_SYS_PTRACE. `peek PID` tries all four, one line each. */
static int peek_pid;

static int peek_environ(void) {
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/environ", peek_pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return blocked(errno, "open %s", path);
    ssize_t n = read(fd, text, sizeof text);
    if (n < 0)
        return blocked(errno, "read %s", path);
    return escaped("read %zd bytes of %s", n, path);
}

static int peek_exe(void) {
    char path[64], target[512];
    snprintf(path, sizeof path, "/proc/%d/exe", peek_pid);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0)
        return blocked(errno, "readlink %s", path);
    target[n] = 0;
    return escaped("%s -> %s", path, target);
}

/* Listing the names takes only the directory's mode; what each descriptor is (readlink) takes
 * ptrace access. */
static int peek_fds(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", peek_pid);
    DIR *dir = opendir(path);
    if (!dir)
        return blocked(errno, "opendir %s", path);
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.')
            continue;
        char link[320], target[256];
        snprintf(link, sizeof link, "%s/%s", path, entry->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n < 0)
            return blocked(errno, "readlink %s", link);
        target[n] = 0;
        return escaped("%s -> %s", link, target);
    }
    return blocked(0, "%s lists no descriptor", path);
}

static int peek_ptrace(void) {
    if (ptrace(PTRACE_SEIZE, peek_pid, 0, 0) < 0)
        return blocked(errno, "ptrace(PTRACE_SEIZE, %d)", peek_pid);
    return escaped("attached to PID %d with ptrace", peek_pid);
}

/* `where PID`: is PID where the container's PID 1 is? For each namespace, and for its cgroup
 * (/proc/PID/cgroup, as this cgroup namespace shows it), "same" or "OTHER" with both values.
 * Reading another process's ns links takes ptrace access (proc(5)): CAP_SYS_PTRACE for one
 * that is not dumpable. */
static int where(int pid) {
    static const char *const KINDS[] = {"mnt", "uts", "ipc", "net", "cgroup", "pid"};
    char theirs[4096], ours[4096], path[64];
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++) {
        ssize_t n, m;
        snprintf(path, sizeof path, "/proc/%d/ns/%s", pid, KINDS[i]);
        if ((n = readlink(path, theirs, sizeof theirs - 1)) < 0) {
            printf("%s: ", KINDS[i]);
            blocked(errno, "readlink %s", path);
            continue;
        }
        snprintf(path, sizeof path, "/proc/1/ns/%s", KINDS[i]);
        m = readlink(path, ours, sizeof ours - 1);
        theirs[n] = 0;
        ours[m < 0 ? 0 : m] = 0;
        printf("%s: %s %s (PID 1: %s)\n", KINDS[i], strcmp(theirs, ours) ? "OTHER" : "same", theirs, ours);
    }
    for (int which = 0; which < 2; which++) {
        snprintf(path, sizeof path, "/proc/%d/cgroup", which ? 1 : pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd < 0 ? -1 : read(fd, which ? ours : theirs, sizeof theirs - 1);
        (which ? ours : theirs)[n < 0 ? 0 : n] = 0;
        if (fd >= 0)
            close(fd);
    }
    for (char *c = theirs; *c; c++)
        if (*c == '\n') *c = ' ';
    for (char *c = ours; *c; c++)
        if (*c == '\n') *c = ' ';
    printf("cgroup-of: %s %s (PID 1: %s)\n", strcmp(theirs, ours) ? "OTHER" : "same", theirs, ours);
    return 0;
}

/* The process's own dumpable flag (prctl(2), PR_GET_DUMPABLE): 1 for an ordinary program. */
static int probe_dumpable(void) {
    printf("dumpable=%d\n", prctl(PR_GET_DUMPABLE));
    return 0;
}

/* --- 5. For the store route: who a set-user-ID copy of this program runs as ----------------- */
static int probe_ids(void) {
    printf("uid=%u euid=%u\n", getuid(), geteuid());
    return 0;
}

/* --- the command line -------------------------------------------------------------------------- */

static int run_in_child(int (*probe)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        _exit(probe());
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 3;
}

static int cgroupfs_freezer(void) { return probe_cgroupfs("freezer"); }
static int cgroupfs_v2(void) { return probe_cgroupfs("cgroup2"); }
/* A loop device of the host (devices.txt: block major 7); tests bind one to a file first. */
static int block_device(void) { return probe_device('b', 7, 0, "r", NULL); }
static int kvm(void) { return probe_device('c', 10, 232, "rw", NULL); }
static int loop_control(void) { return probe_device('c', 10, 237, "rw", NULL); }
static int console(void) { return probe_device('c', 5, 1, "w", NULL); }
static int tty1(void) { return probe_device('c', 4, 1, "w", NULL); }
static int kmsg_open(void) { return probe_device('c', 1, 11, "w", NULL); }

static const struct { const char *name; int (*probe)(void); } ALL[] = {
    {"fds", probe_fds},
    {"block-7:0", block_device}, {"kmsg-1:11", kmsg_open}, {"kvm-10:232", kvm},
    {"loop-control-10:237", loop_control}, {"console-5:1", console}, {"tty1-4:1", tty1},
    {"cgroupfs-freezer", cgroupfs_freezer}, {"cgroupfs-cgroup2", cgroupfs_v2},
    {"cgroup-limit", probe_cgroup_limit},
    {"keyring", probe_keyring}, {"userns", probe_userns}, {"bpf", probe_bpf},
    {"perf", probe_perf}, {"userfaultfd", probe_userfaultfd}, {"io_uring", probe_io_uring},
};

/* Only telling under `--init`, when PID 1 is the runtime's init and not our own parent. */
static const struct { const char *name; int (*probe)(void); } INIT[] = {
    {"pid1-fds", probe_pid1_fds}, {"ptrace1", probe_ptrace1}, {"exe1", probe_exe1},
};

/* The host's own PID namespace has a fixed inode number (PROC_PID_INIT_INO, 0xEFFFFFFC): the
 * routes are for containers, where some of them would otherwise write to the host's cgroups.
 * A VM guest's first PID namespace has the same number, but its kernel is not the host's:
 * ESCAPE_PROBE_IN_A_VM=1 says so (docs/security.md runs the probe in a minivm guest). */
static int on_the_host(void) {
    char own[64] = "";
    readlink("/proc/self/ns/pid", own, sizeof own - 1);
    return strcmp(own, "pid:[4026531836]") == 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *command = argc > 1 ? argv[1] : "";
    if (strcmp(command, "ids") == 0)
        return probe_ids();
    if (on_the_host() && !getenv("ESCAPE_PROBE_IN_A_VM")) {     /* a guest's kernel is its own */
        fprintf(stderr, "escape_probe: this is the host's PID namespace: run me in a container\n");
        return 2;
    }
    if (strcmp(command, "all") == 0) {
        for (size_t i = 0; i < sizeof ALL / sizeof ALL[0]; i++) {
            printf("%s: ", ALL[i].name);
            run_in_child(ALL[i].probe);
        }
        return 0;
    }
    if (strcmp(command, "init") == 0) {
        for (size_t i = 0; i < sizeof INIT / sizeof INIT[0]; i++) {
            printf("%s: ", INIT[i].name);
            run_in_child(INIT[i].probe);
        }
        return 0;
    }
    for (size_t i = 0; i < sizeof INIT / sizeof INIT[0]; i++)
        if (strcmp(command, INIT[i].name) == 0 && argc == 2)
            return run_in_child(INIT[i].probe);
    if (strcmp(command, "device") == 0 && argc >= 6)
        return probe_device(argv[2][0], strtoul(argv[3], 0, 0), strtoul(argv[4], 0, 0), argv[5],
                            argc > 6 ? argv[6] : NULL);
    if (strcmp(command, "cgroupfs") == 0 && argc == 3)
        return probe_cgroupfs(argv[2]);
    if (strcmp(command, "where") == 0 && argc == 3)
        return where(atoi(argv[2]));
    if (strcmp(command, "dumpable") == 0)
        return probe_dumpable();
    if (strcmp(command, "peek") == 0 && argc == 3) {
        static const struct { const char *name; int (*probe)(void); } PEEK[] = {
            {"environ", peek_environ}, {"exe", peek_exe}, {"fds", peek_fds}, {"ptrace", peek_ptrace},
        };
        peek_pid = atoi(argv[2]);
        for (size_t i = 0; i < sizeof PEEK / sizeof PEEK[0]; i++) {
            printf("%s: ", PEEK[i].name);
            run_in_child(PEEK[i].probe);
        }
        return 0;
    }
    if (strcmp(command, "environ1") == 0 && argc == 3)
        return probe_environ1(argv[2]);
    for (size_t i = 0; i < sizeof ALL / sizeof ALL[0]; i++)
        if (strcmp(command, ALL[i].name) == 0 && argc == 2)
            return run_in_child(ALL[i].probe);
    fprintf(stderr, "usage: escape_probe all | init | ids | device b|c MAJOR MINOR r|w|rw [TEXT] | "
                    "cgroupfs freezer|cgroup2|memory | environ1 NAME | peek PID | where PID | dumpable | ROUTE\n  ROUTE:");
    for (size_t i = 0; i < sizeof ALL / sizeof ALL[0]; i++)
        fprintf(stderr, " %s", ALL[i].name);
    fprintf(stderr, "\n");
    return 2;
}
