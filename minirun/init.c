/* init: PID 1 of a container started with `minirun run --init`, as tini is for `docker run --init`.
 *
 *     /dev/init -- COMMAND [ARG...]
 *
 * A process that happens to be PID 1 of a PID namespace has two jobs it may not know about: the
 * kernel hands it every orphaned process to reap (or they stay zombies), and it ignores every
 * signal it has no handler for, so a plain `sleep` as PID 1 shrugs off Ctrl-C (pid_namespaces(7)).
 * This init forks COMMAND, passes every signal on to it, reaps every child, and exits with
 * COMMAND's status (128 + N if signal N killed it).
 *
 * Why C and not Python: this process lives inside the container for the container's whole life,
 * so everything about it is the container's to see. A forked Python runtime would show the host's
 * interpreter as /proc/1/exe, the caller's environment in /proc/1/environ and the host's command
 * line in `ps`. This program is exec'd from a file bind-mounted into the container, with the
 * container's environment, and holds nothing else: minirun closes every other descriptor first.
 *
 * If COMMAND cannot be exec'd, the reason goes to descriptor 3 (when minirun left it open: its
 * report pipe, closed on exec) as "exec ERRNO", so minirun prints the same line as without --init.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define REPORT_FD 3

/* Signals the kernel sends a process for its own fault: blocking them would hide the fault. */
static const int synchronous[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS};

int main(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "--") != 0) {
        fprintf(stderr, "usage: init -- COMMAND [ARG...]\n");
        return 125;
    }
    /* Not dumpable: no process of the container, root or not, may ptrace this one or read its
     * memory without CAP_SYS_PTRACE, which a container does not have (ptrace(2), "Ptrace access
     * mode checking"; PR_SET_DUMPABLE in prctl(2)). */
    prctl(PR_SET_DUMPABLE, 0);

    /* Every signal waits, blocked, until sigwaitinfo() below takes it: none can be lost between
     * two checks (the same reasoning as minirun/signals.py). Dispositions start from the
     * default, as minirun's Python ignored SIGPIPE and exec keeps what was ignored. */
    sigset_t waited, none;
    sigfillset(&waited);
    sigemptyset(&none);
    for (size_t i = 0; i < sizeof synchronous / sizeof *synchronous; i++)
        sigdelset(&waited, synchronous[i]);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &waited, NULL);
    fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC);  /* COMMAND's exec closes it: that is the report */

    pid_t command = fork();
    if (command < 0) {
        perror("init: fork");
        return 125;
    }
    if (command == 0) {
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvp(argv[2], argv + 2);          /* searches the container's PATH */
        dprintf(REPORT_FD, "exec %d", errno);
        _exit(errno == ENOENT ? 127 : 126);
    }
    close(REPORT_FD);                       /* its end-of-file must come from COMMAND's exec */

    for (;;) {
        int sig = sigwaitinfo(&waited, NULL);
        if (sig < 0)
            continue;                       /* EINTR */
        if (sig != SIGCHLD) {
            kill(command, sig);             /* pass it on: Ctrl-C, a `minirun stop`, ... */
            continue;
        }
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {   /* orphans too */
            if (pid == command)
                return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        }
    }
}
