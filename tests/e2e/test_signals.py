"""Stop signals never orphan the embedded PostgreSQL.

`coredb serve` blocks SIGTERM/SIGINT/SIGHUP in main() before any thread
exists, so every stop signal reaches the server's sigwait: a second one
only ends the grace period and the cleanup (pool, embedded PostgreSQL)
still runs. A cluster left running by a coredb that died anyway (SIGKILL)
is adopted by the next coredb on the same ./var and stopped at its exit.

Each test runs an embedded instance in its own temp cwd (as
test_embedded.py does) and, whatever happens, kills what is left of its
coredbs and its PostgreSQL (by postmaster.pid) on the way out: embedded_case.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid

import psycopg2
import requests

from servers import COREDB_BIN, ROOT, Coredb, scratch_dir


def embedded_cwd(name):
    cwd = os.path.join(scratch_dir(), f"{name}-{uuid.uuid4().hex[:8]}")
    os.makedirs(cwd)
    os.chmod(cwd, 0o755)
    return cwd


def pgdata_of(cwd):
    return os.path.join(cwd, "var", "pgdata")


def postmaster_pid(pgdata):
    """The pid postmaster.pid names, or None when there is no such file."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as f:
            return int(f.readline())
    except (FileNotFoundError, ValueError):
        return None


def postgres_processes(pgdata):
    """Pids of live processes whose command line is postgres with -D pgdata."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postgres") and pgdata.encode() in argv:
            pids.append(int(entry))
    return pids


def assert_no_postgres(pgdata):
    assert postmaster_pid(pgdata) is None, "postmaster.pid left behind"
    assert postgres_processes(pgdata) == [], "postgres still running for " + pgdata


def kill_postgres(pgdata):
    """Backstop for a failing test: nothing of this cluster survives it."""
    pid = postmaster_pid(pgdata)
    for p in ([pid] if pid else []) + postgres_processes(pgdata):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_coredb(inst):
    if inst is not None and inst.proc.poll() is None:
        inst.proc.kill()
        inst.proc.wait(10)


def wait_exit(inst, timeout=60):
    try:
        return inst.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"coredb still running {timeout} s after the signals:\n"
                             f"{inst.log()[-4000:]}")


class EmbeddedCase:
    """One test's ./var: its cwd, its pgdata, and the coredbs it started."""

    def __init__(self, name):
        self.cwd = embedded_cwd(name)
        self.pgdata = pgdata_of(self.cwd)
        self.started = []

    def start(self, env=None):
        inst = Coredb(env or {}, cwd=self.cwd, wait=False)
        self.started.append(inst)
        return inst


@contextlib.contextmanager
def embedded_case(name):
    """Whatever happens in the test, nothing of its coredbs and cluster survives it."""
    case = EmbeddedCase(name)
    try:
        yield case
    finally:
        for inst in case.started:
            kill_coredb(inst)
        kill_postgres(case.pgdata)


def stop_cleanly(inst, pgdata, sig=signal.SIGTERM):
    """sig, then: exit 0, no sanitizer report, the cluster stopped."""
    inst.proc.send_signal(sig)
    code = wait_exit(inst)
    assert code == 0, f"coredb exited {code}:\n{inst.log()[-4000:]}"
    assert_clean_log(inst)
    assert_no_postgres(pgdata)


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def sleeping_queries(cwd):
    """pg_sleep statements running in the embedded cluster (0 while it is not up yet)."""
    try:
        conn = psycopg2.connect(host=os.path.join(cwd, "var", "run"), port=5432,
                                user="postgres", dbname="coredb", connect_timeout=5)
    except psycopg2.OperationalError:
        return 0
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity "
                        "WHERE state = 'active' AND query LIKE '%pg_sleep%' "
                        "AND pid <> pg_backend_pid()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def request_in_flight(inst, cwd, seconds=1):
    """Starts POST /test/sleep in a thread and returns once PostgreSQL runs it."""
    def call():
        try:
            requests.post(inst.base + "/test/sleep", json={"seconds": seconds}, timeout=30)
        except requests.RequestException:
            pass  # the connection may close without an answer: not what we test here
    t = threading.Thread(target=call, daemon=True)
    t.start()
    wait_for(lambda: sleeping_queries(cwd) > 0, 10, "the request to reach PostgreSQL")
    return t


