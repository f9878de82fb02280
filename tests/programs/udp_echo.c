/* A UDP echo server (port 7 is echo's, RFC 862) for tests/test_minivm_network_user.py: the
 * guest's busybox has no UDP server (its nc has no -u). `udp_echo PORT` binds every address,
 * says "listening" on stdout, then answers each datagram to its sender with "echo to ADDRESS:
 * " and the datagram: ADDRESS is the sender as the guest sees it. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: udp_echo PORT\n");
        return 2;
    }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        perror("udp_echo");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        char datagram[2048], reply[2100];
        struct sockaddr_in peer;
        socklen_t size = sizeof peer;
        ssize_t got = recvfrom(fd, datagram, sizeof datagram, 0, (struct sockaddr *)&peer, &size);
        if (got < 0) {
            perror("udp_echo");
            return 1;
        }
        int length = snprintf(reply, sizeof reply, "echo to %s: %.*s", inet_ntoa(peer.sin_addr),
                              (int)got, datagram);
        sendto(fd, reply, length, 0, (struct sockaddr *)&peer, size);
    }
}
