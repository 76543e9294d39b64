"""Safe defaults and the production role (issue 18, items 5 and 7).

Item 5: the embedded cluster trusts local connections and its admin is
generated, so a development start listens on loopback unless HOST says
otherwise; with a configured database the default stays 0.0.0.0 (API.md).
The listening address is read from the kernel's socket table, so no test
traffic leaves loopback.

Item 7: `coredb setup-sql` prints the SQL a DBA runs once; run for real as the
test cluster's superuser, it gives a role with no SUPERUSER and no CREATEROLE
that starts, migrates and serves data through row-level security. A plain
LOGIN role fails fast, before any migration runs, with CONFIG_INVALID (exit 2)
naming what is missing and `coredb setup-sql`."""
import json
import os
import subprocess
import time
import uuid

import psycopg2

from conftest import base_env
from datahelp import pg_insert, query_ok, tx_ok
from identity import new_account
from servers import COREDB_BIN, Coredb, PgServer, run_cli, scratch_dir

LISTEN = "0A"


def listen_addresses(port):
    """Local addresses (as text) with a TCP socket in LISTEN state on port."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] != LISTEN or int(port_hex, 16) != port:
                continue
            if width == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
            else:
                found.add("::" if int(addr, 16) == 0 else addr)
    return found


def embedded_dir():
    cwd = os.path.join(scratch_dir(), f"defaults-{uuid.uuid4().hex[:8]}")
    os.makedirs(cwd)
    os.chmod(cwd, 0o755)
    return cwd


def test_embedded_listens_on_loopback_unless_host_is_explicit():
    cwd = embedded_dir()
    # HOST="" is unset for the loader (the harness otherwise sets 127.0.0.1)
    inst = Coredb({"HOST": ""}, cwd=cwd, wait=False)
    try:
        inst.wait_live(120)
        assert listen_addresses(inst.port) == {"127.0.0.1"}
        log = inst.log()
        assert "serve.loopback_only" in log and "HOST=0.0.0.0" in log, log[-2000:]
    finally:
        inst.stop_clean()

    inst = Coredb({"HOST": "0.0.0.0"}, cwd=cwd, wait=False)
    try:
        inst.wait_live(120)
        assert listen_addresses(inst.port) == {"0.0.0.0"}
        assert "serve.loopback_only" not in inst.log()
    finally:
        inst.stop_clean()


def test_configured_database_keeps_the_documented_default(start_coredb):
    inst = start_coredb(HOST="")
    assert listen_addresses(inst.port) == {"0.0.0.0"}
    assert "serve.loopback_only" not in inst.log()


# ---- item 7: the production role ----

def split_sql(text):
    """psql-style script -> [(database or None, statement)]: statements end
    with ';' at a line's end outside $$ bodies; \\connect switches database."""
    out, current, db, dollar = [], [], None, False
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        if not current and stripped.startswith("\\connect "):
            db = stripped.split()[1]
            continue
        current.append(line)
        dollar ^= line.count("$$") % 2 == 1
        if stripped.endswith(";") and not dollar:
            out.append((db, "\n".join(current)))
            current = []
    assert not current, current
    return out


def run_setup_sql(pg, text):
    """Runs the printed script as the cluster's superuser, statement by statement."""
    conns = {}
    try:
        for db, stmt in split_sql(text):
            key = db or "postgres"
            if key not in conns:
                conns[key] = pg.connect(key)
            with conns[key].cursor() as cur:
                cur.execute(stmt)
    finally:
        for conn in conns.values():
            conn.close()


