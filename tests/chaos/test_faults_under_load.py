"""Faults under load, checked against a ledger (issue 16).

Two coredb instances share one PostgreSQL and one Redis; client threads run
a mixed workload against both (workload.py) while faults are injected one
after another, each followed by a steady phase:

  pg-restart-fast, pg-restart-immediate   pg_ctl restart -m fast / immediate
  pg-sigstop          every process of the cluster paused past the statement timeout
  pg-terminate        pg_terminate_backend of coredb's backends, three rounds
  redis-kill          Redis SIGKILLed and started again empty (data lost)
  redis-sigstop       Redis paused past the timeouts
  coredb-B-sigkill    instance B SIGKILLed with transactions in flight, restarted
  log-full-B          B restarted with its stdout and stderr on /dev/full, then back
  backup-dir-broken   a regular file where BACKUP_DIR should be (root ignores chmod)
  (log-stalled-B      B's log on a pipe nobody reads; CHAOS_LOG_STALL=0 leaves it out)

After each fault and at the end the ledger is checked: a write answered 2xx
is in PostgreSQL exactly once; any other answer (5xx, timeout, connection
lost) leaves it absent or present once, never twice, and a known rollback
(503 DATABASE_UNAVAILABLE / 504 DATABASE_TIMEOUT, not OUTCOME_UNKNOWN) leaves
it absent; the Redis key of every committed write started after the last
Redis data loss is there once the outbox has drained; sessions logged out
before stay refused after; no 500 anywhere, no 5xx outside the fault
windows and only the contract's 503/504 codes inside; each instance is back
(a transaction whose Redis operation reports "success", or a backup for the
backup fault) within RECOVERY_LIMIT_S of the backend's return.

A summary table is printed (and written to $CHAOS_REPORT when set)."""
import base64
import json
import random
import threading
import time
from collections import Counter, defaultdict

import knobs
from workload import Client, Worker
from world import PASSWORD, World

RECOVERY_LIMIT_S = 10.0
PROBE_GIVE_UP_S = 40.0
OUTBOX_DRAIN_S = 15.0
# the contract's codes for a backend that is down or slow (API.md, docs/http.md)
FAULT_CODES = {(503, "DATABASE_UNAVAILABLE"), (503, "POOL_EXHAUSTED"),
               (503, "TRANSACTION_OUTCOME_UNKNOWN"), (503, "CACHE_UNAVAILABLE"),
               (504, "DATABASE_TIMEOUT"), (503, "BACKUP_STORAGE_UNAVAILABLE")}
KNOWN_ROLLBACK = {"DATABASE_UNAVAILABLE", "DATABASE_TIMEOUT", "POOL_EXHAUSTED"}


class Phase:
    def __init__(self, name, insts="AB", kinds=None, restarts=False):
        self.name, self.insts, self.kinds = name, insts, kinds
        self.restarts = restarts   # the instance itself goes away: lost connections expected
        self.start = time.time()
        self.back = None
        self.recovered = {}        # inst -> seconds from back to the first good probe
        self.end = {}              # inst -> absolute end of the fault window
        self.notes = []

    def covers(self, rec):
        if rec.inst not in self.insts or (self.kinds and rec.kind not in self.kinds):
            return False
        end = self.end.get(rec.inst, float("inf"))
        return rec.t0 <= end and rec.t1 >= self.start


