"""The mixed workload of the chaos driver and its client-side ledger.

A few client threads, each with its own user, alternate between the two
coredb instances: transactions (a PostgreSQL insert carrying a unique marker
plus a Redis SET of a key named after it; half the threads send an
Idempotency-Key and retry with it on 5xx or a lost answer, the others never
retry: the control group), queries through /api/v1/data/query, refreshes,
and login + logout of a second session. Every HTTP exchange is recorded
(time, instance, kind, status, error code); every write is a ledger entry
with all its attempts. Sessions logged out with a 2xx answer are kept, to
prove after each fault that they stay dead.

Everything is bounded: the threads stop at `stop`, every request has a
client timeout, a keyed retry loop gives up after RETRY_S."""
import random
import threading
import time
import uuid

import requests

from world import PASSWORD

TX = "/api/v1/data/transaction"
QUERY = "/api/v1/data/query"
CLIENT_TIMEOUT_S = 8.0
RETRY_S = 30.0
# answers a keyed write is retried on: the outcome is unknown or nothing ran
RETRY_CODES = {"TRANSACTION_OUTCOME_UNKNOWN", "DATABASE_UNAVAILABLE", "DATABASE_TIMEOUT",
               "POOL_EXHAUSTED", "IDEMPOTENCY_KEY_IN_PROGRESS", "CACHE_UNAVAILABLE"}


class Record:
    """One HTTP exchange as the client saw it."""
    __slots__ = ("t0", "t1", "inst", "kind", "status", "code", "error")

    def __init__(self, t0, t1, inst, kind, status, code, error):
        self.t0, self.t1, self.inst, self.kind = t0, t1, inst, kind
        self.status, self.code, self.error = status, code, error

    @property
    def label(self):
        if self.status is None:
            return "conn-error" if "Connection" in (self.error or "") else "timeout"
        return f"{self.status} {self.code}" if self.code else str(self.status)


class Entry:
    """A write of the ledger: one marker, one logical request, its attempts."""

    def __init__(self, marker, user_id, keyed, kind="write"):
        self.marker, self.user_id, self.keyed, self.kind = marker, user_id, keyed, kind
        self.attempts = []          # Records, with .tid / .redis_status set on the side
        self.tids = []
        self.redis_status = None    # the Redis op's result status in a 200 answer
        self.replayed = False       # the 2xx was an Idempotency-Key replay of an earlier commit
        self.t_first = None
        self.done = False

    @property
    def final(self):
        return self.attempts[-1] if self.attempts else None

    @property
    def answered_2xx(self):
        return self.final is not None and self.final.status is not None and \
            200 <= self.final.status < 300


class Client:
    """HTTP with recording; shared by the workload threads and the probes."""

    def __init__(self, world):
        self.world = world
        self.lock = threading.Lock()
        self.records = []
        self.entries = []
        self.revoked = []           # (access_token, refresh_token, user_id) logged out with 2xx
        self.inflight = {"A": 0, "B": 0}
        self.inflight_tx = {"A": 0, "B": 0}     # transactions (writes and probes) only

    def call(self, inst, kind, method, path, body=None, headers=None, timeout=CLIENT_TIMEOUT_S):
        url = self.world.base(inst) + path
        t0 = time.time()
        resp, status, code, error, out = None, None, None, None, None
        is_tx = path == TX
        with self.lock:
            self.inflight[inst] += 1
            self.inflight_tx[inst] += is_tx
        try:
            resp = requests.request(method, url, json=body, headers=headers or {},
                                    timeout=timeout)
            status = resp.status_code
            try:
                out = resp.json()
            except ValueError:
                out = None
            if status >= 400:
                code = (out or {}).get("error", {}).get("code", "NO_ENVELOPE") \
                    if isinstance(out, dict) else "NO_ENVELOPE"
        except requests.RequestException as exc:
            error = type(exc).__name__
        finally:
            with self.lock:
                self.inflight[inst] -= 1
                self.inflight_tx[inst] -= is_tx
        rec = Record(t0, time.time(), inst, kind, status, code, error)
        with self.lock:
            self.records.append(rec)
        return rec, out, resp

    def login(self, inst, email):
        rec, out, _ = self.call(inst, "login", "POST", "/api/v1/auth/login",
                                {"email": email, "password": PASSWORD})
        return out if rec.status == 200 else None

    def write(self, inst, session, keyed, kind="write", insts=None):
        """A transaction: insert a marked project + SET its Redis key. Keyed
        writes retry with the same key (on the other instance too) until a
        definite answer or RETRY_S."""
        user_id = session["user"]["user_id"]
        marker = f"chaos-{uuid.uuid4().hex}"
        entry = Entry(marker, user_id, keyed, kind)
        ops = [{"database": "postgresql", "operation": "insert", "table": "projects",
                "data": {"title": marker, "user_id": user_id}},
               {"database": "redis", "operation": "set", "key": f"mk:{marker}", "value": "1"}]
        headers = {"Authorization": f"Bearer {session['access_token']}"}
        if keyed:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        give_up = time.time() + RETRY_S
        n = 0
        while True:
            target = inst if not insts else insts[n % len(insts)]
            rec, out, resp = self.call(target, kind, "POST", TX, {"operations": ops}, headers)
            if entry.t_first is None:
                entry.t_first = rec.t0
            entry.attempts.append(rec)
            if rec.status == 200 and isinstance(out, dict):
                entry.tids.append(out.get("transaction_id"))
                entry.replayed = resp.headers.get("Idempotent-Replayed") == "true"
                results = out.get("results") or []
                if len(results) == 2:
                    entry.redis_status = results[1].get("status")
            elif isinstance(out, dict) and isinstance(out.get("error"), dict):
                entry.tids.append((out["error"].get("details") or {}).get("transaction_id"))
            n += 1
            retry = rec.status is None or rec.code in RETRY_CODES
            if not keyed or not retry or time.time() > give_up:
                break
            time.sleep(0.2)
        entry.done = True
        with self.lock:
            self.entries.append(entry)
        return entry


