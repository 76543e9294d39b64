/*
 * wake_cost.c - what the kernel of this machine charges for the exchanges
 * a data-API miss is made of, without coredb, PostgreSQL or wrk: the floor
 * under coredb's CPU per miss (bench/engine.sh, issue 8).
 *
 * A miss is two request/answer exchanges over loopback TCP: coredb reads
 * the client's request and writes its ~9 KB answer, and in between writes
 * the statements to PostgreSQL and reads its ~9 KB result. Here a "server"
 * thread plays coredb's side of one such exchange against a "client"
 * thread, both waiting in epoll_wait as the event loops do, and the
 * server's own CPU time (CLOCK_THREAD_CPUTIME_ID) is divided by the
 * exchanges it served:
 *   - null syscall: getppid() in a loop, the price of entering the kernel;
 *   - 1 in flight: one connection, one request at a time, so every message
 *     wakes a thread that sleeps (a miss: the client waits for the answer,
 *     the loop waits for the next event);
 *   - 64 in flight: 64 connections, each with a request outstanding, so a
 *     wake finds many ready and the server rarely sleeps (a hit under wrk
 *     -c64: the loop is never idle).
 * Every loop is bounded in count and time (loopback only).
 *
 * Built and run by bench/wake_cost.sh; prints one line per measurement.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_BYTES 300
#define ANSWER_BYTES 9000
#define MAX_CONNS 64
#define MAX_SECONDS 10.0

typedef struct exchange {
    int nconns;
    long rounds;                   /* requests per connection */
    int server_fd[MAX_CONNS], client_fd[MAX_CONNS];
    double server_cpu_s, client_cpu_s, wall_s;
    long served, server_wakes;
} exchange;

static double now_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* Reads exactly len bytes from a blocking socket (the answer may come in pieces). */
static void read_all(int fd, char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n <= 0)
            die("read");
        buf += n;
        len -= (size_t)n;
    }
}

static int epoll_of(const int *fds, int n)
{
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) != 0)
            die("epoll_ctl");
    }
    return ep;
}

/* coredb's side: wait, read a request, write the answer; until every connection's rounds are served. */
static void *serve(void *arg)
{
    exchange *x = arg;
    static char req[REQUEST_BYTES], answer[ANSWER_BYTES];
    int ep = epoll_of(x->server_fd, x->nconns);
    long total = (long)x->nconns * x->rounds;
    double t0 = now_s(CLOCK_THREAD_CPUTIME_ID), deadline = now_s(CLOCK_MONOTONIC) + MAX_SECONDS;
    while (x->served < total && now_s(CLOCK_MONOTONIC) < deadline) {
        struct epoll_event evs[MAX_CONNS];
        int n = epoll_wait(ep, evs, MAX_CONNS, 1000);
        x->server_wakes++;
        for (int i = 0; i < n; i++) {
            int fd = x->server_fd[evs[i].data.u32];
            read_all(fd, req, sizeof req);
            if (write(fd, answer, sizeof answer) != (ssize_t)sizeof answer)
                die("write");
            x->served++;
        }
    }
    x->server_cpu_s = now_s(CLOCK_THREAD_CPUTIME_ID) - t0;
    close(ep);
    return NULL;
}

/* The peer: every connection keeps one request outstanding, and waits in epoll_wait for answers. */
static void *call(void *arg)
{
    exchange *x = arg;
    static char req[REQUEST_BYTES], answer[ANSWER_BYTES];
    long sent[MAX_CONNS] = {0}, answered = 0, total = (long)x->nconns * x->rounds;
    int ep = epoll_of(x->client_fd, x->nconns);
    double t0 = now_s(CLOCK_THREAD_CPUTIME_ID), deadline = now_s(CLOCK_MONOTONIC) + MAX_SECONDS;
    for (int i = 0; i < x->nconns; i++) {
        if (write(x->client_fd[i], req, sizeof req) != (ssize_t)sizeof req)
            die("write");
        sent[i] = 1;
    }
    while (answered < total && now_s(CLOCK_MONOTONIC) < deadline) {
        struct epoll_event evs[MAX_CONNS];
        int n = epoll_wait(ep, evs, MAX_CONNS, 1000);
        for (int i = 0; i < n; i++) {
            int c = (int)evs[i].data.u32;
            read_all(x->client_fd[c], answer, sizeof answer);
            answered++;
            if (sent[c] < x->rounds) {
                if (write(x->client_fd[c], req, sizeof req) != (ssize_t)sizeof req)
                    die("write");
                sent[c]++;
            }
        }
    }
    x->client_cpu_s = now_s(CLOCK_THREAD_CPUTIME_ID) - t0;
    close(ep);
    return NULL;
}

static void connect_pairs(exchange *x)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, MAX_CONNS) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &len) != 0)
        die("listen");
    for (int i = 0; i < x->nconns; i++) {
        int one = 1;
        x->client_fd[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (x->client_fd[i] < 0 || connect(x->client_fd[i], (struct sockaddr *)&sa, sizeof sa) != 0 ||
            (x->server_fd[i] = accept(lfd, NULL, NULL)) < 0)
            die("connect");
        /* as coredb, wrk and libpq: no Nagle delay on small writes */
        setsockopt(x->client_fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(x->server_fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    close(lfd);
}

static void run_exchange(int nconns, long rounds)
{
    exchange x = {.nconns = nconns, .rounds = rounds};
    pthread_t s, c;
    connect_pairs(&x);
    double w0 = now_s(CLOCK_MONOTONIC);
    if (pthread_create(&s, NULL, serve, &x) != 0 || pthread_create(&c, NULL, call, &x) != 0)
        die("pthread_create");
    pthread_join(s, NULL);
    pthread_join(c, NULL);
    x.wall_s = now_s(CLOCK_MONOTONIC) - w0;
    for (int i = 0; i < nconns; i++) {
        close(x.client_fd[i]);
        close(x.server_fd[i]);
    }
    printf("%d in flight: %ld exchanges (%d-byte request, %d-byte answer) in %.2f s; "
           "server CPU %.1f us per exchange, %.2f epoll_wait returns per exchange; client CPU %.1f us per exchange\n",
           nconns, x.served, REQUEST_BYTES, ANSWER_BYTES, x.wall_s, x.server_cpu_s * 1e6 / (double)x.served,
           (double)x.server_wakes / (double)x.served, x.client_cpu_s * 1e6 / (double)x.served);
}

int main(int argc, char **argv)
{
    long exchanges = argc > 1 ? atol(argv[1]) : 20000;
    if (exchanges < MAX_CONNS || exchanges > 10000000) {
        fprintf(stderr, "usage: wake_cost [exchanges, %d..10000000]\n", MAX_CONNS);
        return 2;
    }
    enum { SYSCALLS = 1000000 };
    double t0 = now_s(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < SYSCALLS; i++)
        (void)getppid();
    printf("null syscall: %.2f us per getppid()\n", (now_s(CLOCK_THREAD_CPUTIME_ID) - t0) * 1e6 / SYSCALLS);
    run_exchange(1, exchanges);
    run_exchange(MAX_CONNS, exchanges / MAX_CONNS);
    return 0;
}
