"""A session ended while its instance cannot reach Redis stays ended on every
instance (found by the chaos driver, tests/chaos).

Instance A reaches Redis and keeps the positive liveness copy of a session
(coredb:session:<sid> = user id, up to 60 s); instance B's Redis is
unreachable, so its logout cannot overwrite that copy with the "revoked"
tombstone. The tombstone must then go through the outbox and reach Redis
within seconds, so A refuses the ended session instead of trusting its
cached copy for up to a minute."""
import time

from datahelp import redis_client, start_instance, user, wait_for
from identity import bearer
from servers import free_port

REDIS_DB = 10


def test_logout_without_redis_reaches_the_other_instance(pg, redis_server):
    name = pg.create_database()
    a = start_instance(pg, redis_server, REDIS_DB, db=name)
    dead = free_port()   # nothing listens there: B's every Redis command fails
    b = start_instance(pg, None, db=name, REDIS_URL=f"redis://127.0.0.1:{dead}/0")
    try:
        rds = redis_client(redis_server, REDIS_DB)
        acct = user(a)
        sid, token = acct.session["session_id"], acct.token
        key = f"coredb:session:{sid}"
        assert acct.me().status_code == 200
        assert rds.get(key) == acct.id, "A keeps no positive copy: nothing is tested"

        resp = b.post("/api/v1/auth/logout", headers=bearer(token))
        assert resp.status_code == 200, resp.text
        # B refuses it at once (it asks PostgreSQL: it has no Redis)
        assert b.get(f"/users/{acct.id}", headers=bearer(token)).status_code == 401
        # A's copy is overwritten by the queued tombstone within seconds, not 60 s
        t0 = time.time()
        refused = wait_for(lambda: a.get(f"/users/{acct.id}", headers=bearer(token)).status_code
                           == 401, timeout=8)
        assert refused, f"A still accepts the ended session after {time.time() - t0:.1f} s"
        assert rds.get(key) == "revoked"
        assert wait_for(lambda: pg.query(name, "SELECT count(*) FROM coredb.redis_outbox")[0][0]
                        == 0, timeout=8), "the queued tombstone stayed in the outbox"
        err = a.get(f"/users/{acct.id}", headers=bearer(token)).json()["error"]
        assert err["code"] == "TOKEN_REVOKED", err
    finally:
        b.stop_clean()
        a.stop_clean()