class Worker(threading.Thread):
    def __init__(self, client, index, email, stop):
        super().__init__(daemon=True, name=f"chaos-worker-{index}")
        self.client, self.index, self.email, self.stop = client, index, email, stop
        self.keyed = index % 2 == 0
        self.rng = random.Random(index)
        self.session = None
        self.live_refused = []      # 401s on a session this thread believed live
        self.fatal = None

    def run(self):
        try:
            self._loop()
        except Exception as exc:  # reported by the test, never swallowed
            self.fatal = repr(exc)

    def _loop(self):
        n = 0
        while not self.stop.is_set():
            inst = "AB"[(self.index + n) % 2]
            n += 1
            if self.session is None:
                self.session = self.client.login(inst, self.email)
                if self.session is None:
                    time.sleep(0.2)
                continue
            r = self.rng.random()
            if r < 0.55:
                entry = self.client.write(inst, self.session, self.keyed)
                self._watch(entry.attempts)
            elif r < 0.85:
                self._query(inst)
            elif r < 0.95:
                self._refresh(inst)
            else:
                self._second_session(inst)
            time.sleep(0.01)

    def _auth(self, token=None):
        return {"Authorization": f"Bearer {token or self.session['access_token']}"}

    def _watch(self, recs):
        for rec in recs:
            if rec.status == 401:
                self.live_refused.append(rec)

    def _query(self, inst):
        body = {"database": "postgresql", "query_type": "select", "table": "projects",
                "select": ["id", "title"],
                "filters": {"user_id": self.session["user"]["user_id"],
                            "title": {"like": "chaos-%"}},
                "pagination": {"page": self.rng.randint(1, 3), "limit": 5}}
        rec, _, _ = self.client.call(inst, "query", "POST", QUERY, body, self._auth())
        self._watch([rec])

    def _refresh(self, inst):
        rec, out, _ = self.client.call(inst, "refresh", "POST", "/api/v1/auth/refresh",
                                       {"refresh_token": self.session["refresh_token"]})
        if rec.status == 200:
            self.session = dict(self.session, access_token=out["access_token"],
                                refresh_token=out["refresh_token"])
            return
        self._watch([rec])
        if rec.status is None or rec.status >= 500:
            # the rotation may have committed: the old refresh token would now
            # trip reuse detection, so this session is abandoned for a new one
            self.session = None

    def _second_session(self, inst):
        other = "B" if inst == "A" else "A"
        s = self.client.login(inst, self.email)
        if s is None:
            return
        rec, _, _ = self.client.call(other, "logout", "POST", "/api/v1/auth/logout", None,
                                     self._auth(s["access_token"]))
        if rec.status is not None and 200 <= rec.status < 300:
            with self.client.lock:
                self.client.revoked.append((s["access_token"], s["refresh_token"],
                                            s["user"]["user_id"]))
