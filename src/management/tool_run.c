/*
 * tool_run.c - runs a PostgreSQL client tool (pg_dump for backups,
 * pg_restore for verify and restore) as a child process: posix_spawn with an argv (never a shell), the connection
 * settings and the password only in the child's environment (libpq's own
 * PG* variables, taken from the service's conninfo with
 * PQconninfoParse), a bounded wait that calls a tick now and then, and the
 * tool's stderr kept in an anonymous file so its last line can be logged
 * (pg_restore's messages name objects, never the password).
 */
#include "management/tool_run.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/timeutil.h"

#define MAX_ENV 48

extern char **environ;

/* PATH/LANG/LC_* of this process, then every setting of conninfo as its PG* variable. */
static char **child_env(const char *conninfo, const char *sslmode, const char *app_name)
{
    char **env = calloc(MAX_ENV + 1, sizeof *env);
    if (!env)
        return NULL;
    int n = 0;
    for (char **e = environ; *e && n < 8; e++)
        if (!strncmp(*e, "PATH=", 5) || !strncmp(*e, "LANG=", 5) || !strncmp(*e, "LC_ALL=", 7)
            || !strncmp(*e, "TZ=", 3))
            if (!(env[n++] = strdup(*e)))
                goto fail;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    PQfreemem(perr);
    if (!opts)
        goto fail;
    for (PQconninfoOption *o = opts; o->keyword && n < MAX_ENV - 1; o++) {
        if (!o->val || !o->envvar || (sslmode && !strcmp(o->keyword, "sslmode")))
            continue;
        size_t len = strlen(o->envvar) + strlen(o->val) + 2;
        if (!(env[n] = malloc(len))) {
            PQconninfoFree(opts);
            goto fail;
        }
        snprintf(env[n++], len, "%s=%s", o->envvar, o->val);
    }
    PQconninfoFree(opts);
    if (sslmode && (!(env[n++] = cdb_xasprintf("PGSSLMODE=%s", sslmode))))
        goto fail;
    if (!(env[n++] = cdb_xasprintf("PGAPPNAME=%s", app_name ? app_name : "coredb")))
        goto fail;
    return env;
fail:
    for (int i = 0; i < n; i++)
        free(env[i]);
    free(env);
    return NULL;
}

static void free_env(char **env)
{
    if (!env)
        return;
    for (char **e = env; *e; e++) {
        explicit_bzero(*e, strlen(*e)); /* the password was in one of them */
        free(*e);
    }
    free(env);
}

/* The last non-empty line of what the tool wrote on stderr. */
static void last_line(int fd, char *out, size_t len)
{
    out[0] = '\0';
    char buf[4096];
    off_t size = lseek(fd, 0, SEEK_END);
    if (size <= 0)
        return;
    off_t from = size > (off_t)sizeof buf - 1 ? size - (off_t)sizeof buf + 1 : 0;
    ssize_t got = pread(fd, buf, sizeof buf - 1, from);
    if (got <= 0)
        return;
    buf[got] = '\0';
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
        buf[--got] = '\0';
    char *nl = strrchr(buf, '\n');
    const char *line = nl ? nl + 1 : buf;
    size_t n = strlen(line) < len - 1 ? strlen(line) : len - 1;
    memcpy(out, line, n);
    out[n] = '\0';
}

static int wait_bounded(cdb__tool_run *run, pid_t pid)
{
    int64_t start = cdb_mono_ms(), last_tick = start;
    for (;;) {
        int status;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (w < 0 && errno != EINTR)
            return -1;
        int64_t now = cdb_mono_ms();
        if (now - start > (int64_t)run->timeout_s * 1000) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            return -2;
        }
        if (run->tick && now - last_tick >= CDB__TOOL_TICK_MS) {
            last_tick = now;
            run->tick(run->tick_arg);
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int cdb__tool_run_spawn(cdb__tool_run *run, char *const argv[])
{
    int rc = -1;
    run->diag[0] = '\0';
    char **env = child_env(run->conninfo, run->sslmode, run->app_name);
    char errpath[] = "/tmp/coredb-tool-XXXXXX";
    int errfd = mkostemp(errpath, O_CLOEXEC);
    if (errfd >= 0)
        unlink(errpath); /* anonymous from now on */
    posix_spawn_file_actions_t fa;
    bool fa_ok = posix_spawn_file_actions_init(&fa) == 0;
    if (!env || errfd < 0 || !fa_ok)
        goto out;
    if (posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) != 0
        || posix_spawn_file_actions_addopen(&fa, 1, run->out_path ? run->out_path : "/dev/null",
                                            run->out_path ? O_WRONLY | O_CREAT | O_TRUNC : O_WRONLY, 0600) != 0
        || posix_spawn_file_actions_adddup2(&fa, errfd, 2) != 0)
        goto out;
    pid_t pid;
    if (posix_spawn(&pid, argv[0], &fa, NULL, argv, env) != 0)
        goto out;
    rc = wait_bounded(run, pid);
    last_line(errfd, run->diag, sizeof run->diag);
out:
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (errfd >= 0)
        close(errfd);
    free_env(env);
    return rc;
}