def log_has(inst, event):
    return f'"event":"{event}"' in inst.log()


def assert_clean_log(inst):
    log = inst.log()
    assert "AddressSanitizer" not in log and "LeakSanitizer" not in log, log[-4000:]
    assert "runtime error:" not in log, log[-4000:]


def two_signals_with_request_in_flight(first, second):
    with embedded_case("signals") as case:
        # a long grace period: only the second signal can end it early
        inst = case.start({"SHUTDOWN_GRACE_MS": "30000"})
        inst.wait_live(120)
        assert postmaster_pid(case.pgdata) is not None
        client = request_in_flight(inst, case.cwd)
        inst.proc.send_signal(first)
        time.sleep(0.01)
        stop_cleanly(inst, case.pgdata, second)
        client.join(30)
        log = inst.log()
        assert f"signal {int(second)} again: ending the grace period" in log, log[-4000:]
        assert log_has(inst, "devdb.stop"), log[-4000:]


def test_two_sigterms_with_a_request_in_flight_stop_postgres_and_exit_0():
    two_signals_with_request_in_flight(signal.SIGTERM, signal.SIGTERM)


def test_sigint_then_sigterm_with_a_request_in_flight_stop_postgres_and_exit_0():
    two_signals_with_request_in_flight(signal.SIGINT, signal.SIGTERM)


