/*
 * Try system calls that busybox cannot make, and say how each one went: for tests/test_seccomp.py.
 *
 * Usage: seccomp_probe CALL...    prints "CALL ok VALUE" or "CALL ERRNO_NAME", a line each.
 *        seccomp_probe nr N...    makes raw call number N with all-zero arguments.
 *
 * Each call is chosen so that, without the filter, it succeeds or fails with an errno other than
 * EPERM: the filter's EPERM is then its own, not the kernel's "no capability" (mount, for one,
 * is given a target that does not exist, which the kernel finds out before it asks for
 * CAP_SYS_ADMIN). A call from another ABI (x32, int80) under the filter kills the probe (SIGSYS).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#define X32_SYSCALL_BIT 0x40000000
#define I386_GETPID 20              /* arch/x86/entry/syscalls/syscall_32.tbl */
#define NR_OPEN_TREE_ATTR 467       /* Linux 6.15; newer than this libc's headers */

/* A child made by a raw clone or clone3 (no new stack: it runs on a copy of ours, as after
 * fork) exits at once; the parent reaps it. Returns what the call returned. */
static long reap(long pid)
{
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid(pid, NULL, __WALL);
    return pid;
}

static void *thread_body(void *arg) { return arg; }

static long try(const char *call)
{
    if (!strcmp(call, "keyctl"))            /* KEYCTL_GET_KEYRING_ID of KEY_SPEC_USER_KEYRING */
        return syscall(SYS_keyctl, 0, -4, 1);
    if (!strcmp(call, "unshare"))
        return unshare(CLONE_NEWUSER);
    if (!strcmp(call, "mount"))
        return mount("none", "/no/such/dir", "tmpfs", 0, NULL);
    if (!strcmp(call, "bpf"))               /* an unknown command: EINVAL without the filter */
        return syscall(SYS_bpf, 10000, NULL, 0);
    if (!strcmp(call, "perf_event_open"))   /* no attributes: EFAULT without the filter */
        return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    if (!strcmp(call, "userfaultfd"))       /* user-mode-only faults need no privilege */
        return syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    if (!strcmp(call, "io_uring_setup")) {
        struct io_uring_params params;
        memset(&params, 0, sizeof params);
        return syscall(SYS_io_uring_setup, 1, &params);
    }
    if (!strcmp(call, "clone"))             /* as fork, plus a new user namespace */
        return reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, NULL, NULL, 0));
    if (!strcmp(call, "fork"))              /* the same without it: what every fork does */
        return reap(syscall(SYS_clone, SIGCHLD, 0, NULL, NULL, 0));
    if (!strcmp(call, "clone3")) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.exit_signal = SIGCHLD;
        return reap(syscall(SYS_clone3, &args, sizeof args));
    }
    if (!strcmp(call, "thread")) {          /* glibc tries clone3 first, then falls back to clone */
        pthread_t thread;
        int error = pthread_create(&thread, NULL, thread_body, NULL);
        if (error) {
            errno = error;
            return -1;
        }
        return pthread_join(thread, NULL);
    }
    if (!strcmp(call, "personality"))       /* ADDR_NO_RANDOMIZE: what `setarch -R` asks for */
        return personality(ADDR_NO_RANDOMIZE);
    if (!strcmp(call, "vsock"))
        return socket(AF_VSOCK, SOCK_STREAM, 0);
    if (!strcmp(call, "open_tree_attr"))    /* an empty path: ENOENT without the filter */
        return syscall(NR_OPEN_TREE_ATTR, -1, "", 0, NULL, 0);
    if (!strcmp(call, "x32"))               /* getpid through the x32 ABI */
        return syscall(X32_SYSCALL_BIT | SYS_getpid);
    if (!strcmp(call, "int80")) {           /* getpid through the i386 ABI */
        long result;
        __asm__ volatile ("int $0x80" : "=a"(result) : "a"(I386_GETPID) : "memory");
        if (result < 0) {
            errno = -result;
            return -1;
        }
        return result;
    }
    fprintf(stderr, "seccomp_probe: unknown call %s\n", call);
    exit(2);
}

static void report(const char *call, long result)
{
    if (result == -1)
        printf("%s %s\n", call, strerrorname_np(errno));
    else
        printf("%s ok %ld\n", call, result);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);       /* every line out before a call that may kill us */
    if (argc > 2 && !strcmp(argv[1], "nr")) {
        for (int i = 2; i < argc; i++) {
            errno = 0;
            report(argv[i], syscall(atol(argv[i]), 0, 0, 0, 0, 0, 0));
        }
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        errno = 0;
        report(argv[i], try(argv[i]));
    }
    return 0;
}
