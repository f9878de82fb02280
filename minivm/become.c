/* become: run a command as another user, inside a minivm guest.
 *
 *     become UID GID GROUP[,GROUP...] COMMAND [ARG...]
 *
 * What minirun does from Python just before exec (minirun/security.py), for a guest that has
 * no Python, and whose busybox (as Debian builds it) cannot switch to numeric IDs. The order
 * is forced (capabilities(7)): setgroups and setgid need CAP_SETGID, which setuid to a
 * non-zero UID takes away. Exit status when the command cannot run, as env(1) has it: 127 if
 * it does not exist, 126 if it cannot be executed; 125 if the switch itself failed.
 */
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_GROUPS 64

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: become UID GID GROUP[,GROUP...] COMMAND [ARG...]\n");
        return 125;
    }
    gid_t groups[MAX_GROUPS];
    int count = 0;
    for (char *id = strtok(argv[3], ","); id && count < MAX_GROUPS; id = strtok(NULL, ","))
        groups[count++] = (gid_t)strtoul(id, NULL, 10);
    if (setgroups(count, groups) != 0 || setgid((gid_t)strtoul(argv[2], NULL, 10)) != 0 ||
        setuid((uid_t)strtoul(argv[1], NULL, 10)) != 0) {
        perror("become: switching user");
        return 125;
    }
    execvp(argv[4], argv + 4);          /* searches the PATH of the app's environment */
    int error = errno;
    fprintf(stderr, "become: %s: %s\n", argv[4], strerror(error));
    return error == ENOENT ? 127 : 126;
}
