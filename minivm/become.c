/* become: the last step of the guest init, from its own tools to the image's app.
 *
 *     become [-r ROOT] [-u UID:GID:GROUP[,GROUP...]] [-w DIR] COMMAND [ARG...]
 *
 * What minirun's container child does from Python just before exec (minirun/container.py), for
 * a guest that has no Python:
 *   -r  enter the image's root: a mount namespace of its own, ROOT moved over / and made the
 *       root with chroot, as switch_root(8) does for a whole system (the initramfs is the
 *       kernel's rootfs, which pivot_root(2) refuses to move);
 *   -w  go to the working directory, made (as root) if missing, as Docker does;
 *   -u  switch user, in the order capabilities(7) forces: setgroups and setgid need CAP_SETGID,
 *       which setuid to a non-zero UID takes away (busybox, as Debian builds it, cannot switch
 *       to numeric IDs);
 * then exec COMMAND, found on the PATH of the app's environment by the rule minirun uses
 * (Python's os.execvpe): a name with a slash is run as is; else each directory of PATH is
 * tried in order and the first that execs wins; if none does, the first error that is not
 * "no such file" (such as EACCES) is the one reported. No shell is tried for a file without a
 * #! line, unlike glibc's execvp(3). This is the point of the program: the guest init's busybox
 * runs its own applets before it looks at PATH, so `env ls` would run busybox's ls.
 *
 * Exit status when the command cannot run, as Docker has it: 127 if it does not exist, 126 if it
 * cannot be executed; 125 if a step before it failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_GROUPS 64
#define DEFAULT_PATH "/bin:/usr/bin"    /* with no PATH at all: Python's os.defpath */

static int fail(const char *step)
{
    fprintf(stderr, "become: %s: %s\n", step, strerror(errno));
    return 125;
}

static int enter_root(const char *root)
{
    if (unshare(CLONE_NEWNS) != 0)      /* the init keeps its own view of the mounts */
        return fail("unshare(CLONE_NEWNS)");
    if (chdir(root) != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 ||
        chdir("/") != 0)
        return fail(root);
    return 0;
}

static int switch_user(char *spec)
{
    char *uid = strtok(spec, ":"), *gid = strtok(NULL, ":"), *list = strtok(NULL, ":");
    gid_t groups[MAX_GROUPS];
    int count = 0;
    if (!uid || !gid || !list) {
        errno = EINVAL;
        return fail("-u UID:GID:GROUPS");
    }
    for (char *id = strtok(list, ","); id && count < MAX_GROUPS; id = strtok(NULL, ","))
        groups[count++] = (gid_t)strtoul(id, NULL, 10);
    if (setgroups(count, groups) != 0 || setgid((gid_t)strtoul(gid, NULL, 10)) != 0 ||
        setuid((uid_t)strtoul(uid, NULL, 10)) != 0)
        return fail("switching user");
    return 0;
}

static int enter_workdir(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return fail(dir);
    }
    for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';                  /* mkdir -p, one component at a time */
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return fail(path);
        *slash = '/';
    }
    return chdir(dir) == 0 ? 0 : fail(dir);
}

static int run(char **argv)
{
    const char *path = getenv("PATH");
    int saved = 0;
    if (strchr(argv[0], '/')) {
        execv(argv[0], argv);
        saved = errno;
    } else {
        char *dirs = strdup(path ? path : DEFAULT_PATH), candidate[PATH_MAX];
        for (char *dir = dirs, *next; dir; dir = next) {
            if ((next = strchr(dir, ':')))
                *next++ = '\0';
            snprintf(candidate, sizeof candidate, "%s/%s", *dir ? dir : ".", argv[0]);
            execv(candidate, argv);
            if (errno != ENOENT && errno != ENOTDIR && !saved)
                saved = errno;
        }
        if (!saved)
            saved = ENOENT;
    }
    if (saved == ENOENT)    /* the same lines as minirun's (container.py), the VM for the container */
        fprintf(stderr, "minivm: '%s' not found in the VM (PATH=%s): check the command and "
                "the image\n", argv[0], path ? path : "");
    else
        fprintf(stderr, "minivm: '%s' cannot be executed in the VM: %s\n", argv[0],
                strerror(saved));
    return saved == ENOENT ? 127 : 126;
}

int main(int argc, char **argv)
{
    int option, status;
    char *root = NULL, *user = NULL, *workdir = NULL;
    while ((option = getopt(argc, argv, "+r:u:w:")) != -1) {
        switch (option) {
        case 'r': root = optarg; break;
        case 'u': user = optarg; break;
        case 'w': workdir = optarg; break;
        default: return 125;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "usage: become [-r ROOT] [-u UID:GID:GROUPS] [-w DIR] COMMAND [ARG...]\n");
        return 125;
    }
    if ((root && (status = enter_root(root))) || (workdir && (status = enter_workdir(workdir))) ||
        (user && (status = switch_user(user))))
        return status;
    return run(argv + optind);
}
