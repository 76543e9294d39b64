/*
 * tests/unit/redis_server.h - real redis-server processes for the unit tests
 * that need one (store/redis_async.c, store/invalidation.c): a free loopback
 * port, start (optionally with a password) and wait until it answers, stop,
 * a side connection of the test's own, and the cleanup main() runs (every
 * server left by a failed assertion killed, the scratch directory removed).
 * Include it after cmocka.h and hiredis.
 */
#ifndef COREDB_TESTS_UNIT_REDIS_SERVER_H
#define COREDB_TESTS_UNIT_REDIS_SERVER_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The servers' working directory (a replica writes dump.rdb there), removed at the end. */
static char scratch[64];

/* Every server started and not stopped yet: a failed assertion skips a test's cleanup,
 * so main() kills what is left. */
static pid_t children[16];

static void track(pid_t pid, bool add)
{
    for (size_t i = 0; i < sizeof children / sizeof *children; i++)
        if (add ? children[i] == 0 : children[i] == pid) {
            children[i] = add ? pid : 0;
            return;
        }
}

static void kill_children(void)
{
    for (size_t i = 0; i < sizeof children / sizeof *children; i++)
        if (children[i] > 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
            children[i] = 0;
        }
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Starts redis-server on 127.0.0.1:port (password or NULL) and waits until it answers. */
static pid_t start_redis(int port, const char *password)
{
    char portstr[16];
    pid_t pid;

    snprintf(portstr, sizeof portstr, "%d", port);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        if (password)
            execlp("redis-server", "redis-server", "--port", portstr, "--bind", "127.0.0.1", "--dir",
                   scratch, "--save", "", "--appendonly", "no", "--requirepass", password, (char *)NULL);
        else
            execlp("redis-server", "redis-server", "--port", portstr, "--bind", "127.0.0.1", "--dir",
                   scratch, "--save", "", "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    track(pid, true);
    for (int i = 0; i < 500; i++) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
        bool up = false;
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            up = r != NULL;   /* NOAUTH is an answer too */
            freeReplyObject(r);
        }
        redisFree(c);
        if (up)
            return pid;
        usleep(10000);
    }
    fail_msg("redis-server did not start on port %d", port);
    return -1;
}

static void stop_redis(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    track(pid, false);
}

/* A blocking connection of the test's own, to look at Redis or pause it. */
static redisReply *side_command(int port, const char *password, const char *fmt, ...)
{
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    redisReply *r = NULL;
    va_list ap;

    assert_non_null(c);
    assert_int_equal(c->err, 0);
    if (password)
        freeReplyObject(redisCommand(c, "AUTH %s", password));
    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    assert_non_null(r);
    return r;
}

/* Makes the scratch directory (prefix: "/tmp/<name>-XXXXXX"); false on failure. */
static bool redis_scratch_make(const char *name)
{
    snprintf(scratch, sizeof scratch, "/tmp/%s-XXXXXX", name);
    return mkdtemp(scratch) != NULL;
}

/* Kills what is left and removes the scratch directory. */
static void redis_scratch_remove(void)
{
    char cmd[100];
    kill_children();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", scratch);
}

#endif
