/* trace_load: a closed-loop HTTP/1.1 keep-alive load generator that records every request.
 *
 *   trace_load PORT CONNECTIONS SECONDS MAX_RECORDS OUTFILE
 *
 * Loopback only (127.0.0.1:PORT). CONNECTIONS connections each send `GET /`, wait for the whole
 * response (Content-Length), then send the next, like wrk. A response with `Connection: close`
 * or a connection the server closes makes the connection reconnect. Runs SECONDS seconds, then
 * writes one line per request to OUTFILE (at most MAX_RECORDS; later requests are counted, not
 * recorded):
 *
 *   start_ns latency_ns connection worker_pid flags
 *
 * start_ns is CLOCK_MONOTONIC (the clock of Python's time.monotonic()) when the request was
 * written, as wrk measures: a new connection's first request is timed from when it is written
 * after connect() completed, so a connection waiting in the listener's accept queue counts.
 * worker_pid is the response's X-Worker header (0 if none). flags: 1 first request of its
 * connection, 2 the response said Connection: close, 4 failed (the connection closed or
 * errored with the request unanswered; latency is then the time until that). The last line,
 * "# sent N answered N failed N connects N unrecorded N", sums it up.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 8192
#define MAX_CONNECTIONS 4096

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

struct rec { uint64_t start, latency; uint32_t conn, pid, flags; };

struct conn {
    int fd, connecting, first, pending;
    uint64_t sent_at;
    size_t len;
    char buf[BUF];
};

static struct conn conns[MAX_CONNECTIONS];
static struct rec *recs;
static size_t nrecs, max_recs;
static uint64_t sent, answered, failed, connects, unrecorded;
static int epfd, port;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void record(int i, uint64_t latency, uint32_t pid, uint32_t flags) {
    if (nrecs < max_recs) {
        struct rec *r = &recs[nrecs++];
        r->start = conns[i].sent_at; r->latency = latency; r->conn = i; r->pid = pid;
        r->flags = flags;
    } else {
        unrecorded++;
    }
}

static void open_conn(int i) {
    struct conn *c = &conns[i];
    struct sockaddr_in addr = {0};
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { perror("socket"); exit(1); }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->len = 0; c->first = 1; c->pending = 0;
    connects++;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        perror("connect"); exit(1);
    }
    c->connecting = 1;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void send_request(int i) {
    struct conn *c = &conns[i];
    c->sent_at = now_ns();
    ssize_t n = write(c->fd, REQUEST, sizeof REQUEST - 1);
    c->pending = 1;
    sent++;
    if (n != (ssize_t)(sizeof REQUEST - 1)) c->pending = 2;  /* fails on the next read */
}

static void reconnect(int i) {
    close(conns[i].fd);
    open_conn(i);
}

static void fail(int i) {
    struct conn *c = &conns[i];
    if (c->pending) {
        record(i, now_ns() - c->sent_at, 0, (c->first ? 1 : 0) | 4);
        failed++;
    }
    reconnect(i);
}

/* A complete response in c->buf? Returns its length (0: not yet, -1: malformed). */
static long parse(struct conn *c, uint32_t *pid, int *close_after) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return c->len >= BUF ? -1 : 0;
    size_t head = end - c->buf + 4;
    long body = 0;
    *pid = 0; *close_after = 0;
    for (char *line = c->buf; line < end; ) {
        char *eol = memmem(line, end + 2 - line, "\r\n", 2);
        if (!eol) break;
        if (!strncasecmp(line, "content-length:", 15)) body = strtol(line + 15, NULL, 10);
        else if (!strncasecmp(line, "x-worker:", 9)) *pid = strtoul(line + 9, NULL, 10);
        else if (!strncasecmp(line, "connection:", 11) && memmem(line, eol - line, "close", 5))
            *close_after = 1;
        line = eol + 2;
    }
    if (head + body > BUF) return -1;
    return c->len >= head + body ? (long)(head + body) : 0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT CONNECTIONS SECONDS MAX_RECORDS OUTFILE\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    int n = atoi(argv[2]);
    double seconds = atof(argv[3]);
    max_recs = strtoul(argv[4], NULL, 10);
    if (n < 1 || n > MAX_CONNECTIONS || seconds <= 0 || seconds > 600 || max_recs < 1
            || max_recs > 50000000) {
        fprintf(stderr, "bad arguments (1..%d connections, 0..600 s, 1..5e7 records)\n",
                MAX_CONNECTIONS);
        return 2;
    }
    recs = calloc(max_recs, sizeof *recs);
    if (!recs) { perror("calloc"); return 1; }
    epfd = epoll_create1(0);
    for (int i = 0; i < n; i++) open_conn(i);
    uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
    struct epoll_event events[256];
    while (now_ns() < end) {
        int k = epoll_wait(epfd, events, 256, 10);
        for (int e = 0; e < k; e++) {
            int i = events[e].data.u32;
            struct conn *c = &conns[i];
            if (c->connecting) {
                int err = 0; socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || (events[e].events & (EPOLLERR | EPOLLHUP))) { fail(i); continue; }
                c->connecting = 0;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                send_request(i);
                continue;
            }
            ssize_t got = read(c->fd, c->buf + c->len, BUF - c->len);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                fail(i);
                continue;
            }
            c->len += got;
            uint32_t pid; int close_after;
            long size = parse(c, &pid, &close_after);
            if (size < 0) { fail(i); continue; }
            if (size == 0) continue;
            record(i, now_ns() - c->sent_at, pid, (c->first ? 1 : 0) | (close_after ? 2 : 0));
            answered++;
            c->pending = 0; c->first = 0;
            memmove(c->buf, c->buf + size, c->len - size);
            c->len -= size;
            if (close_after) reconnect(i);
            else send_request(i);
        }
    }
    FILE *out = fopen(argv[5], "w");
    if (!out) { perror(argv[5]); return 1; }
    for (size_t r = 0; r < nrecs; r++)
        fprintf(out, "%llu %llu %u %u %u\n", (unsigned long long)recs[r].start,
                (unsigned long long)recs[r].latency, recs[r].conn, recs[r].pid, recs[r].flags);
    fprintf(out, "# sent %llu answered %llu failed %llu connects %llu unrecorded %llu\n",
            (unsigned long long)sent, (unsigned long long)answered,
            (unsigned long long)failed, (unsigned long long)connects,
            (unsigned long long)unrecorded);
    fclose(out);
    return 0;
}
