"""The world the chaos driver breaks: one PostgreSQL 15 (synchronous_commit
on, so an answered commit survives an immediate shutdown), one Redis, and two
coredb instances A and B sharing them (same database, same Redis database,
same BACKUP_DIR), each with a short statement timeout so that a paused
PostgreSQL is given up quickly. Everything runs under the scratch dir of
tests/e2e/servers.py on free loopback ports, and stop() stops all of it, also
a server left paused by a failed fault (SIGCONT first).

The faults are methods here; each returns when the broken backend is back
(the moment recovery is measured from)."""
import os
import shutil
import signal
import subprocess
import time
import uuid

import psycopg2
import redis as redis_py

from servers import COREDB_BIN, TEST_JWT_SECRET, Coredb, PgServer, RedisServer, scratch_dir

PASSWORD = "correct-horse-battery"
STATEMENT_TIMEOUT_MS = 1000
# a pause must outlast the statement timeout and coredb's own deadline (+1 s)
PAUSE_S = STATEMENT_TIMEOUT_MS / 1000.0 + 1.0 + 2.5


def _children(ppid):
    """Pids whose parent is ppid (from /proc): a cluster's backends."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command may hold spaces and parentheses: fields follow the last ')'
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == ppid:
            out.append(int(name))
    return out


class World:
    def __init__(self):
        self.dir = os.path.join(scratch_dir(), f"chaos-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.dir)
        self.backup_dir = os.path.join(self.dir, "backups")
        self.stopped_pids = []      # paused by a fault, resumed by stop() if still paused
        self.pg = None
        self.redis = None
        self.inst = {}
        self.envs = {}
        try:
            self.pg = PgServer("pg-chaos", extra_opts="-c synchronous_commit=on")
            self.redis = RedisServer()
            self.db = self.pg.create_database("chaos")
            self.admin_email = f"chaos-root-{uuid.uuid4().hex[:8]}@example.com"
            # one after the other: the first applies the migrations and creates the admin
            for name in ("A", "B"):
                self.envs[name] = self._env(name)
                self.start(name)
        except BaseException:
            self.stop()      # what did start is stopped, then the failure goes on up
            raise

    def _env(self, name):
        return {
            "PORT": str(_free_port()), "DATABASE_URL": self.pg.url(self.db),
            "REDIS_URL": self.redis.url, "JWT_SECRET": TEST_JWT_SECRET,
            "COREDB_ADMIN_EMAIL": self.admin_email, "COREDB_ADMIN_PASSWORD": PASSWORD,
            "DB_POOL_MIN": "1", "DB_POOL_MAX": "6", "DB_POOL_ACQUIRE_TIMEOUT": "2000",
            "DB_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT_MS), "BACKUP_DIR": self.backup_dir,
            "LOG_LEVEL": "info", "PASSWORD_HASH_OPSLIMIT": "1",
            "PASSWORD_HASH_MEMLIMIT_KIB": "8192", "SESSION_MAX_PER_USER": "1000",
            "RATE_LIMIT_ANON": "0", "RATE_LIMIT_USER": "0", "RATE_LIMIT_PREMIUM": "0",
            "LOGIN_MAX_FAILURES": "1000", "LOGIN_MAX_FAILURES_PER_ADDRESS": "1000",
        }

    def start(self, name, sink=None):
        # same port and directory on a restart: the clients keep their URLs
        cwd = os.path.join(self.dir, f"coredb-{name}")
        if sink is None:
            self.inst[name] = Coredb(self.envs[name], cwd=cwd)
        else:
            self.inst[name] = SinkCoredb(self.envs[name], cwd, sink)

    def base(self, name):
        return f"http://127.0.0.1:{self.envs[name]['PORT']}"

    def sql(self, query, params=None):
        return self.pg.query(self.db, query, params)

    def redis_client(self):
        return redis_py.Redis(host="127.0.0.1", port=self.redis.port, db=0,
                              decode_responses=True, socket_timeout=5)

    # ---- faults: each returns the time the backend was back ----

    def pg_restart(self, mode):
        self.pg.restart(mode)
        return time.time()

    def pg_pause(self, seconds=PAUSE_S):
        postmaster = self._postmaster_pid()
        # the postmaster first, so that it forks nothing while its children are listed
        self._stop(postmaster)
        for pid in _children(postmaster):
            self._stop(pid)
        time.sleep(seconds)
        self._resume_all()
        return time.time()

    def pg_terminate(self, rounds=3):
        """pg_terminate_backend of every coredb backend, a few times in a row."""
        killed = 0
        conn = psycopg2.connect(host="127.0.0.1", port=self.pg.port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        try:
            for _ in range(rounds):
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                                "FROM pg_stat_activity WHERE datname = %s "
                                "AND application_name LIKE 'coredb%%' AND pid <> pg_backend_pid()",
                                (self.db,))
                    killed += cur.fetchone()[0]
                time.sleep(0.3)
        finally:
            conn.close()
        return time.time(), killed

    def redis_kill_restart(self, down_s=1.5):
        self.redis.proc.kill()
        self.redis.proc.wait(10)
        time.sleep(down_s)
        self.redis.start()   # same port, empty: no persistence, the data is lost
        return time.time()

    def redis_pause(self, seconds=PAUSE_S):
        self._stop(self.redis.proc.pid)
        time.sleep(seconds)
        self._resume_all()
        return time.time()

    def coredb_kill_restart(self, name, down_s=1.0):
        inst = self.inst[name]
        inst.proc.kill()
        inst.proc.wait(10)
        time.sleep(down_s)
        # the "backend" is coredb itself: its recovery counts from the restart,
        # its own start-up (migrations checked, pools filled) included
        back = time.time()
        self.start(name)     # waits for /health/live
        return back

    def coredb_log_sink(self, name, sink):
        """Restarts instance name (SIGTERM, must exit 0) with its log (stdout
        and stderr) going to sink: "/dev/full" (every write fails ENOSPC),
        "stall" (a pipe nobody reads: writes block once 64 KiB are queued) or
        None (its log file again). Returns (back, exit code of the stop)."""
        code = self.inst[name].stop(timeout=15)
        back = time.time()
        self.start(name, sink)
        return back, code

    def backup_dir_broken(self):
        """Root ignores permission bits, so chmod cannot make the directory
        unwritable here: the directory is moved away and a regular file put
        in its place, which fails mkdir and every create for root too."""
        away = self.backup_dir + ".away"
        if os.path.isdir(self.backup_dir):
            os.rename(self.backup_dir, away)
        with open(self.backup_dir, "w") as f:
            f.write("not a directory\n")

    def backup_dir_repaired(self):
        away = self.backup_dir + ".away"
        os.unlink(self.backup_dir)
        if os.path.isdir(away):
            os.rename(away, self.backup_dir)
        return time.time()

    # ---- helpers ----

    def _postmaster_pid(self):
        with open(os.path.join(self.pg.data, "postmaster.pid")) as f:
            return int(f.readline())

    def _stop(self, pid):
        try:
            os.kill(pid, signal.SIGSTOP)
            self.stopped_pids.append(pid)
        except ProcessLookupError:
            pass

    def _resume_all(self):
        # children before the postmaster: the reverse of the stop order
        for pid in reversed(self.stopped_pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stopped_pids = []

    def stop(self):
        """Stops everything this world started; returns the coredb logs' tails
        of instances that did not exit cleanly (sanitizer reports included)."""
        self._resume_all()
        problems = []
        for name, inst in self.inst.items():
            code = inst.stop()
            log = inst.log()
            bad = [m for m in ("AddressSanitizer", "LeakSanitizer", "runtime error:") if m in log]
            if code != 0 or bad:
                problems.append(f"coredb {name} exited {code} {bad}:\n{log[-3000:]}")
        if self.redis:
            self.redis.stop()
        if self.pg:
            self.pg.destroy()
        if os.path.isfile(self.backup_dir):
            os.unlink(self.backup_dir)
        shutil.rmtree(self.backup_dir + ".away", ignore_errors=True)
        return problems


class SinkCoredb(Coredb):
    """Coredb with its stdout and stderr on a sink instead of its log file
    (the log destination fault); log() reads a note saying where it went."""

    def __init__(self, env, cwd, sink):
        self.port = int(env["PORT"])
        self.dir = cwd
        os.makedirs(cwd, exist_ok=True)
        self.log_path = os.path.join(cwd, f"coredb-{self.port}-sink.log")
        with open(self.log_path, "w") as f:
            f.write(f"(the log of this run went to {sink})\n")
        self.env = dict(env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.stall_read = None
        if sink == "stall":
            self.stall_read, write_end = os.pipe()   # the read end is kept and never read
            out = os.fdopen(write_end, "wb")
        else:
            out = open(sink, "wb")
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DATABASE_", "POSTGRES_", "REDIS_", "DB_", "PG"))}
        full_env.update({"PORT": str(self.port), "PROMETHEUS_PORT": "0", "HOST": "127.0.0.1",
                         "HTTP_THREADS": "2", "COREDB_TEST_ROUTES": "1"})
        full_env.update(self.env)
        self.proc = subprocess.Popen([COREDB_BIN, "serve"], env=full_env, cwd=cwd, stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        self.wait_live()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        try:
            return super().stop(sig, timeout)
        finally:
            if self.stall_read is not None:
                os.close(self.stall_read)
                self.stall_read = None


def _free_port():
    from servers import free_port
    return free_port()
