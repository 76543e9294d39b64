"""`coredb migrate` and migrate-on-start against a real PostgreSQL."""
import json
import os
import shutil
import threading

import pytest

from servers import ROOT, TEST_JWT_SECRET, run_cli, scratch_dir

MIGRATIONS = os.path.join(ROOT, "migrations")


def migrate(pg, db, *args, migrations_dir=MIGRATIONS):
    env = {"DATABASE_URL": pg.url(db), "JWT_SECRET": TEST_JWT_SECRET, "MIGRATIONS_DIR": migrations_dir}
    return run_cli(["migrate", *args, "--json"], env)


def result(proc):
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def files():
    return sorted(f for f in os.listdir(MIGRATIONS) if f.endswith(".sql"))


def tables(pg, db):
    rows = pg.query(db, "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                        "WHERE table_schema IN ('public', 'coredb') ORDER BY 1")
    return [r[0] for r in rows]


def test_status_up_down_cycle(pg):
    db = pg.create_database()
    st = result(migrate(pg, db, "status"))
    assert st["status"] == "success"
    assert st["current_version"] is None
    assert [m["version"] for m in st["pending_migrations"]] == [f[:12] for f in files()]

    up = migrate(pg, db, "up")
    assert up.returncode == 0, up.stderr
    assert [m["version"] for m in result(up)["applied"]] == [f[:12] for f in files()]
    st = result(migrate(pg, db, "status"))
    assert st["pending_migrations"] == []
    assert st["current_version"] == files()[-1][:12]
    assert st["last_migration"]["version"] == files()[-1][:12]
    assert {"public.users", "public.projects", "public.content_analysis", "public.media_assets",
            "coredb.schema_migrations"} <= set(tables(pg, db))

    history = pg.query(db, "SELECT version, checksum, duration_ms, applied_by FROM coredb.schema_migrations ORDER BY 1")
    assert len(history) == len(files())
    assert all(len(h[1]) == 64 and h[2] >= 0 and h[3] for h in history)

    # up again: nothing to do
    again = result(migrate(pg, db, "up"))
    assert again["applied"] == []

    down = migrate(pg, db, "down", "--steps", str(len(files())))
    assert down.returncode == 0, down.stderr
    assert "public.users" not in tables(pg, db)
    assert pg.query(db, "SELECT count(*) FROM coredb.schema_migrations")[0][0] == 0
    # and it applies cleanly again after a full rollback
    assert migrate(pg, db, "up").returncode == 0
    assert "public.users" in tables(pg, db)


def test_target_version(pg):
    db = pg.create_database()
    target = files()[1][:12]
    res = result(migrate(pg, db, "up", "--target", target))
    assert [m["version"] for m in res["applied"]] == [f[:12] for f in files()[:2]]
    assert result(migrate(pg, db, "status"))["current_version"] == target


def test_dry_run_changes_nothing(pg):
    db = pg.create_database()
    before = tables(pg, db)
    proc = migrate(pg, db, "up", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    res = result(proc)
    assert res["dry_run"] is True and res["would_succeed"] is True
    assert tables(pg, db) == before  # not even the history table is left behind


def copy_migrations(name):
    d = os.path.join(scratch_dir(), name)
    shutil.copytree(MIGRATIONS, d)
    return d


def test_checksum_mismatch_refused_before_anything_runs(pg):
    db = pg.create_database()
    d = copy_migrations(f"mig-{db}")
    assert migrate(pg, db, "up", "--target", files()[0][:12], migrations_dir=d).returncode == 0
    with open(os.path.join(d, files()[0]), "a") as f:
        f.write("\n-- edited after it was applied\n")
    proc = migrate(pg, db, "up", migrations_dir=d)
    assert proc.returncode != 0
    res = result(proc)
    assert res["error"]["code"] == "MIGRATION_CHECKSUM_MISMATCH"
    assert files()[0] in res["error"]["message"]
    # nothing after the first was applied
    assert pg.query(db, "SELECT count(*) FROM coredb.schema_migrations")[0][0] == 1


def test_failed_migration_leaves_database_as_it_was(pg):
    db = pg.create_database()
    d = copy_migrations(f"mig-{db}")
    with open(os.path.join(d, "29991231_001_broken.sql"), "w") as f:
        f.write("-- migrate:up\nCREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n"
                "-- migrate:down\nDROP TABLE half_done;\n")
    proc = migrate(pg, db, "up", migrations_dir=d)
    assert proc.returncode == 1
    err = result(proc)["error"]
    assert err["code"] == "MIGRATION_FAILED"
    assert "29991231_001_broken.sql" in err["message"]
    assert "statement 2" in err["message"]
    assert "public.half_done" not in tables(pg, db)
    # the good ones before it were applied, the broken one is not in history
    versions = [r[0] for r in pg.query(db, "SELECT version FROM coredb.schema_migrations")]
    assert "29991231_001" not in versions and len(versions) == len(files())
    # dry run reports would_succeed false and changes nothing
    res = result(migrate(pg, db, "up", "--dry-run", migrations_dir=d))
    assert res["would_succeed"] is False


def test_concurrent_migrators_apply_each_file_once(pg):
    db = pg.create_database()
    procs = []

    def run():
        procs.append(migrate(pg, db, "up"))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    applied = sum(len(result(p)["applied"]) for p in procs)
    assert applied == len(files())
    assert pg.query(db, "SELECT count(*) FROM coredb.schema_migrations")[0][0] == len(files())


def test_new_creates_a_template(pg):
    d = copy_migrations(f"mig-new-{os.getpid()}-{os.urandom(4).hex()}")
    env = {"DATABASE_URL": pg.url(), "JWT_SECRET": TEST_JWT_SECRET, "MIGRATIONS_DIR": d}
    proc = run_cli(["migrate", "new", "Add Things!", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    path = result(proc)["created"]
    name = os.path.basename(path)
    assert name.endswith("_add_things.sql")
    text = open(path).read()
    assert "-- migrate:up" in text and "-- migrate:down" in text


def test_serve_applies_migrations_on_start(start_coredb, pg):
    inst = start_coredb()
    assert inst.get("/health/ready").status_code == 200
    assert pg.query(inst.db, "SELECT count(*) FROM coredb.schema_migrations")[0][0] == len(files())


def test_ready_is_503_while_migrations_pending(start_coredb, pg):
    inst = start_coredb(MIGRATE_ON_START="false")
    resp = inst.get("/health/ready")
    assert resp.status_code == 503
    assert resp.json()["checks"]["migrations"]["pending"] == len(files())
    assert inst.get("/health").status_code == 200


def test_rls_policies_confine_user_role(start_coredb, pg):
    inst = start_coredb()
    db = inst.db
    a, b = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
    pg.query(db, "INSERT INTO users (user_id, email, username, password_hash) VALUES "
                 "(%s, 'a@x.io', 'alice', 'x'), (%s, 'b@x.io', 'bob', 'x')", (a, b))
    pg.query(db, "INSERT INTO projects (user_id, title) VALUES (%s, 'A1'), (%s, 'B1')", (a, b))
    conn = pg.connect(db)
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SET LOCAL ROLE coredb_user")
        cur.execute("SELECT set_config('app.current_user_id', %s, true)", (a,))
        cur.execute("SELECT title FROM projects")
        assert [r[0] for r in cur.fetchall()] == ["A1"]
        cur.execute("SELECT count(*) FROM users")
        assert cur.fetchone()[0] == 1
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SET LOCAL ROLE coredb_user")
        cur.execute("SELECT set_config('app.current_user_id', %s, true)", (a,))
        with pytest.raises(Exception):
            cur.execute("SELECT password_hash FROM users")
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SET LOCAL ROLE coredb_admin")
        cur.execute("SELECT count(*) FROM projects")
        assert cur.fetchone()[0] == 2
    conn.rollback()
    conn.close()
