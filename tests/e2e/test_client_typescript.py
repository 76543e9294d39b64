"""The TypeScript client (clients/typescript, @coredb/client) against the real
binary: builds it when needed (npm ci + npm run build, reusing node_modules),
checks that src/schema.d.ts equals a fresh openapi-typescript generation from
docs/openapi.json, then runs its tests (node --test) against a coredb with a
bootstrap admin on real PostgreSQL and Redis. The node tests write what they
created to a report file; the effects are then checked where they land (the
PostgreSQL catalogs, Redis)."""
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile

import pytest

from datahelp import PASSWORD, redis_client, start_instance
from servers import ROOT

CLIENT = os.path.join(ROOT, "clients", "typescript")
REDIS_DB = 15


def npm(*args, timeout=600):
    proc = subprocess.run(["npm", *args], cwd=CLIENT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"npm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def built():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed: run scripts/install-deps.sh")
    lock = os.path.join(CLIENT, "package-lock.json")
    installed = os.path.join(CLIENT, "node_modules", ".package-lock.json")
    if not (os.path.exists(installed) and os.path.getmtime(installed) >= os.path.getmtime(lock)):
        npm("ci", "--no-audit", "--no-fund")
    npm("run", "build")
    return CLIENT


def test_schema_types_equal_a_fresh_generation(built, tmp_path):
    """src/schema.d.ts cannot drift from docs/openapi.json: `npm run gen`'s own
    command (package.json), writing to a scratch file, gives the committed text."""
    with open(os.path.join(CLIENT, "package.json"), encoding="utf-8") as fh:
        gen = json.load(fh)["scripts"]["gen"]
    assert gen.endswith(" -o src/schema.d.ts"), gen
    fresh = tmp_path / "schema.d.ts"
    args = shlex.split(gen)[:-1] + [str(fresh)]
    args[0] = os.path.join(CLIENT, "node_modules", ".bin", args[0])
    proc = subprocess.run(args, cwd=CLIENT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(os.path.join(CLIENT, "src", "schema.d.ts"), encoding="utf-8") as fh:
        committed = fh.read()
    assert committed == fresh.read_text(encoding="utf-8"), \
        "clients/typescript/src/schema.d.ts is stale: run `npm run gen` in clients/typescript"


def test_readme_quick_start_type_checks(built):
    """The README's quick start compiles against the built package (strict tsc);
    test/client.test.js runs the same lines against a real coredb."""
    with open(os.path.join(CLIENT, "README.md"), encoding="utf-8") as fh:
        blocks = re.findall(r"```ts\n(.*?)```", fh.read(), re.S)
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) == 5, blocks
    # inside the package, so that "@coredb/client" resolves to it (self-reference through "exports")
    scratch = tempfile.mkdtemp(prefix=".readme-check-", dir=CLIENT)
    try:
        src = os.path.join(scratch, "quickstart.ts")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(blocks[0])
        proc = subprocess.run([os.path.join(CLIENT, "node_modules", ".bin", "tsc"), "--noEmit", "--strict",
                               "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022",
                               "--types", "node", src], cwd=CLIENT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        shutil.rmtree(scratch)


def strict_tsc(*files):
    """tsc --noEmit --strict on files inside the package, so that "@coredb/client" resolves to it."""
    return subprocess.run([os.path.join(CLIENT, "node_modules", ".bin", "tsc"), "--noEmit", "--strict",
                           "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022",
                           "--types", "node", *files], cwd=CLIENT, capture_output=True, text=True, timeout=120)


def test_document_and_vector_bodies_type_check(built):
    """typecheck/documents_vectors.ts (a vector search with every member
    vec_query.c accepts, vector upserts with vector and payload, a document
    query with path filters and order_by {path, direction}, and a table
    order_by {column}) compiles under strict tsc against the generated
    types: a field the schema lacks is an excess-property error. The check
    can fail: the same file with one misspelt member is refused."""
    src = os.path.join(CLIENT, "typecheck", "documents_vectors.ts")
    proc = strict_tsc(src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(src, encoding="utf-8") as fh:
        text = fh.read()
    scratch = tempfile.mkdtemp(prefix=".typecheck-", dir=CLIENT)
    try:
        for good, bad in (("with_vector: false", "with_vectors: false"),
                          ('payload: { lang: "en" }', 'payloads: { lang: "en" }'),
                          ('{ path: "title" }', '{ paths: "title" }')):
            assert good in text, good
            broken = os.path.join(scratch, "broken.ts")
            with open(broken, "w", encoding="utf-8") as fh:
                fh.write(text.replace(good, bad, 1))
            proc = strict_tsc(broken)
            assert proc.returncode != 0 and "error TS" in proc.stdout, (bad, proc.stdout + proc.stderr)
    finally:
        shutil.rmtree(scratch)


def test_version_agrees_with_the_service(built):
    with open(os.path.join(CLIENT, "package.json"), encoding="utf-8") as fh:
        pkg = json.load(fh)
    out = subprocess.run([os.environ.get("COREDB_BIN", os.path.join(ROOT, "build", "coredb")), "--version"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    assert out == f"coredb {pkg['version']}"
    with open(os.path.join(CLIENT, "src", "client.ts"), encoding="utf-8") as fh:
        assert f'export const VERSION = "{pkg["version"]}";' in fh.read()


def test_node_tests_against_a_real_coredb(built, pg, redis_server, tmp_path):
    # A short access-token lifetime makes the client's refresh path run for real;
    # a small pool with a short acquire timeout lets the test route /test/sleep provoke 503 POOL_EXHAUSTED.
    inst = start_instance(pg, redis_server, REDIS_DB, ACCESS_TOKEN_TTL="2", JWT_CLOCK_SKEW="0",
                          DB_POOL_MAX="3", DB_POOL_ACQUIRE_TIMEOUT="700",
                          HTTP_THREADS="8", COREDB_TEST_ROUTES="1",
                          BACKUP_DIR=str(tmp_path / "backups"), DB_ENCRYPTION_KEY=os.urandom(32).hex())
    report = tmp_path / "report.json"
    try:
        # an application table for the admin calls (coredb's own tables are refused)
        conn = inst.pg.connect(inst.db)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE ts_notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), ssn text)")
            cur.execute("CREATE TABLE ts_exposed (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                        "user_id uuid NOT NULL, note text)")
            cur.execute("INSERT INTO ts_notes (ssn) SELECT '123-45-' || g FROM generate_series(1000, 1004) g")
        conn.close()
        env = dict(os.environ, COREDB_URL=inst.base, COREDB_ADMIN_EMAIL=inst.admin_email,
                   COREDB_ADMIN_PASSWORD=PASSWORD, COREDB_TS_REPORT=str(report), COREDB_TS_TABLE="ts_notes",
                   COREDB_TS_EXPOSE="ts_exposed")
        proc = subprocess.run(["node", "--test", "--test-concurrency=1", "test/"], cwd=CLIENT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"node --test failed:\n{proc.stdout[-20000:]}\n{proc.stderr[-5000:]}"
        assert "# fail 0" in proc.stdout and "# pass " in proc.stdout, proc.stdout[-3000:]
        made = json.loads(report.read_text())

        # the effects of the client's admin calls, in the PostgreSQL catalogs
        role = made["role"]
        assert inst.pg.query(inst.db, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)) == [(False,)]
        dbuser = made["db_user"]
        rows = inst.pg.query(inst.db, "SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = %s", (dbuser,))
        assert rows == [(False, 2)], rows        # created with limit 2, then revoked (NOLOGIN)
        pol = inst.pg.query(inst.db, "SELECT policyname FROM pg_policies WHERE tablename = %s", (made["rls_table"],))
        assert (made["rls_policy"],) in pol, pol
        assert inst.pg.query(inst.db, "SELECT relrowsecurity FROM pg_class WHERE relname = %s",
                             (made["rls_table"],)) == [(True,)]
        assert inst.pg.query(inst.db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = %s",
                             (made["rls_table"],)) == [(role,)]
        # encrypted by the service: no plaintext left in PostgreSQL
        ssn = [r[0] for r in inst.pg.query(inst.db, "SELECT ssn FROM ts_notes")]
        assert len(ssn) == 5 and not any(v.startswith("123-45-") for v in ssn), ssn
        # the lease helper released its lease: the temporary login role is gone
        assert inst.pg.query(inst.db, "SELECT count(*) FROM pg_roles WHERE rolname = %s",
                             (made["lease_role"],)) == [(0,)]
        # the row the client inserted, and its Redis key in the user's namespace
        assert inst.pg.query(inst.db, "SELECT title FROM projects WHERE id = %s",
                             (made["project_id"],)) == [(made["project_title"],)]
        r = redis_client(redis_server, REDIS_DB)
        assert r.get(f"app:user:{made['user_id']}:{made['redis_key']}") == "ts-value"
        # X-Client-Version reached the service's metrics
        # as coredb-ts/<version>, so that the metric tells it from the Python client (coredb-py/<version>)
        with open(os.path.join(CLIENT, "package.json"), encoding="utf-8") as fh:
            version = json.load(fh)["version"]
        assert made["metrics_excerpt"].startswith(
            f'coredb_client_requests_total{{client_version="coredb-ts/{version}"}} '), made["metrics_excerpt"]
        assert int(made["metrics_excerpt"].split()[-1]) > 0
    finally:
        inst.stop_clean()
