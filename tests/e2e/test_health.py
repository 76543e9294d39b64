"""GET /health, /health/live, /health/ready against real PostgreSQL and Redis."""
import re
import time

from servers import Coredb
from conftest import base_env


def test_health_up_shape(coredb_shared):
    resp = coredb_shared.get("/health")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "UP"
    assert body["service"] == "core-database-service"
    assert body["version"] == "1.0.0"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["timestamp"])
    pgc = body["checks"]["postgresql"]
    assert pgc["status"] == "UP"
    assert re.match(r"^\d+ms$", pgc["responseTime"])
    conns = pgc["connections"]
    assert conns["total"] == conns["active"] + conns["idle"]
    assert conns["total"] >= 1
    rc = body["checks"]["redis"]
    assert rc["status"] == "UP" and re.match(r"^\d+ms$", rc["responseTime"])
    assert rc["memory"].endswith(("B", "K", "M", "G"))


def test_live_and_ready(coredb_shared):
    assert coredb_shared.get("/health/live").json() == {"status": "UP"}
    ready = coredb_shared.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["migrations"]["pending"] == 0


def test_redis_not_configured_is_omitted(start_coredb):
    inst = start_coredb(redis=False)
    body = inst.get("/health").json()
    assert body["status"] == "UP"
    assert "redis" not in body["checks"]


def test_redis_down_is_degraded_then_recovers(start_coredb, pg, private_redis):
    name = pg.create_database()
    inst = Coredb(base_env(pg, name, private_redis))
    try:
        assert inst.get("/health").json()["status"] == "UP"
        private_redis.stop()
        resp = inst.get("/health")
        assert resp.status_code == 200
        assert resp.json()["status"] == "DEGRADED"
        assert resp.json()["checks"]["redis"]["status"] == "DOWN"
        private_redis.start()
        deadline = time.time() + 10
        while time.time() < deadline and inst.get("/health").json()["status"] != "UP":
            time.sleep(0.2)
        assert inst.get("/health").json()["status"] == "UP"
    finally:
        inst.stop_clean()


def test_postgres_down_is_503_and_recovers(private_pg, redis_server):
    name = private_pg.create_database()
    inst = Coredb(base_env(private_pg, name, redis_server, DB_POOL_ACQUIRE_TIMEOUT=1000))
    try:
        assert inst.get("/health").status_code == 200
        private_pg.stop()
        resp = inst.get("/health")
        assert resp.status_code == 503
        assert resp.json()["status"] == "DOWN"
        assert resp.json()["checks"]["postgresql"]["status"] == "DOWN"
        ready = inst.get("/health/ready")
        assert ready.status_code == 503
        # a pooled request during the outage: 503 DATABASE_UNAVAILABLE, fast
        t0 = time.time()
        slept = inst.post("/test/sleep", json={"seconds": 0})
        assert slept.status_code == 503
        assert slept.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
        assert time.time() - t0 < 5
        assert inst.get("/health/live").status_code == 200
        private_pg.start()
        deadline = time.time() + 15
        while time.time() < deadline and inst.get("/health").status_code != 200:
            time.sleep(0.2)
        assert inst.get("/health").status_code == 200
        assert inst.post("/test/sleep", json={"seconds": 0}).status_code == 200
    finally:
        inst.stop_clean()


def test_starts_while_postgres_is_down_then_serves(private_pg, redis_server):
    """The pool connects in the background; migrations wait for PostgreSQL (DB_CONNECT_RETRIES)."""
    name = private_pg.create_database()
    private_pg.stop()
    inst = Coredb(base_env(private_pg, name, redis_server, DB_CONNECT_RETRIES=10), wait=False)
    try:
        time.sleep(1.0)
        private_pg.start()
        inst.wait_live(60)
        assert inst.get("/health/ready").status_code == 200
    finally:
        inst.stop_clean()
