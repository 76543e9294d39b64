/*
 * devdb.c - the embedded PostgreSQL of the zero-configuration mode, and the
 * development secrets that go with it.
 *
 * Layout under var_dir: pgdata/ (the cluster), run/ (its unix socket),
 * log/postgresql.log (server and pg_ctl output), log/initdb.log, secrets.env.
 *
 * PostgreSQL refuses to run as root, and CI runs as root: then initdb and
 * pg_ctl run as Debian's `postgres` account, which owns pgdata, run and log.
 * The user switch happens in a forked child followed by execve, never through
 * a shell. The child runs only async-signal-safe calls (the process may have
 * threads), so the account and its groups are looked up before the fork.
 * Started by an ordinary user, the cluster simply runs as that user.
 *
 * Security: the server listens on no TCP address, only on a socket inside
 * run/ (mode 0700). Only the account running the cluster and root can reach
 * that socket, and those can read pgdata anyway, which is why local "trust"
 * authentication is acceptable. Port 5432 only names the socket file
 * (run/.s.PGSQL.5432), so it never clashes with another cluster.
 *
 * pg_ctl hands the -o options to /bin/sh, so the socket path is quoted there
 * and a var_dir containing quotes, backslashes or control characters is
 * refused rather than escaped.
 *
 * Ownership: the coredb that starts the cluster stops it when it closes.
 * It holds an exclusive flock on run/devdb.owner for as long as it lives
 * and writes its pid there (for the log only). Another coredb on the same
 * var_dir (`migrate status` while `serve` runs) finds the lock taken, uses
 * the cluster and leaves it running. The kernel drops the lock when its
 * holder dies, however it dies (SIGKILL, a crash), so a running cluster
 * whose lock is free has nobody left to stop it: the next coredb adopts it
 * (takes the lock) and stops it at exit. A lock, unlike a recorded pid,
 * cannot be fooled by the system reusing the dead owner's pid.
 */
#include "core/fsutil.h"
#include "core/timeutil.h"
#include "store/devdb.h"
#include "coredb/log.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define DEVDB_PORT  "5432"
#define DEVDB_DB    "coredb"
#define MAX_GROUPS  64
#define OWNER_WAIT_MS 60000    /* as pg_ctl -t 60: another coredb starting or stopping it */

/* Who the PostgreSQL programs run as: ourselves, or `postgres` when root. */
typedef struct runas {
    bool  switch_user;
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int   ngroups;
} runas;

struct cdb_devdb {
    char *pg_ctl;
    char *pgdata;
    char *run_dir;
    char *log_path;
    char *owner_path;          /* run/devdb.owner: the lock of the coredb that stops it */
    int   owner_fd;            /* holds that lock, or -1: another coredb owns the cluster */
    runas as;
    bool  running;             /* started or adopted by this process: stop it on close */
};

/* A private directory of the cluster's account with exactly mode. */
static int private_dir(const char *path, const runas *as, mode_t mode, cdb_error *err)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        goto fail;
    if (as->switch_user && chown(path, as->uid, as->gid) < 0)
        goto fail;
    if (chmod(path, mode) < 0)
        goto fail;
    return 0;
fail:
    return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                         "embedded PostgreSQL: cannot prepare %s: %s", path, strerror(errno));
}

static int lookup_postgres(runas *as, cdb_error *err)
{
    struct passwd pw, *found = NULL;
    char buf[4096];
    int rc = getpwnam_r("postgres", &pw, buf, sizeof buf, &found);
    if (rc != 0 || !found)
        return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                             "embedded PostgreSQL: running as root needs the 'postgres' account "
                             "(PostgreSQL refuses root); install postgresql or set DATABASE_URL");
    as->switch_user = true;
    as->uid = pw.pw_uid;
    as->gid = pw.pw_gid;
    as->ngroups = MAX_GROUPS;
    if (getgrouplist(pw.pw_name, pw.pw_gid, as->groups, &as->ngroups) < 0) {
        as->groups[0] = pw.pw_gid;  /* more groups than we keep: the primary one suffices */
        as->ngroups = 1;
    }
    return 0;
}

/* The environment for PostgreSQL programs: ours without PG* variables,
 * which would otherwise override the cluster we mean (PGDATA, PGPORT...). */
static char **child_env(void)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = calloc(n + 1, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PG", 2) != 0)
            env[k++] = environ[i];
    return env;
}

/*
 * Forks a child with stdout/stderr on out_fd (or /dev/null when -1), no
 * other inherited descriptors, default signals, running as `as`, in cwd.
 * Returns the pid in the parent, 0 in the child, -1 if fork failed.
 */