def setup_sql(*args, password=None):
    """`coredb setup-sql ARGS` -> the SQL text (the password, if any, on stdin)."""
    extra = ["--password-from-stdin"] if password else []
    proc = subprocess.run([COREDB_BIN, "setup-sql", *args, *extra], cwd=scratch_dir(),
                          input=(password or "") + "\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def role_url(pg, role, password, db):
    return f"postgresql://{role}:{password}@127.0.0.1:{pg.port}/{db}"


def migration_count():
    return len([f for f in os.listdir(os.path.join(os.path.dirname(COREDB_BIN), "..", "migrations"))
                if f.endswith(".sql")])


def test_setup_sql_prepares_a_role_that_starts_migrates_and_serves(redis_server):
    # a cluster of its own: roles are cluster-wide, and other tests' superuser
    # logins create coredb's roles in the shared one, which would hide a role
    # that setup-sql forgets (the read-only roles of migration 013 once were)
    pg = PgServer("prod-fresh")
    try:
        setup_sql_role_runs_coredb(pg, redis_server)
    finally:
        pg.destroy()


def setup_sql_role_runs_coredb(pg, redis_server):
    tag = uuid.uuid4().hex[:8]
    role, db, password = f"cdb_{tag}", f"cdbdb_{tag}", f"pw'{tag}"
    text = setup_sql("--role", role, "--database", db, password=password)
    assert "NOCREATEROLE" in text and "WITH ADMIN OPTION" in text and "CREATE EVENT TRIGGER" in text
    run_setup_sql(pg, text)
    attrs = pg.query("postgres", "SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles "
                                 "WHERE rolname = %s", (role,))
    assert attrs == [(False, False, True)]
    # the password literal survived its quote
    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=role, password=password, dbname=db)
    conn.close()

    env = base_env(pg, db, redis_server)
    env["DATABASE_URL"] = role_url(pg, role, password, db)
    inst = Coredb(env)
    inst.db, inst.pg = db, pg
    try:
        assert inst.get("/health").json()["status"] == "UP"
        applied = pg.query(db, "SELECT count(*) FROM coredb.schema_migrations")[0][0]
        assert applied == migration_count() and applied >= 10
        owner = pg.query(db, "SELECT tableowner FROM pg_tables WHERE tablename = 'users'")
        assert owner == [(role,)]
        # data requests SET ROLE to the application roles: row-level security works
        acct = new_account(inst)
        tx_ok(inst, acct, [pg_insert("projects", {"title": "p", "user_id": acct.id})])
        out = query_ok(inst, acct, {"table": "projects", "select": ["title", "user_id"]})
        assert out["data"] == [{"title": "p", "user_id": acct.id}]
        # the DBA made the event trigger: no degradation warning
        assert pg.query(db, "SELECT count(*) FROM pg_event_trigger "
                            "WHERE evtname = 'coredb_catalog_change'")[0][0] == 1
        log = inst.log()
        assert "migrate.no_event_trigger" not in log
        assert "must have admin option" not in log
        # every role the migrations name exists, made by the DBA's script
        assert pg.query("postgres", "SELECT count(*) FROM pg_roles WHERE rolname IN ('coredb_admin_ro',"
                                    " 'coredb_user_ro', 'coredb_premium_ro')") == [(3,)]
    finally:
        inst.stop_clean()


def test_without_the_event_trigger_the_start_warns_what_degrades(pg):
    tag = uuid.uuid4().hex[:8]
    role, db = f"cdb_{tag}", f"cdbdb_{tag}"
    text = setup_sql("--role", role, "--database", db, "--no-event-trigger")
    assert "CREATE EVENT TRIGGER" not in text
    run_setup_sql(pg, text)
    env = base_env(pg, db)
    env["DATABASE_URL"] = pg.url(db, user=role)
    inst = Coredb(env)
    try:
        log = inst.log()
        assert "migrate.no_event_trigger" in log and "within 30 s" in log, log[-3000:]
    finally:
        inst.stop_clean()


