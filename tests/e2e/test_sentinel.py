"""Redis high availability through Redis Sentinel (REDIS_SENTINELS,
REDIS_MASTER_NAME, REDIS_SENTINEL_PASSWORD), against two real redis-servers
(a master and its replica) and Debian's redis-sentinel on loopback.

The failover test kills the master with SIGKILL while a writer keeps
committing transactions with Redis operations, waits for the sentinel to
promote the replica, and then checks where things landed: the session
still works, new Redis operations go to the new master at once, every
committed transaction's Redis operation is on the new master (the outbox
lost nothing), and /health and /metrics show the move. The other tests
cover configuration errors, sentinels that cannot be reached, and
sentinels that answer wrongly (unknown master name, not a sentinel at all,
a replica's address, garbage)."""
import json
import signal
import socket
import threading
import time

import pytest
import redis

from datahelp import (admin_of, pg_insert, rop, rset, scalar, start_instance, tx, user, wait_for)
from servers import TEST_JWT_SECRET, RedisSentinel, RedisServer, free_port, run_cli

GOOD = {"DATABASE_URL": "postgresql://u:pw@127.0.0.1:5/db", "JWT_SECRET": TEST_JWT_SECRET}


def client(port, db=0):
    return redis.Redis(host="127.0.0.1", port=port, db=db, decode_responses=True, socket_timeout=2)


