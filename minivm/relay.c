/* relay: the guest's half of `minivm exec` (minivm/agent.py): run one command and stream its
 * output to the host while it runs.
 *
 *     relay COMMAND [ARG...]        stdin and stdout: the agent's virtio-serial port
 *
 * The command runs in a session of its own, its stdin /dev/null, its stdout and its stderr two
 * pipes. The relay waits on four things at once with poll(2): the two pipes, the port, and the
 * command's exit, which a pidfd makes a file descriptor like the others (pidfd_open(2): it turns
 * readable when the process ends). Whatever a pipe gives is written to the port at once as one
 * frame, a line saying which stream and how many bytes, then the bytes:
 *
 *     "o LEN\n" and LEN bytes of stdout        "e LEN\n" and LEN bytes of stderr
 *     "x STATUS\n"   last: the command has ended and all of its output is sent
 *
 * A frame is one read(2) of a pipe, at most BUFFER_SIZE bytes (the host checks that bound,
 * agent.FRAME_LIMIT), so the relay holds one buffer, whatever the command writes: when the host
 * reads slowly, the writes to the port block, the pipes fill, and the command's own writes
 * block, as in a pipeline. STATUS is the command's exit code, or 128+N if signal N killed it.
 *
 * When the command has ended, what it left running in its session is killed, and the exec ends
 * once the pipes are at their end: a process that left the session (setsid) with the pipes open
 * holds the exec until it closes them, as a background process does an ssh command's.
 *
 * During an exec the host writes to the port only to hang up: one newline, when the client of
 * `minivm exec` has gone (Ctrl-C, `| head -1`, killed). Then the command and its session are
 * killed with SIGKILL, the pipes closed unread, and "x STATUS" ends the exec as always: the
 * agent is free for the next one. A newline that comes after the end is an empty request line,
 * which the agent skips.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUFFER_SIZE 65536       /* a pipe's whole capacity by default (pipe(7)) */
#define PORT_IN 0
#define PORT_OUT 1

static int write_all(const char *data, size_t size)
{
    while (size > 0) {
        ssize_t written = write(PORT_OUT, data, size);
        if (written < 0 && errno == EINTR)
            continue;
        if (written < 0)
            return -1;
        data += written;
        size -= (size_t)written;
    }
    return 0;
}

static int frame(char kind, const char *data, size_t size)
{
    char header[32];
    int length = snprintf(header, sizeof header, "%c %zu\n", kind, size);
    return write_all(header, (size_t)length) || write_all(data, size) ? -1 : 0;
}

static int fail(const char *step)        /* the relay itself failed: 125, as Docker has it */
{
    char message[256];
    int length = snprintf(message, sizeof message, "minivm: the guest's relay could not run the "
                          "command (%s: %s)\n", step, strerror(errno));
    frame('e', message, (size_t)length);
    dprintf(PORT_OUT, "x 125\n");
    return 125;
}

static void kill_session(pid_t command)
{
    kill(command, SIGKILL);     /* first the command: a killed process starts nothing more */
    kill(-command, SIGKILL);    /* then what it started, all in its session's process group */
}

static void stop_watching(struct pollfd *watch)
{
    if (watch->fd > PORT_OUT)   /* not the port: the agent reads its next request there */
        close(watch->fd);
    watch->fd = -1;             /* poll(2) skips a negative descriptor */
    watch->revents = 0;
}

int main(int argc, char **argv)
{
    static char buffer[BUFFER_SIZE];
    int out[2], err[2], null, pidfd, status = 0;
    pid_t command;
    if (argc < 2) {
        fprintf(stderr, "usage: relay PROGRAM [ARG...]   (PROGRAM: a path)\n");
        return 125;
    }
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0)
        return fail("pipe2");
    if ((null = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
        return fail("/dev/null");
    if ((command = fork()) < 0)
        return fail("fork");
    if (command == 0) {
        /* dup2 clears close-on-exec on the copies: the command gets these three, no more */
        if (setsid() < 0 || dup2(null, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0 ||
            close_range(3, ~0U, 0) != 0)
            _exit(125);
        execv(argv[1], argv + 1);
        dprintf(2, "minivm: the guest's relay cannot run %s: %s\n", argv[1], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    close(out[1]);      /* the pipes end when the command's side (and its children's) closes */
    close(err[1]);
    close(null);
    if ((pidfd = (int)syscall(SYS_pidfd_open, command, 0)) < 0) {
        kill_session(command);
        return fail("pidfd_open");
    }
    struct pollfd watched[] = {
        {.fd = PORT_IN, .events = POLLIN}, {.fd = out[0], .events = POLLIN},
        {.fd = err[0], .events = POLLIN}, {.fd = pidfd, .events = POLLIN},
    };
    const char kinds[] = {0, 'o', 'e'};
    while (watched[1].fd >= 0 || watched[2].fd >= 0 || watched[3].fd >= 0) {
        if (poll(watched, 4, -1) < 0) {
            kill_session(command);
            return fail("poll");
        }
        if (watched[0].revents) {           /* the host hangs up: its client has gone */
            if (watched[0].revents & POLLIN)
                (void)!read(PORT_IN, buffer, 1);
            kill_session(command);
            for (int i = 0; i <= 2; i++)
                stop_watching(&watched[i]);
        }
        for (int i = 1; i <= 2; i++) {
            if (!watched[i].revents)
                continue;
            ssize_t got = read(watched[i].fd, buffer, sizeof buffer);
            if (got <= 0)
                stop_watching(&watched[i]);
            else if (frame(kinds[i], buffer, (size_t)got) != 0) {
                kill_session(command);      /* the port is gone: no one to tell */
                return 125;
            }
        }
        if (watched[3].revents) {           /* the command has ended */
            waitpid(command, &status, 0);
            kill(-command, SIGKILL);        /* what it left running in its session */
            stop_watching(&watched[3]);
        }
    }
    dprintf(PORT_OUT, "x %d\n", WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
    return 0;
}
