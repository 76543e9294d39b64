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
 * Who stops the cluster: the last coredb using it. Every coredb using it
 * (`serve`, `migrate status` while serve runs, whichever started it) holds
 * a shared flock on run/devdb.users for as long as it lives. At exit it
 * tries to turn that into an exclusive lock: if it can, nobody else uses
 * the cluster and it stops it; if not, it leaves it running for the
 * others. The kernel drops a lock when its holder dies, however it dies
 * (SIGKILL, a crash), so a cluster found running with no lock held on
 * devdb.users has nobody left to stop it: the coredb that finds it adopts
 * it, simply by being its last user. Locks, unlike recorded pids, cannot
 * be fooled by the system reusing a dead process's pid. run/devdb.lock
 * serializes these decisions (join: start or adopt or share; leave: stop
 * or not) and records the pid of the coredb that last started or adopted
 * the cluster, for the log only.
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
#define DEVDB_STATS_SCHEMA "coredb_stats"   /* where pg_stat_statements is created */
#define MAX_GROUPS  64
#define LOCK_WAIT_MS 180000    /* another coredb's initdb + pg_ctl start (-t 60), or its stop */

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
    char *lock_path;           /* run/devdb.lock: held while joining or leaving; last starter's pid */
    char *users_path;          /* run/devdb.users: a shared lock per coredb using the cluster */
    int   users_fd;            /* our shared lock on it, or -1 before we joined */
    runas as;
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

static int open_lock_file(const char *path, cdb_error *err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "embedded PostgreSQL: cannot open %s: %s",
                      path, strerror(errno));
    return fd;
}

/*
 * Takes run/devdb.lock (exclusive), waiting for another coredb that is
 * starting or stopping the cluster. Returns its descriptor (closing it
 * releases the lock) or -1 + err.
 */
static int lock_decisions(const cdb_devdb *db, cdb_error *err)
{
    int fd = open_lock_file(db->lock_path, err);
    if (fd < 0)
        return -1;
    int64_t deadline = cdb_mono_ms() + LOCK_WAIT_MS;
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK || cdb_mono_ms() >= deadline) {
            cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE,
                          "embedded PostgreSQL: cannot lock %s: %s", db->lock_path,
                          errno == EWOULDBLOCK ? "another coredb holds it too long" : strerror(errno));
            close(fd);
            return -1;
        }
        usleep(50 * 1000);
    }
    return fd;
}

/* The pid run/devdb.lock records (0: none), or ours written into it. */
static long recorded_starter(int lock_fd)
{
    char buf[32];
    ssize_t n = pread(lock_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

static void record_starter(const cdb_devdb *db, int lock_fd, bool starting)
{
    char pid[24];
    int len = starting ? snprintf(pid, sizeof pid, "%ld\n", (long)getpid()) : 0;
    if (ftruncate(lock_fd, 0) < 0 || (len > 0 && pwrite(lock_fd, pid, (size_t)len, 0) != len))
        cdb_log_warn("devdb.lock", "cannot record the pid in %s: %s", db->lock_path, strerror(errno));
}

/*
 * pg_stat_statements (the slowest statements of /api/v1/admin/metrics/performance)
 * must be preloaded when the server starts. It is preloaded only when the
 * installation has it (Debian's postgresql-15 does, in BINDIR/../lib): a
 * preload of a missing library would keep the cluster from starting.
 */
static bool has_stat_statements(const char *bindir)
{
    char *lib = cdb_xasprintf("%s/../lib/pg_stat_statements.so", bindir);
    bool found = lib && access(lib, R_OK) == 0;
    free(lib);
    return found;
}

static int pg_ctl_start(cdb_devdb *db, const char *bindir, cdb_error *err)
{
    int rc = -1;
    char *opts = cdb_xasprintf("-c listen_addresses='' -k '\"%s\"' -c port=" DEVDB_PORT "%s", db->run_dir,
                               has_stat_statements(bindir)
                                   ? " -c shared_preload_libraries=pg_stat_statements" : "");
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
    cdb_log_info("devdb.start", "embedded PostgreSQL started, socket in %s, log %s",
                 db->run_dir, db->log_path);
    rc = 0;
out_opts:
    free(opts);
    return rc;
}

/*
 * Joins the cluster's users, starting or adopting it as needed, under
 * run/devdb.lock. Nobody else using it (our exclusive lock on devdb.users
 * succeeds) and it runs: it was left by a coredb that is gone, adopt it.
 * It does not run: initdb if needed and start it. Others use it: share it.
 * Ends holding a shared lock on devdb.users (db->users_fd).
 */
static int join_cluster(cdb_devdb *db, const char *bindir, const char *var_dir, cdb_error *err)
{
    int rc = -1;
    int lock_fd = lock_decisions(db, err);
    if (lock_fd < 0)
        return -1;
    db->users_fd = open_lock_file(db->users_path, err);
    if (db->users_fd < 0)
        goto out_unlock;
    /* only under devdb.lock does anyone hold devdb.users exclusively */
    bool alone = flock(db->users_fd, LOCK_EX | LOCK_NB) == 0;
    if (!alone && errno != EWOULDBLOCK) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "embedded PostgreSQL: cannot lock %s: %s",
                      db->users_path, strerror(errno));
        goto out_unlock;
    }
    long starter = recorded_starter(lock_fd);
    if (!cluster_running(db)) {
        if (!file_exists(db->pgdata, "PG_VERSION") && initdb(db, bindir, var_dir, err) < 0)
            goto out_unlock;
        if (pg_ctl_start(db, bindir, err) < 0)
            goto out_unlock;
        record_starter(db, lock_fd, true);
    } else if (alone) {
        if (starter > 0)
            cdb_log_warn("devdb.adopt", "embedded PostgreSQL in %s was left running by coredb pid "
                         "%ld, which is gone: adopting it; it stops when the last coredb using it "
                         "exits", db->pgdata, starter);
        else
            cdb_log_warn("devdb.adopt", "embedded PostgreSQL in %s was running with no coredb "
                         "using it: adopting it; it stops when the last coredb using it exits",
                         db->pgdata);
        record_starter(db, lock_fd, true);
    } else {
        cdb_log_info("devdb.reuse", "embedded PostgreSQL in %s is in use by another coredb "
                     "(started by pid %ld): sharing it; the last one to exit stops it",
                     db->pgdata, starter);
    }
    /* from exclusive to shared: not atomic, but nobody else takes it while we hold devdb.lock */
    if (flock(db->users_fd, LOCK_SH) < 0) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "embedded PostgreSQL: cannot lock %s: %s",
                      db->users_path, strerror(errno));
        goto out_unlock;
    }
    rc = 0;