static pid_t fork_as(const runas *as, int out_fd, const char *cwd)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;

    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd < 0 || dup2(null_fd, 0) < 0)
        _exit(126);
    if (out_fd < 0)
        out_fd = null_fd;
    if (dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
        _exit(126);
    /* Our listening sockets must not outlive us inside the postmaster. */
    if (close_range(3, ~0U, 0) < 0)
        for (int fd = 3; fd < 65536; fd++)
            close(fd);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int sigs[] = {SIGPIPE, SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], SIG_DFL);

    if (as->switch_user &&
        (setgroups((size_t)as->ngroups, as->groups) < 0 || setgid(as->gid) < 0 ||
         setuid(as->uid) < 0))
        _exit(126);
    if (cwd && chdir(cwd) < 0)
        _exit(126);
    return 0;
}

/* The child's exit status, or -1 if it died of a signal or wait failed. */
static int wait_child(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Runs argv[0] (an absolute path) as `as`; returns its exit status or -1. */
static int run(const runas *as, int out_fd, const char *cwd, char *const argv[])
{
    char **env = child_env();
    if (!env)
        return -1;
    pid_t pid = fork_as(as, out_fd, cwd);
    if (pid == 0) {
        execve(argv[0], argv, env);
        _exit(127);
    }
    free(env);
    return pid < 0 ? -1 : wait_child(pid);
}

/* Whether `as` can search every directory down to and including dir. */
static bool can_reach(const runas *as, const char *dir)
{
    pid_t pid = fork_as(as, -1, NULL);
    if (pid == 0)
        _exit(access(dir, X_OK) == 0 ? 0 : 1);
    return pid > 0 && wait_child(pid) == 0;
}

/* Opens a log file for appending, owned by the cluster's account so that
 * the server (which reopens it through pg_ctl -l) can write it too. */
static int open_log(const char *path, const runas *as, cdb_error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 || (as->switch_user && fchown(fd, as->uid, as->gid) < 0)) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: cannot open %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static bool file_exists(const char *dir, const char *name)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static int pg_ctl_stop(const cdb_devdb *db)
{
    int fd = open_log(db->log_path, &db->as, NULL);
    char *argv[] = {db->pg_ctl, "stop", "-D", db->pgdata, "-m", "fast", "-w", "-t", "60", NULL};
    int rc = run(&db->as, fd, db->pgdata, argv);
    if (fd >= 0)
        close(fd);
    return rc;
}

static int initdb(const cdb_devdb *db, const char *bindir, const char *var_dir, cdb_error *err)
{
    int rc = -1;
    char *path = cdb_xasprintf("%s/log/initdb.log", var_dir);
    char *prog = cdb_xasprintf("%s/initdb", bindir);
    if (!path || !prog) {
        cdb_error_oom(err);
        goto out_free;
    }
    int fd = open_log(path, &db->as, err);
    if (fd < 0)
        goto out_free;
    cdb_log_info("devdb.initdb", "creating the embedded PostgreSQL cluster in %s", db->pgdata);
    char *argv[] = {prog, "-D", db->pgdata, "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                    "--no-instructions", NULL};
    int status = run(&db->as, fd, var_dir, argv);
    close(fd);
    if (status != 0) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: initdb failed (exit %d); see %s", status, path);
        goto out_free;
    }
    rc = 0;
out_free:
    free(path);
    free(prog);
    return rc;
}

static bool cluster_running(const cdb_devdb *db)
{
    char *argv[] = {db->pg_ctl, "status", "-D", db->pgdata, NULL};
    return run(&db->as, -1, db->pgdata, argv) == 0;
}

/* The pid the owner file records (for the log), or 0. */
static long recorded_owner(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

/*
 * Tries to take the owner lock without waiting. 1: taken (db->owner_fd),
 * our pid recorded, *prev the pid the last owner recorded (0: none);
 * 0: a live coredb holds it, *prev its pid; -1 + err.
 */
static int claim_owner(cdb_devdb *db, long *prev, cdb_error *err)
{
    int fd = open(db->owner_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        goto fail;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK)
            goto fail;
        *prev = recorded_owner(fd);
        close(fd);
        return 0;
    }
    *prev = recorded_owner(fd);
    char pid[24];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        goto fail;
    db->owner_fd = fd;
    return 1;
fail:
    cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "embedded PostgreSQL: cannot lock %s: %s",
                  db->owner_path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Drops the owner lock (closing the descriptor drops it); the pid goes too. */
static void release_owner(cdb_devdb *db)
{
    if (db->owner_fd < 0)
        return;
    if (ftruncate(db->owner_fd, 0) < 0)
        cdb_log_warn("devdb.owner", "cannot clear %s: %s", db->owner_path, strerror(errno));
    close(db->owner_fd);
    db->owner_fd = -1;
}

static int pg_ctl_start(cdb_devdb *db, cdb_error *err)
{
    int rc = -1;
    char *opts = cdb_xasprintf("-c listen_addresses='' -k '\"%s\"' -c port=" DEVDB_PORT, db->run_dir);
    if (!opts)
        return cdb_error_oom(err);
    int fd = open_log(db->log_path, &db->as, err);
    if (fd < 0)
        goto out_opts;
    char *argv[] = {db->pg_ctl, "start", "-D", db->pgdata, "-l", db->log_path,
                    "-w", "-t", "60", "-o", opts, NULL};
    int status = run(&db->as, fd, db->pgdata, argv);
    close(fd);
    if (status != 0) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL failed to start (pg_ctl exit %d); see %s",
                      status, db->log_path);
        goto out_opts;
    }
    db->running = true;
    cdb_log_info("devdb.start", "embedded PostgreSQL started, socket in %s, log %s",
                 db->run_dir, db->log_path);
    rc = 0;
out_opts:
    free(opts);
    return rc;
}