def blocked_signals(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def test_every_thread_blocks_the_stop_signals():
    """Blocked in main() before any thread: a stop signal can reach no thread but sigwait's."""
    with embedded_case("sigmask") as case:
        inst = case.start()
        inst.wait_live(120)
        stop = 0
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            stop |= 1 << (int(sig) - 1)
        # the main thread is not checked: sigwait unblocks them while it waits
        tids = [t for t in os.listdir(f"/proc/{inst.proc.pid}/task") if t != str(inst.proc.pid)]
        assert len(tids) > 4  # loops, workers, pool, jobs
        for tid in tids:
            assert blocked_signals(inst.proc.pid, tid) & stop == stop, f"thread {tid}"
        stop_cleanly(inst, case.pgdata)


def test_sighup_stops_like_sigterm():
    """Closing the terminal sends SIGHUP: a clean stop, not an orphaned cluster."""
    with embedded_case("sighup") as case:
        inst = case.start()
        inst.wait_live(120)
        stop_cleanly(inst, case.pgdata, signal.SIGHUP)


def test_sighup_ignored_at_start_stays_ignored():
    """Under nohup (SIGHUP ignored) coredb keeps serving after a SIGHUP."""
    with embedded_case("nohup") as case:
        # as nohup does: ignored before exec, and exec keeps it ignored
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            inst = case.start()
        finally:
            signal.signal(signal.SIGHUP, previous)
        inst.wait_live(120)
        inst.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert inst.proc.poll() is None, inst.log()[-4000:]
        assert inst.get("/health/live").status_code == 200
        stop_cleanly(inst, case.pgdata)


def test_sigterm_during_start_up_still_stops_postgres():
    """A signal before the server listens waits for it, then stops cleanly."""
    with embedded_case("early") as case:
        inst = case.start()
        # the cluster is up and the service is starting (migrations, admin, jobs)
        wait_for(lambda: log_has(inst, "devdb.start") or inst.proc.poll() is not None, 120,
                 "the embedded PostgreSQL to start")
        stop_cleanly(inst, case.pgdata)


def test_cluster_orphaned_by_sigkill_is_adopted_and_stopped():
    with embedded_case("adopt") as case:
        pgdata = case.pgdata
        inst = case.start()
        inst.wait_live(120)
        orphan = postmaster_pid(pgdata)
        inst.proc.kill()
        inst.proc.wait(10)
        # the precondition: SIGKILL leaves the cluster running with nobody to stop it
        assert postmaster_pid(pgdata) == orphan and orphan in postgres_processes(pgdata)

        second = case.start()
        second.wait_live(120)
        log = second.log()
        assert log_has(second, "devdb.adopt"), log[-4000:]
        assert f"left running by coredb pid {inst.proc.pid}, which is gone: adopting it" in log
        assert not log_has(second, "devdb.reuse")
        assert postmaster_pid(pgdata) == orphan  # the same cluster, not a new one
        assert second.get("/health").json()["status"] == "UP"
        stop_cleanly(second, pgdata)


def test_one_shot_command_adopts_an_orphan_and_leaves_nothing():
    """`coredb migrate status` after a SIGKILLed serve: adopts, answers, stops it."""
    with embedded_case("adopt-cli") as case:
        cwd, pgdata = case.cwd, case.pgdata
        inst = case.start()
        inst.wait_live(120)
        inst.proc.kill()
        inst.proc.wait(10)
        assert postgres_processes(pgdata)
        env = dict(inst.env, LOG_LEVEL="debug")  # log lines on stderr for the adoption
        proc = subprocess.run([inst.proc.args[0], "migrate", "status", "--json"], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert '"event":"devdb.adopt"' in proc.stderr, proc.stderr
        assert_no_postgres(pgdata)


def test_the_last_coredb_out_stops_the_cluster_whoever_started_it():
    """`migrate up` starts the cluster, `serve` joins it, migrate exits first:
    the cluster stays up for serve, and serve's exit stops it."""
    cwd = embedded_cwd("last-out")
    pgdata = pgdata_of(cwd)
    migrations = os.path.join(cwd, "migrations")
    shutil.copytree(os.path.join(ROOT, "migrations"), migrations)
    with open(os.path.join(migrations, "29991231_999_slow.sql"), "w") as f:
        f.write("-- migrate:up\nSELECT pg_sleep(4);\n-- migrate:down\nSELECT 1;\n")
    env = {"MIGRATIONS_DIR": migrations, "LOG_LEVEL": "debug"}
    migrate = serve = None
    try:
        migrate = subprocess.Popen([COREDB_BIN, "migrate", "up"], cwd=cwd,
                                   env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                                   stderr=open(os.path.join(cwd, "migrate.log"), "wb"))
        wait_for(lambda: sleeping_queries(cwd) > 0 or migrate.poll() is not None, 120,
                 "migrate up to run the slow migration")
        assert migrate.poll() is None, open(os.path.join(cwd, "migrate.log")).read()
        serve = Coredb(env, cwd=cwd, wait=False)
        wait_for(lambda: log_has(serve, "devdb.reuse") or serve.proc.poll() is not None, 60,
                 "serve to join the cluster")
        assert migrate.wait(60) == 0, open(os.path.join(cwd, "migrate.log")).read()
        migrate_log = open(os.path.join(cwd, "migrate.log")).read()
        assert '"event":"devdb.leave"' in migrate_log, migrate_log
        assert '"event":"devdb.stop"' not in migrate_log, migrate_log
        serve.wait_live(60)
        assert postgres_processes(pgdata)
        assert serve.get("/health").json()["status"] == "UP"
        serve.proc.send_signal(signal.SIGTERM)
        assert wait_exit(serve) == 0, serve.log()[-4000:]
        assert log_has(serve, "devdb.stop"), serve.log()[-4000:]
        assert_no_postgres(pgdata)
    finally:
        if migrate is not None and migrate.poll() is None:
            migrate.kill()
            migrate.wait(10)
        kill_coredb(serve)
        kill_postgres(pgdata)