out_unlock:
    close(lock_fd);
    return rc;
}

/*
 * Leaves the cluster's users: the last one out stops it. Without devdb.lock
 * (another coredb hung in a start) it leaves the cluster running, to be
 * adopted by the next coredb. Also the undo of a failed join.
 */
static void leave_cluster(cdb_devdb *db)
{
    if (db->users_fd < 0)
        return;
    cdb_error err;
    cdb_error_init(&err);
    int lock_fd = lock_decisions(db, &err);
    if (lock_fd < 0) {
        cdb_log_warn("devdb.stop", "%s; leaving the embedded PostgreSQL running", err.message);
        goto out_close;
    }
    if (flock(db->users_fd, LOCK_EX | LOCK_NB) < 0) {
        cdb_log_info("devdb.leave", "embedded PostgreSQL left running: another coredb uses it");
    } else if (cluster_running(db)) {
        int status = pg_ctl_stop(db);
        if (status != 0)
            cdb_log_warn("devdb.stop", "pg_ctl stop exited with %d; see %s", status, db->log_path);
        else
            cdb_log_info("devdb.stop", "embedded PostgreSQL stopped");
        record_starter(db, lock_fd, false);
    }
    close(lock_fd);
out_close:
    close(db->users_fd);
    db->users_fd = -1;
    cdb_error_destroy(&err);
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

/*
 * CREATE EXTENSION pg_stat_statements in the service's database, once; best
 * effort: without it the monitoring says "unavailable" and nothing else
 * changes, so a failure is logged, not returned. Here rather than in a
 * migration because only the embedded cluster is known to be ours to
 * change (a production database's extensions are its operator's choice).
 * In a schema of its own, not in public: the data API offers the views of
 * POSTGRES_SCHEMA that a role may read, and the extension's views are
 * readable by PUBLIC.
 */
static void ensure_stat_statements(const cdb_devdb *db)
{
    const char *keys[] = {"host", "port", "user", "dbname", "connect_timeout", "sslmode",
                          "application_name", NULL};
    const char *vals[] = {db->run_dir, DEVDB_PORT, "postgres", DEVDB_DB, "10", "disable",
                          "coredb-devdb", NULL};
    PGresult *res = NULL;
    PGconn *conn = PQconnectdbParams(keys, vals, 0);
    if (!conn || PQstatus(conn) != CONNECTION_OK)
        goto out;
    res = PQexec(conn, "SET client_min_messages = warning;"
                       " CREATE SCHEMA IF NOT EXISTS " DEVDB_STATS_SCHEMA ";"
                       " CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA " DEVDB_STATS_SCHEMA);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        cdb_log_warn("devdb.pg_stat_statements", "not installed (monitoring shows it unavailable): %s",
                     PQerrorMessage(conn));
out:
    PQclear(res);
    PQfinish(conn);
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

static void devdb_free(cdb_devdb *db)
{
    free(db->lock_path);
    free(db->users_path);
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
        db->users_fd = -1;
    if (!dir || !db || !log_dir) {
        cdb_error_oom(err);
        goto fail;
    }
    db->pg_ctl = cdb_xasprintf("%s/pg_ctl", pg_bindir);
    db->pgdata = cdb_xasprintf("%s/pgdata", dir);
    db->run_dir = cdb_xasprintf("%s/run", dir);
    db->log_path = cdb_xasprintf("%s/postgresql.log", log_dir);
    db->lock_path = cdb_xasprintf("%s/run/devdb.lock", dir);
    db->users_path = cdb_xasprintf("%s/run/devdb.users", dir);
    if (!db->pg_ctl || !db->pgdata || !db->run_dir || !db->log_path || !db->lock_path ||
        !db->users_path) {
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

    if (join_cluster(db, pg_bindir, dir, err) < 0 || ensure_database(db, err) < 0)
        goto fail;
    ensure_stat_statements(db);
    *conninfo = make_uri(db->run_dir);
    if (!*conninfo) {
        cdb_error_oom(err);
        goto fail;
    }
    free(log_dir);
    free(dir);
    return db;
fail:
    if (db) {
        leave_cluster(db);
        devdb_free(db);
    }
    free(log_dir);
    free(dir);
    return NULL;
}

void cdb_devdb_stop(cdb_devdb *db)
{
    if (!db)
        return;
    leave_cluster(db);
    devdb_free(db);
}