/*
 * Decides who runs the cluster, then makes sure it runs. Owner lock free
 * and the cluster up: nobody alive will stop it, adopt it. Lock free and
 * the cluster down: initdb if needed and start it. Lock held by a live
 * coredb: use its cluster once it answers (that process may be starting
 * it, or stopping it at exit, after which the lock frees up).
 */
static int take_cluster(cdb_devdb *db, const char *bindir, const char *var_dir, cdb_error *err)
{
    int64_t deadline = cdb_mono_ms() + OWNER_WAIT_MS;
    for (;;) {
        long prev = 0;
        int owner = claim_owner(db, &prev, err);
        if (owner < 0)
            return -1;
        bool up = cluster_running(db);
        if (owner && up) {
            db->running = true;
            if (prev > 0)
                cdb_log_warn("devdb.adopt", "embedded PostgreSQL in %s was left running by coredb "
                             "pid %ld, which is gone: adopting it; it stops when this process exits",
                             db->pgdata, prev);
            else
                cdb_log_warn("devdb.adopt", "embedded PostgreSQL in %s was running with no coredb "
                             "owning it: adopting it; it stops when this process exits", db->pgdata);
            return 0;
        }
        if (owner)
            break;
        if (up) {
            cdb_log_info("devdb.reuse", "embedded PostgreSQL in %s is run by coredb pid %ld: "
                         "using it and leaving it running", db->pgdata, prev);
            return 0;
        }
        if (cdb_mono_ms() >= deadline)
            return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                                 "embedded PostgreSQL in %s: coredb pid %ld owns it but it did "
                                 "not come up within %d s; see %s", db->pgdata, prev,
                                 OWNER_WAIT_MS / 1000, db->log_path);
        usleep(100 * 1000);
    }
    if (!file_exists(db->pgdata, "PG_VERSION") && initdb(db, bindir, var_dir, err) < 0)
        return -1;
    return pg_ctl_start(db, err);
}

static int ensure_database(const cdb_devdb *db, cdb_error *err)
{
    const char *keys[] = {"host", "port", "user", "dbname", "connect_timeout", "sslmode",
                          "application_name", NULL};
    const char *vals[] = {db->run_dir, DEVDB_PORT, "postgres", "postgres", "10", "disable",
                          "coredb-devdb", NULL};
    int rc = -1;
    PGresult *res = NULL;
    PGconn *conn = PQconnectdbParams(keys, vals, 0);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        cdb_log_error("devdb.connect", "%s", conn ? PQerrorMessage(conn) : "out of memory");
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: cannot connect through %s; see %s",
                      db->run_dir, db->log_path);
        goto out_conn;
    }
    res = PQexec(conn, "SELECT 1 FROM pg_database WHERE datname = '" DEVDB_DB "'");
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 0) {
        PQclear(res);
        res = PQexec(conn, "CREATE DATABASE " DEVDB_DB);
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "42P04") == 0) {   /* created meanwhile: fine */
            rc = 0;
            goto out_conn;
        }
        if (PQresultStatus(res) == PGRES_COMMAND_OK)
            cdb_log_info("devdb.createdb", "created database %s", DEVDB_DB);
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        cdb_log_error("devdb.createdb", "%s", PQerrorMessage(conn));
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: cannot create database %s; see %s",
                      DEVDB_DB, db->log_path);
        goto out_conn;
    }
    rc = 0;
out_conn:
    PQclear(res);
    PQfinish(conn);
    return rc;
}

/* postgresql://postgres@/coredb?host=<run dir, percent-encoded>&port=5432 */
static char *make_uri(const char *run_dir)
{
    size_t len = strlen(run_dir);
    char *enc = malloc(3 * len + 1), *p = enc;
    if (!enc)
        return NULL;
    for (const unsigned char *s = (const unsigned char *)run_dir; *s; s++) {
        if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
            strchr("-._~", *s))
            *p++ = (char)*s;
        else
            p += sprintf(p, "%%%02X", *s);
    }
    *p = '\0';
    char *uri = cdb_xasprintf("postgresql://postgres@/" DEVDB_DB "?host=%s&port=" DEVDB_PORT, enc);
    free(enc);
    return uri;
}

