/* vsock: the test guest's AF_VSOCK tool (busybox has none), linked static into the
 * guest's root filesystem by tools/guest/build-rootfs.sh.
 *
 *   vsock listen PORT         accept one connection on PORT; copy stdin to it and it to
 *                             stdout until both ends are done
 *   vsock connect CID PORT    the same over a connection to CID:PORT
 *   vsock echo PORT           accept connections on PORT one after another, echoing each
 *                             until its peer closes; runs until killed
 *
 * The copy: stdin's end of file becomes shutdown(SHUT_WR) (the peer reads its end of
 * file); the copy ends when the peer's end of file has arrived and stdin is done. Exit
 * status 0, or 1 with a line on stderr.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int fail(const char *what) {
    fprintf(stderr, "vsock: %s: %s\n", what, strerror(errno));
    return 1;
}

static unsigned parse_u32(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || end == s || v > 0xffffffffUL) {
        fprintf(stderr, "vsock: bad %s %s\n", what, s);
        exit(2);
    }
    return (unsigned)v;
}

/* Writes all of buf to fd. */
static int write_all(int fd, const char *buf, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, (size_t)n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        n -= w;
    }
    return 0;
}

/* Copies in -> sock and sock -> out until the socket's end of file and in's. */
static int copy(int sock, int in, int out) {
    static char buf[64 * 1024];
    int in_open = 1, sock_open = 1;
    while (sock_open) {
        struct pollfd p[2] = {{sock, POLLIN, 0}, {in, POLLIN, 0}};
        if (poll(p, in_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR) continue;
            return fail("poll");
        }
        if (p[0].revents) {
            ssize_t n = read(sock, buf, sizeof buf);
            if (n < 0 && errno != EINTR) return fail("read from the connection");
            if (n == 0) sock_open = 0;
            if (n > 0 && write_all(out, buf, n) < 0) return fail("write to stdout");
        }
        if (in_open && p[1].revents) {
            ssize_t n = read(in, buf, sizeof buf);
            if (n < 0 && errno != EINTR) return fail("read stdin");
            if (n == 0) {
                in_open = 0;
                if (shutdown(sock, SHUT_WR) < 0 && errno != ENOTCONN) return fail("shutdown");
            }
            if (n > 0 && write_all(sock, buf, n) < 0) return fail("write to the connection");
        }
    }
    return 0;
}

static int listener(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) exit(fail("socket"));
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) exit(fail("bind"));
    if (listen(s, 16) < 0) exit(fail("listen"));
    return s;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "listen")) {
        int s = listener(parse_u32(argv[2], "port"));
        int c = accept(s, NULL, NULL);
        if (c < 0) return fail("accept");
        close(s);
        return copy(c, 0, 1);
    }
    if (argc == 4 && !strcmp(argv[1], "connect")) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0) return fail("socket");
        struct sockaddr_vm a = {.svm_family = AF_VSOCK,
                                .svm_cid = parse_u32(argv[2], "cid"),
                                .svm_port = parse_u32(argv[3], "port")};
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) return fail("connect");
        return copy(s, 0, 1);
    }
    if (argc == 3 && !strcmp(argv[1], "echo")) {
        int s = listener(parse_u32(argv[2], "port"));
        static char buf[64 * 1024];
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) {
                if (errno == EINTR) continue;
                return fail("accept");
            }
            for (;;) {
                ssize_t n = read(c, buf, sizeof buf);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0 || write_all(c, buf, n) < 0) break;
            }
            close(c);
        }
    }
    fprintf(stderr, "usage: vsock listen PORT | vsock connect CID PORT | vsock echo PORT\n");
    return 2;
}
