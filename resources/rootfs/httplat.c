/* httplat: request latency of an HTTP server from the test guest (busybox has no such
 * tool), linked static into the guest's ext4 image by tools/guest/build-rootfs.sh.
 *
 *   httplat ADDR PORT PATH N    N sequential GETs of PATH, each on a new TCP connection
 *                               (as curl and EC2's clients do), timed from connect to the
 *                               whole answer; prints
 *   HTTPLAT n=N ok=K p50_us=.. p99_us=.. max_us=..
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* One request: 1 if the answer was a whole 200 (its head, then Content-Length bytes; a
 * server need not close the connection, whatever the request said), else 0. */
static int get(const struct sockaddr_in *a, const char *req, size_t len) {
    char buf[8192];
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return 0;
    int ok = 0;
    if (connect(s, (const struct sockaddr *)a, sizeof *a) == 0 &&
        write(s, req, len) == (ssize_t)len) {
        size_t have = 0;
        ssize_t n;
        long body = -1;
        char *end = NULL;
        while (have < sizeof buf - 1 && (n = read(s, buf + have, sizeof buf - 1 - have)) > 0) {
            have += (size_t)n;
            buf[have] = 0;
            if (!end && (end = strstr(buf, "\r\n\r\n"))) {
                char *cl = strcasestr(buf, "\r\ncontent-length:");
                body = cl && cl < end ? strtol(cl + 17, NULL, 10) : 0;
            }
            if (end && (long)(have - (size_t)(end + 4 - buf)) >= body) break;
        }
        ok = end && have >= 12 && !memcmp(buf, "HTTP/1.1 200", 12);
    }
    close(s);
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: httplat ADDR PORT PATH N\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
        fprintf(stderr, "httplat: bad address %s\n", argv[1]);
        return 2;
    }
    int n = atoi(argv[4]);
    if (n <= 0 || n > 1000000) {
        fprintf(stderr, "httplat: bad count %s\n", argv[4]);
        return 2;
    }
    char req[512];
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                       argv[3], argv[1]);
    if (len <= 0 || len >= (int)sizeof req) return 2;
    long long *t = calloc((size_t)n, sizeof *t);
    if (!t) return 1;
    int ok = 0;
    for (int i = 0; i < n; i++) {
        long long t0 = now_us();
        ok += get(&a, req, (size_t)len);
        t[i] = now_us() - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("HTTPLAT n=%d ok=%d p50_us=%lld p99_us=%lld max_us=%lld\n", n, ok, t[n / 2],
           t[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1], t[n - 1]);
    return ok == n ? 0 : 1;
}