/* Frees the handle; drops the owner lock, so call it after stopping the cluster. */
static void devdb_free(cdb_devdb *db)
{
    release_owner(db);
    free(db->owner_path);
    free(db->pg_ctl);
    free(db->pgdata);
    free(db->run_dir);
    free(db->log_path);
    free(db);
}

/* Refuses what pg_ctl's shell quoting or the socket path limit cannot carry. */
static int check_var_dir(const char *dir, cdb_error *err)
{
    for (const unsigned char *s = (const unsigned char *)dir; *s; s++)
        if (*s < 0x20 || *s == 0x7f || *s == '\'' || *s == '"' || *s == '\\')
            return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                                 "embedded PostgreSQL: COREDB_VAR_DIR must not contain quotes, "
                                 "backslashes or control characters");
    if (strlen(dir) + strlen("/run/.s.PGSQL." DEVDB_PORT) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                             "embedded PostgreSQL: the socket path under %s is too long for a "
                             "unix socket; set a shorter COREDB_VAR_DIR", dir);
    return 0;
}

cdb_devdb *cdb_devdb_start(const char *var_dir, const char *pg_bindir,
                           char **conninfo, cdb_error *err)
{
    *conninfo = NULL;
    char *dir = cdb_absolute_dir(var_dir);
    cdb_devdb *db = calloc(1, sizeof *db);
    char *log_dir = dir ? cdb_xasprintf("%s/log", dir) : NULL;
    if (db)
        db->owner_fd = -1;
    if (!dir || !db || !log_dir) {
        cdb_error_oom(err);
        goto fail;
    }
    db->pg_ctl = cdb_xasprintf("%s/pg_ctl", pg_bindir);
    db->pgdata = cdb_xasprintf("%s/pgdata", dir);
    db->run_dir = cdb_xasprintf("%s/run", dir);
    db->log_path = cdb_xasprintf("%s/postgresql.log", log_dir);
    db->owner_path = cdb_xasprintf("%s/run/devdb.owner", dir);
    if (!db->pg_ctl || !db->pgdata || !db->run_dir || !db->log_path || !db->owner_path) {
        cdb_error_oom(err);
        goto fail;
    }
    if (check_var_dir(dir, err) < 0)
        goto fail;
    if (access(db->pg_ctl, X_OK) < 0) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: no pg_ctl in %s; install postgresql-15, "
                      "set PG_BINDIR, or set DATABASE_URL", pg_bindir);
        goto fail;
    }
    if (geteuid() == 0 && lookup_postgres(&db->as, err) < 0)
        goto fail;
    if (cdb_mkdir_p(dir, 0755) < 0) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: cannot create %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (db->as.switch_user && !can_reach(&db->as, dir)) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: the postgres account cannot reach %s; set "
                      "COREDB_VAR_DIR to a directory it can reach (e.g. under /var/lib or "
                      "/tmp) or set DATABASE_URL", dir);
        goto fail;
    }
    struct stat st;
    if (db->as.switch_user && stat(db->pgdata, &st) == 0 && st.st_uid != db->as.uid &&
        file_exists(db->pgdata, "PG_VERSION")) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                      "embedded PostgreSQL: %s belongs to uid %u, not to postgres; run coredb "
                      "as that user or remove the directory", db->pgdata, (unsigned)st.st_uid);
        goto fail;
    }
    if (private_dir(db->pgdata, &db->as, 0700, err) < 0 ||
        private_dir(db->run_dir, &db->as, 0700, err) < 0 ||
        private_dir(log_dir, &db->as, 0700, err) < 0)
        goto fail;

    if (take_cluster(db, pg_bindir, dir, err) < 0 || ensure_database(db, err) < 0)
        goto fail;
    *conninfo = make_uri(db->run_dir);
    if (!*conninfo) {
        cdb_error_oom(err);
        goto fail;
    }
    free(log_dir);
    free(dir);
    return db;
fail:
    if (db && db->running)
        pg_ctl_stop(db);
    if (db)
        devdb_free(db);
    free(log_dir);
    free(dir);
    return NULL;
}

void cdb_devdb_stop(cdb_devdb *db)
{
    if (!db)
        return;
    if (!db->running) {
        devdb_free(db); /* another live coredb runs it: not ours to stop */
        return;
    }
    int status = pg_ctl_stop(db);
    if (status != 0)
        cdb_log_warn("devdb.stop", "pg_ctl stop exited with %d; see %s", status, db->log_path);
    else
        cdb_log_info("devdb.stop", "embedded PostgreSQL stopped");
    devdb_free(db);
}
