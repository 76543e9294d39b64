"""Real PostgreSQL 15, Redis and coredb processes for the end-to-end suite.

Everything lives under $COREDB_TEST_TMP (made by scripts/run-tests.sh, or a
fresh temp dir) on free loopback ports. We run as root in CI and PostgreSQL
refuses root, so initdb and postgres run as Debian's `postgres` account.
initdb runs once into a template that each server copies, so a private
server for a destructive test costs a copy, not an initdb.
"""
import atexit
import collections
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import psycopg2
import requests

PG_BIN = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def scratch_dir():
    base = os.environ.get("COREDB_TEST_TMP")
    if not base:
        # pytest run by hand (scripts/run-tests.sh makes and removes its own):
        # ours to remove at exit, after the fixtures stopped their servers
        base = tempfile.mkdtemp(prefix="coredb-test.")
        os.environ["COREDB_TEST_TMP"] = base
        atexit.register(shutil.rmtree, base, True)
    os.chmod(base, 0o755)
    return base


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg_user():
    """preexec_fn and chown target: the postgres account when we are root."""
    if os.geteuid() != 0:
        return None, None
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def _run_pg(args, **kw):
    uid, gid = _as_pg_user()
    if uid is None:
        return subprocess.run(args, check=True, capture_output=True, **kw)
    return subprocess.run(["runuser", "-u", "postgres", "--"] + args, check=True,
                          capture_output=True, **kw)


_TEMPLATE = None


def _template_cluster():
    global _TEMPLATE
    if _TEMPLATE is None:
        path = os.path.join(scratch_dir(), "pg-template")
        if not os.path.exists(os.path.join(path, "PG_VERSION")):
            os.makedirs(path, exist_ok=True)
            uid, gid = _as_pg_user()
            if uid is not None:
                os.chown(path, uid, gid)
            os.chmod(path, 0o700)
            _run_pg([f"{PG_BIN}/initdb", "-D", path, "-U", "postgres", "-A", "trust",
                     "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"])
        _TEMPLATE = path
    return _TEMPLATE


class PgServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>."""

    def __init__(self, name="pg", extra_opts=""):
        self.extra_opts = extra_opts   # later -c settings override the defaults below
        self.dir = os.path.join(scratch_dir(), f"{name}-{uuid.uuid4().hex[:8]}")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        os.makedirs(self.dir)
        shutil.copytree(_template_cluster(), self.data, symlinks=True)
        uid, gid = _as_pg_user()
        if uid is not None:
            for root, dirs, files in os.walk(self.dir):
                os.chown(root, uid, gid)
                for f in files:
                    os.chown(os.path.join(root, f), uid, gid)
        os.chmod(self.data, 0o700)
        self.start()

    def _opts(self):
        return f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off " \
               f"-c max_connections=200 -c synchronous_commit=off {self.extra_opts}"

    def start(self):
        _run_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                 "-w", "-o", self._opts(), "start"])

    def restart(self, mode="immediate"):
        """pg_ctl restart: with "immediate", every backend dies mid-statement (a crash)."""
        self._forget_connections()
        _run_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                 "-m", mode, "-w", "-o", self._opts(), "restart"])

    def stop(self, mode="fast"):
        self._forget_connections()
        _run_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"])

    def destroy(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass

    def url(self, db="postgres", user="postgres"):
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    # the tests' own connections, named so that a count of coredb's backends can leave them out
    APPLICATION_NAME = "e2e-harness"

    def connect(self, db="postgres"):
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db,
                                application_name=self.APPLICATION_NAME)
        conn.autocommit = True
        return conn

    def create_database(self, prefix="t"):
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.query("postgres", f'CREATE DATABASE "{name}"')
        return name

    # query() keeps its connections, per thread, to the last few databases:
    # a connection per query (a backend forked, authenticated, its catalogs
    # read) cost most of some modules' time on a slow machine.
    KEPT_PER_THREAD = 4

    def _kept(self):
        local = self.__dict__.setdefault("_local", threading.local())
        if not hasattr(local, "conns"):
            local.conns = collections.OrderedDict()
        return local.conns

    def _forget_connections(self):
        kept = self._kept()
        for conn in kept.values():
            conn.close()
        kept.clear()

    def query(self, db, sql, params=None):
        """sql as the superuser on a kept autocommit connection to db. A kept
        connection the server has ended since (a restart, pg_terminate_backend)
        fails before anything runs on it: it is replaced and sql sent again."""
        kept = self._kept()
        conn = kept.pop(db, None)
        reused = conn is not None and not conn.closed
        if not reused:
            conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description else None
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if not (reused and conn.closed):
                if not conn.closed:
                    kept[db] = conn
                raise
            return self.query(db, sql, params)
        kept[db] = conn
        while len(kept) > self.KEPT_PER_THREAD:
            kept.popitem(last=False)[1].close()
        return rows


class RedisServer:
    def __init__(self):
        self.dir = os.path.join(scratch_dir(), f"redis-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.dir)
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--pidfile", os.path.join(self.dir, "redis.pid")],
            stdout=open(os.path.join(self.dir, "log"), "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    destroy = stop

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


COREDB_BIN = os.environ.get("COREDB_BIN", os.path.join(ROOT, "build", "coredb"))
TEST_JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


class Coredb:
    """The real coredb binary serving HTTP on a free port."""

    def __init__(self, env, cwd=None, wait=True, args=("serve",), max_files=None, log_fd=None):
        self.port = int(env.get("PORT") or free_port())
        self.dir = cwd or os.path.join(scratch_dir(), f"coredb-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, f"coredb-{self.port}.log")
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DATABASE_", "POSTGRES_", "REDIS_", "DB_", "PG"))}
        full_env.update({"PORT": str(self.port), "PROMETHEUS_PORT": "0", "HOST": "127.0.0.1",
                         "HTTP_THREADS": "2", "COREDB_TEST_ROUTES": "1"})
        full_env.update({k: str(v) for k, v in env.items()})
        self.env = full_env
        self.base = f"http://127.0.0.1:{self.port}"
        def limit_files():  # max_files: the open-file limit, soft and hard
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))
        # log_fd: where its log goes instead of log_path (a pipe, say)
        self.proc = subprocess.Popen([COREDB_BIN] + list(args), env=full_env, cwd=self.dir,
                                     stdout=log_fd if log_fd is not None else open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=limit_files if max_files else None)
        if wait:
            self.wait_live()

    def wait_live(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coredb exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.base + "/health/live", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"coredb did not come up:\n{self.log()}")

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def get(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.get(self.base + path, **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.post(self.base + path, **kw)

    def request(self, method, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.request(method, self.base + path, **kw)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the process; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stop_clean(self):
        """Stops it and asserts a clean exit: code 0, no sanitizer report."""
        code = self.stop()
        log = self.log()
        assert "AddressSanitizer" not in log and "LeakSanitizer" not in log, log[-4000:]
        assert "runtime error:" not in log, log[-4000:]
        assert code == 0, f"coredb exited {code}:\n{log[-4000:]}"


def run_cli(args, env, cwd=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("DATABASE_", "POSTGRES_", "REDIS_", "DB_", "PG"))}
    full_env.update({k: str(v) for k, v in env.items()})
    return subprocess.run([COREDB_BIN] + list(args), env=full_env, cwd=cwd or scratch_dir(),
                          capture_output=True, text=True, timeout=timeout)


class Haproxy:
    """Debian's haproxy in the foreground (-db) in front of coredb instances
    on 127.0.0.1, run with the configuration docs/deployment.md shows
    (roundrobin, health checks on GET /health/ready) where only the
    addresses and the check timings are changed, and its stats listener,
    whose CSV says each server's state and request count."""

    def __init__(self, backends, inter_ms=500, fall=2, rise=2):
        self.dir = os.path.join(scratch_dir(), f"haproxy-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.dir)
        self.port = free_port()
        self.stats_port = free_port()
        self.backends = list(backends)          # [(name, port)]
        self.cfg_path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.cfg_path, "w") as f:
            f.write(self.config(inter_ms, fall, rise))
        check = subprocess.run(["haproxy", "-c", "-q", "-f", self.cfg_path], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stdout}{check.stderr}")
        self.log_path = os.path.join(self.dir, "log")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.cfg_path],
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.wait_up(len(self.backends))

    def config(self, inter_ms, fall, rise):
        """The configuration docs/deployment.md shows, with test addresses and timings."""
        import re
        with open(os.path.join(ROOT, "docs", "deployment.md")) as f:
            doc = f.read()
        blocks = re.findall(r"```haproxy\n(.*?)```", doc, re.S)
        assert len(blocks) == 1, "docs/deployment.md: one haproxy block"
        cfg = blocks[0]
        servers = "".join(f"    server {name} 127.0.0.1:{port} check\n" for name, port in self.backends)
        changes = [
            (r"^    bind 127\.0\.0\.1:\d+\n", f"    bind 127.0.0.1:{self.stats_port}\n"),
            (r"^    bind :\d+\n", f"    bind 127.0.0.1:{self.port}\n"),
            (r"^    default-server inter \S+ fall \d+ rise \d+\n",
             f"    default-server inter {inter_ms}ms fall {fall} rise {rise}\n"),
            (r"(?:^    server c\d+ \S+ check\n)+", servers),
        ]
        for pattern, replacement in changes:
            cfg, n = re.subn(pattern, lambda m: replacement, cfg, flags=re.M)
            assert n == 1, f"docs/deployment.md's haproxy block: {pattern!r} matched {n} times"
        return cfg

    def stats(self):
        """{server name: {"status": "UP"/"DOWN"/..., "stot": requests served}} from the CSV."""
        text = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        lines = text.splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == "coredb" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                out[row["svname"]] = {"status": row["status"], "stot": int(row["stot"] or 0)}
        return out

    def wait_up(self, count, timeout=30):
        """Until count servers are UP (health checks passed)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.proc.returncode}: {open(self.log_path).read()}")
            try:
                if sum(1 for s in self.stats().values() if s["status"] == "UP") >= count:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"haproxy: fewer than {count} servers UP: {self.stats()}")

    def wait_status(self, name, status, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.stats().get(name, {}).get("status", "").startswith(status):
                return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy: {name} not {status}: {self.stats()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    destroy = stop


class RedisSentinel:
    """Debian's redis-sentinel on loopback watching one master (quorum 1, so
    this one sentinel alone decides a failover), with short timeouts so a
    failover takes seconds. The sentinel rewrites its own config file."""

    def __init__(self, master_port, name="mymaster", down_after_ms=1000, failover_timeout_ms=3000,
                 password=None, auth_pass=None):
        self.dir = os.path.join(scratch_dir(), f"sentinel-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.dir)
        self.port = free_port()
        self.name = name
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {name} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                    f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {name} 1\n")
            if password:
                f.write(f"requirepass {password}\n")
            if auth_pass:   # the Redis servers' requirepass
                f.write(f"sentinel auth-pass {name} {auth_pass}\n")
        self.password = password
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["redis-sentinel", self.conf],
                                     stdout=open(os.path.join(self.dir, "log"), "ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-sentinel did not start")

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           socket_timeout=2, password=self.password)

    def master_port(self):
        """The master's port as this sentinel sees it now."""
        host, port = self.client().execute_command("SENTINEL", "get-master-addr-by-name", self.name)
        return int(port)

    def log(self):
        with open(os.path.join(self.dir, "log"), errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    destroy = stop

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"


class PgReplica(PgServer):
    """A streaming hot standby of a PgServer on its own free port (issue 14):
    pg_basebackup -R (PostgreSQL 15 defaults already give the primary
    wal_level=replica and max_wal_senders, and initdb's pg_hba.conf lets
    127.0.0.1 replicate), started like PgServer as the postgres account."""

    def __init__(self, primary, name="pg-replica"):
        self.primary = primary
        self.extra_opts = "-c hot_standby=on -c max_standby_streaming_delay=5s"
        self.dir = os.path.join(scratch_dir(), f"{name}-{uuid.uuid4().hex[:8]}")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        os.makedirs(self.dir)
        uid, gid = _as_pg_user()
        if uid is not None:
            os.chown(self.dir, uid, gid)
        _run_pg([f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                 "-D", self.data, "-R", "-X", "stream", "-c", "fast"], timeout=120)
        os.chmod(self.data, 0o700)
        self.start()
        self.wait_streaming()

    def in_recovery(self):
        return self.query("postgres", "SELECT pg_is_in_recovery()")[0][0]

    def pause(self):
        self.query("postgres", "SELECT pg_wal_replay_pause()")

    def resume(self):
        self.query("postgres", "SELECT pg_wal_replay_resume()")

    def replay_lsn(self):
        return self.query("postgres", "SELECT pg_last_wal_replay_lsn()::text")[0][0]

    def wait_streaming(self, timeout=30):
        """Until the primary sees this standby streaming."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            rows = self.primary.query("postgres", "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            if rows[0][0] > 0:
                return
            time.sleep(0.1)
        raise RuntimeError("replica did not start streaming")

    def wait_caught_up(self, timeout=30):
        """Until this standby has replayed everything the primary committed so far (the insert
        position: with synchronous_commit=off the write position may not include the last commits)."""
        target = self.primary.query("postgres", "SELECT pg_current_wal_insert_lsn()::text")[0][0]
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = self.query("postgres", "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0]
            if done:
                return
            time.sleep(0.05)
        raise RuntimeError("replica did not catch up")
