"""examples/embed.c: the library started and used by a C program without the
CLI (cdb_service_open + cdb_service_start), against the suite's PostgreSQL
and Redis. The binary sits beside the coredb under test (build/ or
build-san/), so the sanitizer pass runs it under ASan too."""
import os
import subprocess

import psycopg2

from conftest import base_env
from servers import COREDB_BIN, scratch_dir

EMBED_BIN = os.environ.get("COREDB_EMBED_BIN",
                           os.path.join(os.path.dirname(COREDB_BIN), "examples", "embed"))


def run_embed(env):
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("DATABASE_", "POSTGRES_", "REDIS_", "DB_", "PG"))}
    full_env.update(env)
    return subprocess.run([EMBED_BIN], env=full_env, cwd=scratch_dir(), capture_output=True,
                          text=True, timeout=120)


def check_clean(proc):
    out = proc.stdout + proc.stderr
    assert "AddressSanitizer" not in out and "LeakSanitizer" not in out, out[-4000:]
    assert "runtime error:" not in out, out[-4000:]
    assert proc.returncode == 0, f"embed exited {proc.returncode}:\n{out[-4000:]}"


def test_embed_example_starts_creates_queries_and_closes(pg, redis_server):
    db = pg.create_database()
    proc = run_embed(base_env(pg, db, redis_server))
    check_clean(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("started core-database-service "), proc.stdout
    created = [l for l in lines if l.startswith("created user ")]
    assert len(created) == 1, proc.stdout
    user_id = created[0].split()[2]
    query = [l for l in lines if l.startswith("query: ")]
    assert len(query) == 1 and user_id in query[0] and '"role":"user"' in query[0].replace(" ", ""), proc.stdout
    assert "health: UP" in lines, proc.stdout
    assert lines[-1] == "closed", proc.stdout
    # cdb_service_start applied the migrations and the user is really there
    with psycopg2.connect(pg.url(db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM coredb.schema_migrations")
        assert cur.fetchone()[0] > 0
        cur.execute("SELECT email FROM public.users WHERE user_id = %s", (user_id,))
        assert cur.fetchone() is not None
    conn.close()


def test_embed_example_without_redis(pg):
    db = pg.create_database()
    proc = run_embed(base_env(pg, db))
    check_clean(proc)
    assert proc.stdout.splitlines()[-1] == "closed", proc.stdout


def test_embed_example_reports_bad_configuration(pg):
    env = base_env(pg, pg.create_database())
    env["DB_POOL_MIN"] = "not a number"
    proc = run_embed(env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "DB_POOL_MIN" in proc.stderr