class Run:
    def __init__(self, world, client):
        self.world, self.client = world, client
        self.phases = []
        self.problems = []         # (phase, text): everything that fails the run
        self.known = []            # findings reported, not failing (see KNOWN_FINDINGS)
        self.redis_loss = 0.0      # end of the last Redis data loss
        self.ledger_result = Counter()
        self.probe = None          # a session of its own for the probes
        self.self_test_found = None
        self.revoked_checked = 0   # sessions of client.revoked checked at least once
        self.admin = None

    def problem(self, phase, text):
        self.problems.append((phase, text))

    # ---- recovery ----

    def _probe_once(self, inst, kind):
        if kind == "backup":
            rec, out, _ = self.client.call(inst, "backup", "POST", "/api/v1/admin/backups", {},
                                           {"Authorization": f"Bearer {self.admin['access_token']}"},
                                           timeout=30)
            return rec.status == 201
        entry = self.client.write(inst, self.probe, keyed=False, kind="probe")
        return entry.final.status == 200 and entry.redis_status == "success"

    def recover(self, phase, kind="write"):
        """Probes each affected instance until it serves again; records the
        time from phase.back and closes the fault window there."""
        def one(inst):
            while time.time() < phase.back + PROBE_GIVE_UP_S:
                if self._probe_once(inst, kind):
                    now = time.time()
                    phase.recovered[inst] = now - phase.back
                    phase.end[inst] = now
                    return
                time.sleep(0.1)
            phase.end[inst] = time.time()
        threads = [threading.Thread(target=one, args=(i,)) for i in phase.insts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PROBE_GIVE_UP_S + 60)
        for inst in phase.insts:
            took = phase.recovered.get(inst)
            if took is None:
                self.problem(phase.name, f"instance {inst} not back {PROBE_GIVE_UP_S:.0f} s "
                                         f"after the backend returned")
            elif took > RECOVERY_LIMIT_S:
                self.problem(phase.name, f"instance {inst} took {took:.1f} s to recover "
                                         f"(limit {RECOVERY_LIMIT_S:.0f} s)")

    # ---- checks ----

    def check_ledger(self, label, drain=True, every_session=False):
        """Every completed ledger entry against PostgreSQL and Redis."""
        with self.client.lock:
            entries = list(self.client.entries)
            revoked = list(self.client.revoked)
        if drain:
            self.wait_outbox(label)
        present = dict(self.world.sql(
            "SELECT title, count(*) FROM projects WHERE title LIKE 'chaos-%%' GROUP BY title"))
        r = self.world.redis_client()
        tally = Counter()
        for e in entries:
            n = present.get(e.marker, 0)
            unknown = any(a.status is None or a.status == 500 or
                          a.code == "TRANSACTION_OUTCOME_UNKNOWN" for a in e.attempts)
            if n > 1:
                self.problem(label, f"{e.marker} written {n} times: {_attempts(e)}")
                tally["duplicated"] += 1
            elif e.answered_2xx:
                if e.replayed and all(a.code in KNOWN_ROLLBACK for a in e.attempts[:-1]):
                    # a replay means an earlier attempt committed: it cannot have been a rollback
                    self.problem(label, f"{e.marker} replayed a commit after only known "
                                        f"rollbacks: {_attempts(e)}")
                    tally["replay after rollbacks"] += 1
                if n == 1:
                    tally["2xx, present once"] += 1
                else:
                    self.problem(label, f"{e.marker} answered 2xx but absent: {_attempts(e)}")
                    tally["2xx, LOST"] += 1
            elif not unknown and n == 1 and all(a.code in KNOWN_ROLLBACK for a in e.attempts):
                self.problem(label, f"{e.marker} committed though answered a known rollback: "
                                    f"{_attempts(e)}")
                tally["rollback answered, yet present"] += 1
            else:
                # which of the two a failed write ended as, by its last answer
                tally[f"{e.final.label}, {'present once' if n else 'absent'}"] += 1
            # the Redis op of a committed write, if Redis has not lost data since it began
            if n == 1 and e.t_first > self.redis_loss:
                key = f"app:user:{e.user_id}:mk:{e.marker}"
                if r.get(key) != "1":
                    self.problem(label, f"{e.marker} committed but its Redis key {key} is missing "
                                        f"(redis op status {e.redis_status})")
                    tally["redis op missing"] += 1
                else:
                    tally["redis op applied"] += 1
        self.ledger_result = tally
        if not every_session:
            # the sessions ended since the last check, and a sample of the older ones
            older, newer = revoked[:self.revoked_checked], revoked[self.revoked_checked:]
            revoked = newer + random.Random(len(revoked)).sample(older, min(40, len(older)))
            self.revoked_checked += len(newer)
        self.check_revoked(label, revoked)
        return tally

    def wait_outbox(self, label):
        """The outbox holds nothing older than the check (new rows keep coming
        while the workload runs): drained within OUTBOX_DRAIN_S."""
        cutoff = time.time()
        deadline = cutoff + OUTBOX_DRAIN_S
        while True:
            left = self.world.sql("SELECT count(*) FROM coredb.redis_outbox "
                                  "WHERE created_at < to_timestamp(%s)", (cutoff,))[0][0]
            if left == 0:
                return
            if time.time() > deadline:
                rows = self.world.sql("SELECT op, attempts, last_error FROM coredb.redis_outbox "
                                      "ORDER BY id LIMIT 3")
                self.problem(label, f"outbox not drained after {OUTBOX_DRAIN_S:.0f} s: {left} "
                                    f"rows, e.g. {rows}")
                return
            time.sleep(0.2)

    def check_revoked(self, label, revoked):
        """Sessions logged out before stay refused, on both instances."""
        silent = Counter()
        for i, (access, refresh, user_id) in enumerate(revoked):
            inst = "AB"[i % 2]
            if silent[inst] >= 3:
                continue   # an instance that stopped answering is reported once, not per session
            rec, _, _ = self.client.call(inst, "check", "GET", f"/users/{user_id}", None,
                                         {"Authorization": f"Bearer {access}"})
            if rec.status != 401:
                self.problem(label, f"a logged-out session's access token got {rec.label} on {inst}")
            rec, _, _ = self.client.call(inst, "check", "POST", "/api/v1/auth/refresh",
                                         {"refresh_token": refresh})
            if rec.status != 401:
                self.problem(label, f"a logged-out session's refresh token got {rec.label} on {inst}")
            if rec.status is None:
                silent[inst] += 1
                if silent[inst] == 3:
                    self.problem(label, f"{inst} stopped answering: its other sessions not checked")

    def check_records(self, workers):
        """No 500 anywhere; outside the fault windows nothing 5xx or lost;
        inside them only the contract's 503/504 codes (or, for the instance
        that was killed, a lost connection)."""
        with self.client.lock:
            records = list(self.client.records)
        for rec in records:
            phase = next((p for p in self.phases if p.covers(rec)), None)
            name = phase.name if phase else "steady"
            where = name if phase else name + self._after_which(rec)
            known = KNOWN_FINDINGS.get((name, rec.kind, rec.label))
            if known:
                self.known.append((name, rec.label, known))
                continue
            if rec.status == 500:
                self.problem(where, f"500 {rec.code} on {rec.inst} {rec.kind}")
            elif rec.status is not None and rec.status >= 500 and \
                    (phase is None or (rec.status, rec.code) not in FAULT_CODES):
                self.problem(where, f"{rec.label} on {rec.inst} {rec.kind}")
            elif rec.status is None:
                killed = phase is not None and phase.restarts and rec.inst in phase.insts
                if not killed:
                    self.problem(where, f"{rec.label} ({rec.error}) on {rec.inst} {rec.kind}")
            elif rec.status == 401 and rec.kind != "check":
                pass   # judged per worker below: only a live session's 401 is wrong
            elif rec.code == "NO_ENVELOPE":
                self.problem(where, f"{rec.status} without the error envelope on {rec.inst}")
        for w in workers:
            for rec in w.live_refused:
                self.problem("any", f"a live session was refused: {rec.label} on {rec.inst} "
                                    f"{rec.kind}")
            if w.fatal:
                self.problem("any", f"worker {w.index} died: {w.fatal}")

    def _after_which(self, rec):
        """For a record outside every fault window: how long after which
        fault's window on its instance it started (where a finding comes from)."""
        ended = [(p.end[rec.inst], p.name) for p in self.phases
                 if rec.inst in p.end and p.end[rec.inst] <= rec.t0]
        if not ended:
            return ", before the first fault"
        end, name = max(ended)
        return f", {rec.t0 - end:.2f} s after {name} on {rec.inst}"

    def self_test(self):
        """Proves the checks can fail: sabotages a duplicate, a lost write, a
        lost Redis op and a resurrected session, and expects each reported."""
        with self.client.lock:
            good = [e for e in self.client.entries if e.answered_2xx and e.kind == "write"
                    and e.t_first > self.redis_loss]
            revoked = list(self.client.revoked)
        if len(good) < 3 or not revoked:
            self.problem("self-test", "too few writes or logouts to sabotage")
            return
        dup, lost, unapplied = good[0], good[1], good[2]
        self.world.sql("INSERT INTO projects (user_id, title) VALUES (%s, %s)",
                       (dup.user_id, dup.marker))
        self.world.sql("DELETE FROM projects WHERE title = %s", (lost.marker,))
        r = self.world.redis_client()
        r.delete(f"app:user:{unapplied.user_id}:mk:{unapplied.marker}")
        access, refresh, user_id = revoked[0]
        sid = json.loads(base64.urlsafe_b64decode(access.split(".")[1] + "==="))["sid"]
        self.world.sql("UPDATE coredb.sessions SET revoked_at = NULL, revoked_reason = NULL "
                       "WHERE session_id = %s", (sid,))
        r.delete(f"coredb:session:{sid}")
        kept, self.problems = self.problems, []
        tally = self.ledger_result
        self.check_ledger("self-test", drain=False, every_session=True)
        found, self.problems, self.ledger_result = self.problems, kept, tally
        texts = " | ".join(t for _, t in found)
        for what, needle in (("duplicate", f"{dup.marker} written 2 times"),
                             ("lost write", f"{lost.marker} answered 2xx but absent"),
                             ("lost Redis op", f"{unapplied.marker} committed but its Redis key"),
                             ("resurrected session", "a logged-out session's access token got 200")):
            if needle not in texts:
                self.problem("self-test", f"the checks missed a sabotaged {what}: {texts[:500]}")
        self.self_test_found = len(found)

    # ---- the summary ----

    def summary(self):
        with self.client.lock:
            records = list(self.client.records)
            entries = list(self.client.entries)
        by_phase = defaultdict(Counter)
        for rec in records:
            phase = next((p for p in self.phases if p.covers(rec)), None)
            name = "checks" if rec.kind == "check" else phase.name if phase else "steady"
            by_phase[name][rec.label] += 1
        out = ["", "== chaos: faults under load "
               f"(steady {knobs.STEADY_S:.0f} s, {knobs.THREADS} threads, "
               f"2 instances)", "",
               f"requests: {len(records)}   ledger writes: {len(entries)} "
               f"(keyed {sum(e.keyed for e in entries)}, probes "
               f"{sum(e.kind == 'probe' for e in entries)})", "",
               "| phase | requests | answers |", "|---|---|---|"]
        for name in ["steady"] + [p.name for p in self.phases] + ["checks"]:
            c = by_phase.get(name, Counter())
            answers = ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))
            out.append(f"| {name} | {sum(c.values())} | {answers} |")
        out += ["", "| fault | recovery A (s) | recovery B (s) | notes |", "|---|---|---|---|"]
        for p in self.phases:
            cells = [f"{p.recovered[i]:.2f}" if i in p.recovered else
                     ("—" if i not in p.insts else "NOT BACK") for i in "AB"]
            out.append(f"| {p.name} | {cells[0]} | {cells[1]} | {'; '.join(p.notes)} |")
        retried = [e for e in entries if e.keyed and len(e.attempts) > 1]
        out += ["", f"keyed writes retried: {len(retried)} "
                    f"({sum(e.answered_2xx for e in retried)} ended 2xx, of which "
                    f"{sum(e.replayed for e in retried)} replays of an earlier commit)"]
        redis_answers = Counter(e.redis_status for e in entries if e.answered_2xx)
        out += ["", "Redis op of 2xx writes answered: " + ", ".join(
            f"{k}: {v}" for k, v in sorted(redis_answers.items(), key=lambda kv: -kv[1]))]
        out += ["", "ledger: " + ", ".join(f"{k}: {v}" for k, v in
                                           sorted(self.ledger_result.items())),
                f"discrepancies: {len(self.problems)}",
                f"self-test of the checks (a duplicate, a lost write, a lost Redis op, a "
                f"resurrected session planted after the run): {self.self_test_found} reported"]
        for phase, text in self.problems[:40]:
            out.append(f"  [{phase}] {text}")
        for (name, label, why) in sorted(set(self.known)):
            n = sum(1 for k in self.known if k[:2] == (name, label))
            out.append(f"  known, reported (not failing): [{name}] {label} x{n}: {why}")
        return "\n".join(out)