def test_a_plain_login_role_fails_fast_naming_what_is_missing(pg):
    tag = uuid.uuid4().hex[:8]
    role, db = f"plain_{tag}", pg.create_database("plain")
    pg.query("postgres", f'CREATE ROLE "{role}" LOGIN')
    env = base_env(pg, db)
    env["DATABASE_URL"] = pg.url(db, user=role)
    started = time.monotonic()
    inst = Coredb(env, wait=False)
    code = inst.proc.wait(30)
    assert time.monotonic() - started < 15
    log = inst.log()
    assert code == 2, log[-3000:]
    # the error: what is missing, briefly, and the fix
    assert (f"CONFIG_INVALID: DATABASE_URL: role {role} lacks CREATE on the database, CREATE on schema "
            "public, ADMIN OPTION on coredb_admin, ADMIN OPTION on coredb_user, ADMIN OPTION on "
            "coredb_premium; run `coredb setup-sql` as a superuser") in log, log[-3000:]
    # the log line before it: why each is needed
    for need in (f"CREATE on database {db} (migrations create the coredb schema)",
                 "CREATE on schema public (migrations create",
                 "ADMIN OPTION on role coredb_admin, or CREATEROLE (migration 002 grants it",
                 "ADMIN OPTION on role coredb_premium", f"coredb setup-sql --role {role} --database {db}"):
        assert need in log, (need, log[-3000:])
    assert "must have admin option" not in log  # said before anything ran
    assert pg.query(db, "SELECT to_regnamespace('coredb')") == [(None,)]

    # `coredb migrate up` runs the same check, with the list in details
    proc = run_cli(["migrate", "up", "--json"], {"DATABASE_URL": pg.url(db, user=role),
                                                 "JWT_SECRET": env["JWT_SECRET"]})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    result = json.loads(proc.stdout)
    assert result["error"]["code"] == "CONFIG_INVALID"
    details = result["error"]["details"]
    assert details["role"] == role and details["fix"] == "coredb setup-sql"
    assert len(details["missing"]) == 5, details
    assert pg.query(db, "SELECT to_regnamespace('coredb')") == [(None,)]


def test_setup_sql_refuses_unsafe_names_and_has_help():
    for args in (["--role", 'x"; DROP ROLE postgres; --'], ["--database", "Upper"], ["--role", "pg_x"],
                 ["--database", ""]):
        proc = run_cli(["setup-sql", *args, "--json"], {})
        assert proc.returncode == 2, proc.stdout
        err = json.loads(proc.stdout)["error"]
        assert err["code"] == "VALIDATION_FAILED" and err["details"]["field"] in ("role", "database")
    proc = run_cli(["setup-sql", "--help"], {})
    assert proc.returncode == 0 and "usage: coredb setup-sql" in proc.stdout


# ---- the systemd unit of docs/production.md ----

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "contrib", "systemd",
                    "coredb.service")


def test_systemd_unit_verifies_and_keeps_its_hardening(tmp_path):
    import shutil
    import pytest
    text = open(UNIT).read()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "ReadWritePaths=-/var/backups/coredb", "Restart=on-failure", "RestartPreventExitStatus=2",
                 "LoadCredential=jwt_secret:", "Environment=JWT_SECRET_FILE=%d/jwt_secret",
                 "ExecStart=/usr/local/bin/coredb serve", "CapabilityBoundingSet="):
        assert line in text.splitlines() or any(l.startswith(line) for l in text.splitlines()), line
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed")
    # verify loads the unit offline; ExecStart must exist, so point it at the build
    unit = tmp_path / "coredb.service"
    unit.write_text(text.replace("/usr/local/bin/coredb", COREDB_BIN))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


def test_a_database_migrated_by_another_role_is_a_configuration_error(start_coredb, pg):
    # migrated by the superuser, then started as a plain role: nothing may run
    first = start_coredb(redis=False)
    first.stop_clean()
    role = f"late_{uuid.uuid4().hex[:8]}"
    pg.query("postgres", f'CREATE ROLE "{role}" LOGIN')
    env = base_env(pg, first.db)
    env["DATABASE_URL"] = pg.url(first.db, user=role)
    inst = Coredb(env, wait=False)
    code = inst.proc.wait(30)
    log = inst.log()
    assert code == 2, log[-3000:]
    assert ("CONFIG_INVALID: DATABASE_URL: the role may not read the migration history (was the database "
            "migrated by another role?") in log, log[-3000:]
