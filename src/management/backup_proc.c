/*
 * backup_proc.c - cdb__backup_run (backup_internal.h): pg_dump, pg_restore
 * and friends as child processes. posix_spawn with an argv, never a shell;
 * the connection (and its password) only in the child's environment, so
 * neither `ps` nor /proc/PID/cmdline nor our log ever shows it. Waits are
 * bounded: a child that outlives its timeout is killed.
 */
#include "management/backup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/timeutil.h"

extern char **environ;

#define MAX_ARGS 32
#define MAX_ENV_EXTRA 16
#define ERR_TAIL 400

/* conninfo keyword -> environment variable, for the settings worth passing on */
static const struct {
    const char *keyword, *var;
} ENV_MAP[] = {
    {"host", "PGHOST"},         {"hostaddr", "PGHOSTADDR"}, {"port", "PGPORT"},
    {"user", "PGUSER"},         {"password", "PGPASSWORD"}, {"dbname", "PGDATABASE"},
    {"sslmode", "PGSSLMODE"},   {"sslrootcert", "PGSSLROOTCERT"},
    {"connect_timeout", "PGCONNECT_TIMEOUT"}, {"passfile", "PGPASSFILE"},
};

/* Our environment without PG* plus the conninfo's settings; extra strings are malloc'd into *owned. */
static char **child_env(const char *conninfo, char ***owned)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = calloc(n + MAX_ENV_EXTRA + 1, sizeof *env);
    char **mine = calloc(MAX_ENV_EXTRA + 1, sizeof *mine);
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    if (!env || !mine || !opts) {
        free(env);
        free(mine);
        PQconninfoFree(opts);
        return NULL;
    }
    size_t k = 0, m = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PG", 2) != 0)
            env[k++] = environ[i];
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        for (size_t j = 0; j < sizeof ENV_MAP / sizeof ENV_MAP[0] && m < MAX_ENV_EXTRA; j++) {
            if (strcmp(o->keyword, ENV_MAP[j].keyword) != 0)
                continue;
            char *s = cdb_xasprintf("%s=%s", ENV_MAP[j].var, o->val);
            if (s)
                env[k++] = mine[m++] = s;
        }
    }
    PQconninfoFree(opts);
    *owned = mine;
    return env;
}

static void free_owned(char **owned)
{
    for (size_t i = 0; owned && owned[i]; i++) {
        explicit_bzero(owned[i], strlen(owned[i]));   /* PGPASSWORD */
        free(owned[i]);
    }
    free(owned);
}

/* The last ERR_TAIL bytes of the child's stderr, one line. */
static void read_tail(int fd, char *buf, size_t len)
{
    buf[0] = '\0';
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)(len - 1) ? end - (off_t)(len - 1) : 0;
    ssize_t r = pread(fd, buf, len - 1, start);
    buf[r > 0 ? r : 0] = '\0';
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

int cdb__backup_run(const cdb_service *svc, const char *prog, const char *const *args,
                    const char *out_path, int timeout_s, cdb_error *err)
{
    char *path = cdb_xasprintf("%s/%s", svc->cfg->pg_bindir, prog);
    char **owned = NULL;
    char **env = child_env(svc->conninfo, &owned);
    const char *argv[MAX_ARGS + 2];
    char errfile[] = "/tmp/coredb-backup-err-XXXXXX";
    int errfd = -1, rc = 0;
    posix_spawn_file_actions_t fa;
    bool fa_ok = false;

    if (!path || !env) {
        rc = cdb_error_oom(err);
        goto out;
    }
    size_t n = 0;
    argv[n++] = path;
    for (; args[n - 1] && n <= MAX_ARGS; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    if ((errfd = mkstemp(errfile)) < 0) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s: no temporary file: %s", prog, strerror(errno));
        goto out;
    }
    unlink(errfile);
    if (posix_spawn_file_actions_init(&fa) != 0) {
        rc = cdb_error_oom(err);
        goto out;
    }
    fa_ok = true;
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path ? out_path : "/dev/null",
                                     out_path ? O_WRONLY | O_CREAT | O_TRUNC : O_WRONLY, 0600);
    posix_spawn_file_actions_adddup2(&fa, errfd, 2);
    pid_t pid;
    int e = posix_spawn(&pid, path, &fa, NULL, (char *const *)argv, env);
    if (e != 0) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot run %s: %s (check PG_BINDIR)", path,
                           strerror(e));
        goto out;
    }
    int64_t deadline = cdb_mono_ms() + (int64_t)timeout_s * 1000;
    int status = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s: wait failed", prog);
            goto out;
        }
        if (cdb_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s did not finish within %d s", prog, timeout_s);
            goto out;
        }
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char tail[ERR_TAIL];
        read_tail(errfd, tail, sizeof tail);
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s failed (status %d): %s", prog,
                           WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), tail);
    }

out:
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (errfd >= 0)
        close(errfd);
    free(env);
    free_owned(owned);
    free(path);
    return rc;
}