def redis_check(inst):
    """The public /health's status, and the admin's detailed Redis check
    (the master's address and why it is down stay out of the public one)."""
    body = inst.get("/health", timeout=10).json()
    public = body["checks"]["redis"]
    assert "master" not in public and "detail" not in public, public
    if not hasattr(inst, "sentinel_admin"):
        inst.sentinel_admin = admin_of(inst)
    resp = inst.get("/api/v1/admin/health/connection", headers=inst.sentinel_admin.headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return body["status"], resp.json()["redis"]


def wait_replica_known(sentinel, master, replica, timeout=20):
    """Until the replica is in sync and the sentinel lists it (a failover needs both)."""
    def ready():
        info = client(replica.port).info("replication")
        if info.get("master_link_status") != "up":
            return False
        # the sentinel learns replicas from the master's INFO
        reps = sentinel.client().execute_command("SENTINEL", "replicas", sentinel.name)
        for r in reps:
            fields = dict(zip(r[::2], r[1::2])) if isinstance(r, list) else r
            if str(fields.get("port")) == str(replica.port) and "disconnected" not in fields.get("flags", ""):
                return True
        return False
    assert wait_for(ready, timeout=timeout, step=0.2), sentinel.log()[-2000:]


# ---- configuration ----

@pytest.mark.parametrize("value", [
    "127.0.0.1",                        # no port
    "127.0.0.1:0",
    "127.0.0.1:99999",
    "redis://127.0.0.1:26379",          # a URL, not host:port
    ":sekretpw@127.0.0.1:26379",        # credentials belong in REDIS_SENTINEL_PASSWORD
    "127.0.0.1:26379,,127.0.0.1:26380",
    "127.0.0.1:26379 127.0.0.1:26380",
    "h;FLUSHALL:26379",
    ",".join(f"127.0.0.1:{26000 + i}" for i in range(17)),
])
def test_bad_sentinel_list_exits_2(value):
    for cmd in (["serve"], ["config"]):
        proc = run_cli(cmd, dict(GOOD, REDIS_SENTINELS=value), timeout=30)
        assert proc.returncode == 2, (cmd, value, proc.stdout, proc.stderr)
        assert "REDIS_SENTINELS" in proc.stderr
        assert "sekretpw" not in proc.stderr


@pytest.mark.parametrize("env", [
    {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_MASTER_NAME": "my master"},
    {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_MASTER_NAME": "m\r\nFLUSHALL"},
    {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_MASTER_NAME": "x" * 65},
    {"REDIS_SENTINEL_PASSWORD": "sekretpw"},   # a password without sentinels
])
def test_bad_sentinel_settings_exit_2(env):
    proc = run_cli(["config"], dict(GOOD, **env), timeout=30)
    assert proc.returncode == 2, (env, proc.stdout, proc.stderr)
    assert ("REDIS_MASTER_NAME" if "REDIS_MASTER_NAME" in env else "REDIS_SENTINEL_PASSWORD") in proc.stderr
    assert "sekretpw" not in proc.stderr and "FLUSHALL" not in proc.stderr


def test_config_shows_sentinels_and_hides_their_password(tmp_path):
    pwfile = tmp_path / "sentinel-pw"
    pwfile.write_text("sekretpw\n")
    env = dict(GOOD, REDIS_SENTINELS="127.0.0.1:26379,[::1]:26380,sentinel-2.internal:26379",
               REDIS_SENTINEL_PASSWORD_FILE=str(pwfile))
    proc = run_cli(["config", "--json"], env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "sekretpw" not in proc.stdout
    cfg = json.loads(proc.stdout)
    assert cfg["REDIS_SENTINELS"] == "127.0.0.1:26379,[::1]:26380,sentinel-2.internal:26379"
    assert cfg["REDIS_MASTER_NAME"] == "mymaster"
    assert cfg["REDIS_SENTINEL_PASSWORD"] == "[redacted]"
    assert cfg["sources"]["REDIS_SENTINEL_PASSWORD"] == "file"


# ---- sentinels that cannot be reached or answer wrongly ----

def test_unreachable_sentinels_start_degraded(pg):
    """Like a Redis that is down at start: coredb serves from PostgreSQL,
    /health says DEGRADED and why, Redis operations wait in the outbox."""
    dead = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    inst = start_instance(pg, REDIS_SENTINELS=dead, REDIS_MASTER_NAME="mymaster")
    try:
        a = user(inst)   # login works without Redis
        assert a.me().status_code == 200
        t0 = time.time()
        out = tx(inst, a, [pg_insert("projects", {"title": "no redis", "user_id": a.id}),
                           rset("k", "v")])
        assert out.status_code == 200, out.text
        assert time.time() - t0 < 5, "unreachable sentinels must not stall a transaction"
        assert out.json()["results"][1]["status"] == "pending", out.text
        assert scalar(inst, "SELECT count(*) FROM coredb.redis_outbox WHERE key LIKE %s",
                      (f"%{a.id}:k",)) == 1
        status, rd = redis_check(inst)
        assert status == "DEGRADED" and rd["status"] == "DOWN", rd
        assert rd["master"] is None and rd["masterName"] == "mymaster", rd
        assert "sentinel" in rd["detail"] and dead.split(",")[1] in rd["detail"], rd
        assert "redis_unavailable" in inst.log()
    finally:
        inst.stop_clean()


class FakeSentinel:
    """A TCP server on loopback that answers every command with one fixed
    RESP reply: a hostile or broken "sentinel"; reply None: one that never
    answers (holds each connection 2 s)."""

    def __init__(self, reply):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    if conn.recv(4096):
                        if self.reply is None:
                            time.sleep(2)
                        else:
                            conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def test_hostile_sentinel_replies(pg, redis_server):
    """Wrong master name, a plain Redis instead of a sentinel, garbage, and a
    replica's address: each is a clear reason in /health and the log, the
    process stays up, and the next sentinel in the list is asked."""
    real_sentinel = RedisSentinel(redis_server.port, name="realmaster", down_after_ms=5000)
    replica = RedisServer()
    client(replica.port).execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    fakes = {
        "garbage": FakeSentinel(b"*2\r\n$9\r\nevil;host\r\n$5\r\n99999\r\n"),
        "replica": FakeSentinel(f"*2\r\n$9\r\n127.0.0.1\r\n${len(str(replica.port))}\r\n"
                                f"{replica.port}\r\n".encode()),
        "nested": FakeSentinel(b"*2\r\n*1\r\n:1\r\n$1\r\n1\r\n"),
        "silent": FakeSentinel(None),
    }
    cases = [
        (real_sentinel.address, "does not know master \"othername\""),
        (f"127.0.0.1:{redis_server.port}", "refused: ERR"),   # not a sentinel
        (f"127.0.0.1:{fakes['garbage'].port}", "not a host and port"),
        (f"127.0.0.1:{fakes['nested'].port}", "not a host and port"),
        (f"127.0.0.1:{fakes['replica'].port}", "is not a master"),
        # a sentinel that never answers costs its 500 ms timeout, not a hang
        (f"127.0.0.1:{fakes['silent'].port}", f"127.0.0.1:{fakes['silent'].port}: no answer within 500 ms"),
    ]
    try:
        for sentinels, reason in cases:
            inst = start_instance(pg, REDIS_SENTINELS=sentinels, REDIS_MASTER_NAME="othername")
            try:
                a = user(inst)
                assert a.me().status_code == 200
                t0 = time.time()
                status, rd = redis_check(inst)
                assert time.time() - t0 < 3, (sentinels, time.time() - t0)
                assert status == "DEGRADED" and rd["status"] == "DOWN", (sentinels, rd)
                assert reason in rd.get("detail", ""), (sentinels, rd)
                # the log is JSON lines: quotes inside a message are escaped
                assert json.dumps(reason)[1:-1] in inst.log(), inst.log()[-2000:]
            finally:
                inst.stop_clean()
        # a bad sentinel first in the list does not hide a good one after it
        good = f"127.0.0.1:{fakes['garbage'].port},{real_sentinel.address}"
        inst = start_instance(pg, REDIS_SENTINELS=good, REDIS_MASTER_NAME="realmaster",
                              REDIS_URL="redis://127.0.0.1:1/7")
        try:
            a = user(inst)
            t0 = time.time()
            for i in range(5):
                out = tx(inst, a, [rset("through", "sentinel")])
                assert out.status_code == 200 and out.json()["results"][0]["status"] == "success", out.text
            # a master without replicas: one short wait for a confirmation, then none for a while
            assert time.time() - t0 < 2, time.time() - t0
            assert inst.log().count("redis_no_replica") == 1
            # REDIS_URL's host is ignored, its database number applies
            assert client(redis_server.port, 7).get(f"app:user:{a.id}:through") == "sentinel"
            status, rd = redis_check(inst)
            assert rd["status"] == "UP" and rd["master"] == f"127.0.0.1:{redis_server.port}", rd
        finally:
            inst.stop_clean()
    finally:
        for f in fakes.values():
            f.close()
        replica.destroy()
        real_sentinel.destroy()


def test_sentinel_password(pg, tmp_path):
    """REDIS_SENTINEL_PASSWORD(_FILE) is sent to the sentinels, REDIS_URL's
    password to the Redis server; a wrong one is a clear reason that never
    shows a password."""
    redis_server = RedisServer()
    client(redis_server.port).config_set("requirepass", "server-pw-3")
    sentinel = RedisSentinel(redis_server.port, name="pwmaster", down_after_ms=5000,
                             password="sentinel-pw-1", auth_pass="server-pw-3")
    try:
        wrong = start_instance(pg, REDIS_SENTINELS=sentinel.address, REDIS_MASTER_NAME="pwmaster",
                               REDIS_SENTINEL_PASSWORD="not-the-pw-2")
        try:
            status, rd = redis_check(wrong)
            assert status == "DEGRADED" and "AUTH: authentication failed" in rd["detail"], rd
            assert "not-the-pw-2" not in wrong.log() and "not-the-pw-2" not in json.dumps(rd)
        finally:
            wrong.stop_clean()
        pwfile = tmp_path / "pw"
        pwfile.write_text("sentinel-pw-1\n")
        # the sentinel is right, the server's password is not
        bad = start_instance(pg, REDIS_SENTINELS=sentinel.address, REDIS_MASTER_NAME="pwmaster",
                             REDIS_SENTINEL_PASSWORD_FILE=str(pwfile), REDIS_URL="redis://:wrong-pw-4@x:1/5")
        try:
            status, rd = redis_check(bad)
            assert status == "DEGRADED" and rd["detail"] == "AUTH: authentication failed", rd
            assert "wrong-pw-4" not in bad.log() and "sentinel-pw-1" not in bad.log()
        finally:
            bad.stop_clean()
        inst = start_instance(pg, REDIS_SENTINELS=sentinel.address, REDIS_MASTER_NAME="pwmaster",
                              REDIS_SENTINEL_PASSWORD_FILE=str(pwfile),
                              REDIS_URL="redis://:server-pw-3@x:1/5")
        try:
            a = user(inst)
            out = tx(inst, a, [rset("pw", "ok")])
            assert out.json()["results"][0]["status"] == "success", out.text
            authed = redis.Redis(host="127.0.0.1", port=redis_server.port, db=5, password="server-pw-3",
                                 decode_responses=True)
            assert authed.get(f"app:user:{a.id}:pw") == "ok"
            status, rd = redis_check(inst)
            assert rd["status"] == "UP" and rd["master"] == f"127.0.0.1:{redis_server.port}", rd
            text = inst.log() + json.dumps(rd)
            assert "sentinel-pw-1" not in text and "server-pw-3" not in text
        finally:
            inst.stop_clean()
    finally:
        sentinel.destroy()
        redis_server.destroy()


def test_demoted_master_is_dropped(pg):
    """A master demoted behind coredb's back (REPLICAOF, connections kept)
    answers writes with READONLY: coredb drops the connection, asks the
    sentinel again, refuses the server its ROLE check finds a replica, keeps
    the operations in the outbox, and applies them when there is a master."""
    node = RedisServer()
    sentinel = RedisSentinel(node.port, down_after_ms=5000)
    try:
        inst = start_instance(pg, REDIS_SENTINELS=sentinel.address)
        try:
            a = user(inst)
            ns = f"app:user:{a.id}:"
            out = tx(inst, a, [rset("before", "1")])
            assert out.json()["results"][0]["status"] == "success", out.text
            client(node.port).execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            statuses = [tx(inst, a, [rset(f"during{i}", "2")]).json()["results"][0]["status"]
                        for i in range(3)]
            assert statuses == ["pending"] * 3, statuses
            assert "READONLY" in inst.log()
            assert wait_for(lambda: "is not a master" in (redis_check(inst)[1].get("detail") or ""),
                            timeout=10), redis_check(inst)
            client(node.port).execute_command("REPLICAOF", "NO", "ONE")
            node_client = client(node.port)
            assert wait_for(lambda: all(node_client.get(ns + f"during{i}") == "2" for i in range(3)),
                            timeout=15), scalar(inst, "SELECT count(*) FROM coredb.redis_outbox")
            out = tx(inst, a, [rset("after", "3")])
            assert out.json()["results"][0]["status"] == "success", out.text
            assert node_client.get(ns + "after") == "3"
        finally:
            inst.stop_clean()
    finally:
        sentinel.destroy()
        node.destroy()


# ---- failover ----

def metric(inst, admin, name):
    text = inst.get("/metrics", headers=admin.headers).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_failover_keeps_sessions_and_outbox_loses_nothing(pg):
    master, replica = RedisServer(), RedisServer()
    client(replica.port).execute_command("REPLICAOF", "127.0.0.1", str(master.port))
    sentinel = RedisSentinel(master.port, down_after_ms=1000, failover_timeout_ms=3000)
    inst = None
    try:
        wait_replica_known(sentinel, master, replica)
        inst = start_instance(pg, REDIS_SENTINELS=sentinel.address, REDIS_MASTER_NAME=sentinel.name,
                              REDIS_URL="redis://127.0.0.1:1/3")
        admin = admin_of(inst)
        a = user(inst)
        ns = f"app:user:{a.id}:"
        assert a.me().status_code == 200
        status, rd = redis_check(inst)
        assert status == "UP" and rd["master"] == f"127.0.0.1:{master.port}", rd
        assert rd["masterChanges"] == 0 and rd["masterName"] == "mymaster", rd
        assert metric(inst, admin, "coredb_redis_master_changes_total") == 0

        committed = {}     # key -> value of every transaction that answered 200
        lock = threading.Lock()

        def commit(i):
            key = f"k{i}"
            resp = tx(inst, a, [rset(key, f"v{i}"), rop("incr", "ctr")], timeout=15)
            assert resp.status_code == 200, resp.text
            with lock:
                committed[key] = f"v{i}"
            return [r["status"] for r in resp.json()["results"]]

        for i in range(10):
            assert commit(i) == ["success", "success"]
        old = client(master.port, 3)
        assert old.get(ns + "k9") == "v9" and old.get(ns + "ctr") == "10"
        # the session's Redis copy is on the master; let the replica have it all
        sid_keys = old.keys("coredb:session:*")
        assert sid_keys, "no session copy in Redis"
        assert old.execute_command("WAIT", 1, 2000) == 1
        # the outbox rows were deleted only after the replica confirmed them (WAIT)
        assert old.info("commandstats")["cmdstat_wait"]["calls"] >= 10

        # a writer keeps committing through the failover
        stop = threading.Event()
        errors = []

        def writer():
            i = 100
            deadline = time.time() + 60
            while not stop.is_set() and time.time() < deadline and i < 400:
                try:
                    commit(i)
                except Exception as e:   # noqa: BLE001 (reported below)
                    errors.append(repr(e))
                i += 1
                time.sleep(0.05)

        w = threading.Thread(target=writer)
        w.start()
        time.sleep(0.5)
        master.proc.send_signal(signal.SIGKILL)
        master.proc.wait(10)
        t_kill = time.time()
        assert wait_for(lambda: sentinel.master_port() == replica.port, timeout=30, step=0.2), \
            sentinel.log()[-3000:]
        t_promoted = time.time()

        def following():
            _, rd = redis_check(inst)
            return rd["status"] == "UP" and rd["master"] == f"127.0.0.1:{replica.port}"
        assert wait_for(following, timeout=20, step=0.2), redis_check(inst)
        t_followed = time.time()
        time.sleep(1)
        stop.set()
        w.join(30)
        assert not w.is_alive()
        assert errors == [], errors[:3]

        new = client(replica.port, 3)
        # new transactions' Redis operations land on the new master at once
        for i in range(200, 205):
            assert commit(i) == ["success", "success"]
            assert new.get(ns + f"k{i}") == f"v{i}"
        # the session still works, and its Redis copy is on the new master
        assert a.me().status_code == 200
        assert any(new.get(k) == a.id for k in sid_keys), [new.get(k) for k in sid_keys]
        assert a.relogin()["access_token"]
        # the outbox lost nothing: every committed transaction's Redis ops are there
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.redis_outbox") == 0,
                        timeout=15), scalar(inst, "SELECT count(*) FROM coredb.redis_outbox")
        missing = {k: v for k, v in committed.items() if new.get(ns + k) != v}
        assert missing == {}, (len(committed), missing)
        # incr is applied at least once (a reply lost with the master may repeat one)
        assert int(new.get(ns + "ctr")) >= len(committed), (new.get(ns + "ctr"), len(committed))
        assert len(committed) >= 20, len(committed)

        status, rd = redis_check(inst)
        assert status == "UP" and rd["masterChanges"] >= 1, rd
        assert metric(inst, admin, "coredb_redis_master_changes_total") >= 1
        log = inst.log()
        assert "redis_master_changed" in log and f"to 127.0.0.1:{replica.port}" in log
        print(f"\nfailover: promoted {t_promoted - t_kill:.1f} s after the kill, "
              f"coredb on the new master {t_followed - t_promoted:.1f} s later; "
              f"{len(committed)} transactions committed")
    finally:
        if inst is not None:
            inst.stop_clean()
        sentinel.destroy()
        replica.destroy()
        master.destroy()


@pytest.mark.parametrize("min_replicas", [False, True])
def test_planned_failover_old_master_alive(pg, min_replicas):
    """SENTINEL FAILOVER (maintenance): the old master stays up, and a master,
    until the sentinel demotes it (~10 s later). Writes coredb made there
    after the promotion are not confirmed by a replica (WAIT), so their
    outbox rows stay until coredb reaches the new master. With
    min-replicas-to-write 1 (docs/redis-ha.md) the old master refuses them
    outright (NOREPLICAS). Either way every committed operation ends up on
    the new master."""
    master, replica = RedisServer(), RedisServer()
    if min_replicas:
        # on the old master only, so the new one (without a replica until
        # the sentinel demotes the old one) takes writes at once
        client(master.port).config_set("min-replicas-to-write", 1)
    client(replica.port).execute_command("REPLICAOF", "127.0.0.1", str(master.port))
    sentinel = RedisSentinel(master.port, down_after_ms=5000)
    inst = None
    try:
        wait_replica_known(sentinel, master, replica)
        inst = start_instance(pg, REDIS_SENTINELS=sentinel.address)
        a = user(inst)
        ns = f"app:user:{a.id}:"
        committed, stop = [], threading.Event()

        def writer():
            i, deadline = 0, time.time() + 40
            while not stop.is_set() and time.time() < deadline:
                resp = tx(inst, a, [rset(f"p{i}", str(i))], timeout=15)
                assert resp.status_code == 200, resp.text
                committed.append(i)
                i += 1
                time.sleep(0.03)

        w = threading.Thread(target=writer)
        w.start()
        time.sleep(0.5)
        sentinel.client().execute_command("SENTINEL", "FAILOVER", sentinel.name)
        assert wait_for(lambda: sentinel.master_port() == replica.port, timeout=20, step=0.2), \
            sentinel.log()[-3000:]

        def following():
            _, rd = redis_check(inst)
            return rd["status"] == "UP" and rd["master"] == f"127.0.0.1:{replica.port}"
        assert wait_for(following, timeout=15, step=0.2), redis_check(inst)
        time.sleep(1)
        stop.set()
        w.join(30)
        assert not w.is_alive() and len(committed) >= 20, len(committed)
        new = client(replica.port)
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.redis_outbox") == 0, timeout=15)
        missing = [i for i in committed if new.get(ns + f"p{i}") != str(i)]
        assert missing == [], (len(committed), missing)
        _, rd = redis_check(inst)
        assert rd["masterChanges"] >= 1, rd
    finally:
        if inst is not None:
            inst.stop_clean()
        sentinel.destroy()
        replica.destroy()
        master.destroy()