# Findings reported to the lead and printed, but not failing the run until
# the contract gives them a code (CHAOS_STRICT=1 makes them fail):
# (phase, request kind, answer) -> why.
KNOWN_FINDINGS = {}  # none today: the backup storage 500 now has its code (BACKUP_STORAGE_UNAVAILABLE)


def _attempts(e):
    return [(a.inst, a.label) for a in e.attempts]


def test_faults_under_load():
    world = World()
    client = Client(world)
    run = Run(world, client)
    stop = threading.Event()
    workers = []
    try:
        # accounts: one per worker, one for the probes; the bootstrap admin for backups
        emails = []
        for i in range(knobs.THREADS + 1):
            email = f"chaos-{i}-{time.time_ns()}@example.com"
            rec, out, _ = client.call("AB"[i % 2], "setup", "POST", "/users/",
                                      {"email": email, "username": f"chaos{i}x{time.time_ns()}",
                                       "password": PASSWORD})
            assert rec.status == 201, out
            emails.append(email)
        run.probe = client.login("A", emails[-1])
        run.admin = client.login("B", world.admin_email)
        assert run.probe and run.admin and run.admin["user"]["role"] == "admin"
        rec, out, _ = client.call("A", "backup", "POST", "/api/v1/admin/backups", {},
                                  {"Authorization": f"Bearer {run.admin['access_token']}"},
                                  timeout=60)
        assert rec.status == 201, out

        workers = [Worker(client, i, emails[i], stop) for i in range(knobs.THREADS)]
        for w in workers:
            w.start()
        time.sleep(knobs.STEADY_S)
        run.check_ledger("steady")

        def fault(name, action, insts="AB", kinds=None, probe="write", restarts=False):
            phase = Phase(name, insts, kinds, restarts)
            run.phases.append(phase)
            phase.back = action(phase)
            run.recover(phase, probe)
            time.sleep(knobs.STEADY_S)
            run.check_ledger(name)
            phase.notes.append(f"ledger checked after: {len(client.entries)} writes")

        fault("pg-restart-fast", lambda p: world.pg_restart("fast"))
        fault("pg-restart-immediate", lambda p: world.pg_restart("immediate"))
        fault("pg-sigstop", lambda p: world.pg_pause())

        def terminate(phase):
            back, killed = world.pg_terminate()
            phase.notes.append(f"{killed} backends terminated")
            if killed == 0:
                run.problem(phase.name, "no coredb backend was found to terminate")
            return back
        fault("pg-terminate", terminate)

        def redis_kill(phase):
            back = world.redis_kill_restart()
            run.redis_loss = back
            return back
        fault("redis-kill", redis_kill)
        fault("redis-sigstop", lambda p: world.redis_pause())

        def coredb_kill(phase):
            # in the middle of transactions: wait (bounded) for B to have some in flight
            deadline = time.time() + 5
            while client.inflight_tx["B"] < 2 and time.time() < deadline:
                time.sleep(0.002)
            phase.notes.append(f"{client.inflight_tx['B']} transactions in flight at the kill")
            phase.start = time.time()
            return world.coredb_kill_restart("B")
        fault("coredb-B-sigkill", coredb_kill, insts="B", restarts=True)

        def log_sink(sink):
            def action(phase):
                back, code = world.coredb_log_sink("B", sink)
                phase.notes.append(f"B stopped with exit code {code} before the switch")
                if code != 0:
                    run.problem(phase.name, f"B exited {code} on SIGTERM (killed if negative)")
                return back
            return action
        # the log destination full: B serves with every log write failing (ENOSPC)
        fault("log-full-B", log_sink("/dev/full"), insts="B", restarts=True)
        fault("log-restored-B", log_sink(None), insts="B", restarts=True)
        if knobs.LOG_STALL:
            # a log reader that stopped reading (known to hang coredb: see docs/reliability.md)
            fault("log-stalled-B", log_sink("stall"), insts="B", restarts=True)
            fault("log-unstalled-B", log_sink(None), insts="B", restarts=True)

        def backup_broken(phase):
            world.backup_dir_broken()
            for inst in "AB":
                rec, out, _ = client.call(inst, "backup", "POST", "/api/v1/admin/backups", {},
                                          {"Authorization": f"Bearer {run.admin['access_token']}"},
                                          timeout=60)
                msg = ((out or {}).get("error") or {}).get("message", "") \
                    if isinstance(out, dict) else ""
                phase.notes.append(f"{inst}: backup answered {rec.label} ({msg[:80]!r})")
                if rec.status is not None and 200 <= rec.status < 300:
                    run.problem(phase.name, f"a backup succeeded on {inst} without a directory")
            time.sleep(1)
            return world.backup_dir_repaired()
        fault("backup-dir-broken", backup_broken, kinds={"backup"}, probe="backup")

        stop.set()
        for w in workers:
            w.join(60)
        assert not any(w.is_alive() for w in workers), "a worker did not stop"
        tally = run.check_ledger("end", every_session=True)
        # the whole outbox drained once the load stopped
        left = world.sql("SELECT count(*) FROM coredb.redis_outbox")[0][0]
        if left:
            run.problem("end", f"{left} outbox rows left after the load stopped")
        # something really was exercised: writes of every kind of answer we count
        assert tally["2xx, present once"] > 0 and tally["redis op applied"] > 0, tally
        run.check_records(workers)
        run.self_test()
    finally:
        stop.set()
        for w in workers:
            w.join(60)
        problems = world.stop()
        for text in problems:
            run.problem("stop", text)
        report = run.summary()
        print(report)
        if knobs.REPORT:
            with open(knobs.REPORT, "w") as f:
                f.write(report + "\n")
    assert not run.problems, report
