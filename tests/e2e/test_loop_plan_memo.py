"""The loops' plan memo (src/http/loop_query.c over data/query.c's
cdb__data_query_loop_pack/_unpack, issue 8): a data-API miss whose exact
body a caller of the same role sent before runs that plan (statements and
params) without parsing the JSON or planning again; the caller's settings
and cache keys are made afresh for each request, and the catalog snapshot,
the encrypted columns and the cache namespace are checked on each use.

coredb_http_loop_plan_memo_hits_total proves the memo is used; the answers
prove it never serves what a fresh plan would not: each caller's own rows
(row-level security through the caller's settings) and own cache entries
under CACHE_TTL>0; a column added to the table (the catalog snapshot swaps)
in the next answers of every loop; a column encrypted after the plan was
remembered read decrypted, never as stored.
"""
import pytest

from datahelp import (add_projects, admin_of, counter, pg_insert, query, query_ok, start_instance, tx_ok, user,
                      wait_for)
from identity import unique
from test_encryption import KEY, encrypt, select

REDIS_DB = 6
MEMO_HITS = "coredb_http_loop_plan_memo_hits_total"
LOOP_ENV = {"HTTP_THREADS": "2", "DB_POOL_MAX": "8", "DB_LOOP_CONNECTIONS": "2",
            "RATE_LIMIT_USER": "0", "RATE_LIMIT_PREMIUM": "0"}
# enough requests, each on a new connection, that both loops see a body more than once
ROUNDS = 8


@pytest.fixture(scope="module")
def inst(pg, own_redis):
    server = start_instance(pg, own_redis, REDIS_DB, CACHE_TTL="0", DB_ENCRYPTION_KEY=KEY, **LOOP_ENV)
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def admin(inst):
    return admin_of(inst)


def own_titles(inst, acct):
    return sorted(t for (t,) in inst.pg.query(inst.db, "SELECT title FROM projects WHERE user_id = %s", (acct.id,)))


def warm_up(inst, *accounts):
    """One request each first: a caller's first request may go to a worker whole (loop_admit.c)."""
    for acct in accounts:
        query_ok(inst, acct, {"table": "projects", "pagination": {"limit": 1}})


def test_repeats_use_the_memo_and_each_caller_reads_own_rows(inst, admin):
    a, b = user(inst), user(inst)
    warm_up(inst, a, b)
    add_projects(inst, a.id, 6, prefix="a")
    add_projects(inst, b.id, 9, prefix="b")
    body = {"table": "projects", "select": ["id", "title"], "order_by": [{"column": "title"}],
            "pagination": {"limit": 50}}
    hits0 = counter(inst, admin, MEMO_HITS)
    n = 0
    for _ in range(ROUNDS):
        for acct in (a, b):
            got = query_ok(inst, acct, body)
            assert got["cached"] is False
            assert [r["title"] for r in got["data"]] == own_titles(inst, acct), acct.id
            assert got["pagination"]["total"] == len(own_titles(inst, acct))
            n += 1
    hits = counter(inst, admin, MEMO_HITS) - hits0
    # each of the two loops plans (role, body) once; one catalog refresh meanwhile may add a plan per loop
    assert n - 4 <= hits <= n, (hits, n)
    # another body is planned, not served another's plan
    other = query_ok(inst, a, {"table": "projects", "select": ["title"], "filters": {"title": "a003"}})
    assert other["data"] == [{"title": "a003"}], other


def test_a_column_added_is_in_the_next_answers_of_every_loop(inst, admin):
    t = unique("memo")
    inst.pg.query(inst.db, f"CREATE TABLE {t} (id int PRIMARY KEY, name text)")
    inst.pg.query(inst.db, f"INSERT INTO {t} SELECT g, 'n' || g FROM generate_series(1, 3) g")
    inst.pg.query(inst.db, f"GRANT SELECT ON {t} TO coredb_admin")
    body = {"table": t, "order_by": [{"column": "id"}]}
    assert wait_for(lambda: query(inst, admin, body).status_code == 200, timeout=15), query(inst, admin, body).text
    hits0 = counter(inst, admin, MEMO_HITS)
    for _ in range(ROUNDS):
        assert [set(r) for r in query_ok(inst, admin, body)["data"]] == [{"id", "name"}] * 3
    assert counter(inst, admin, MEMO_HITS) - hits0 >= ROUNDS - 4
    inst.pg.query(inst.db, f"ALTER TABLE {t} ADD COLUMN extra text DEFAULT 'x'")
    # the catalog reloads on the DDL's notification, well within the memo's 10 s bound on an entry's life
    assert wait_for(lambda: "extra" in query_ok(inst, admin, body)["data"][0], timeout=5)
    # every loop: a plan remembered before the catalog swapped is not used again
    for _ in range(3 * ROUNDS):
        rows = query_ok(inst, admin, body)["data"]
        assert [r.get("extra") for r in rows] == ["x"] * 3, rows


def test_a_column_encrypted_after_the_plan_was_remembered_reads_decrypted(inst, admin):
    t = unique("pii")
    # the setup announces the table (the catalog snapshot swaps) and invalidates this instance's
    # snapshot of encrypted columns; unpack checks both on each use, and either alone keeps this test
    # passing (with both checks removed it fails; each removed in turn, it passes)
    inst.pg.query(inst.db, f"CREATE TABLE {t} (id bigint PRIMARY KEY, user_id uuid, name text, ssn text)")
    resp = inst.post(f"/api/v1/admin/tables/{t}/expose", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    a = user(inst)
    warm_up(inst, a)
    tx_ok(inst, a, [pg_insert(t, {"id": i, "name": f"p{i}", "ssn": f"123-45-000{i}"}) for i in range(3)])
    body = select(t, select=["id", "ssn"], order_by=[{"column": "id"}])
    plain = [{"id": i, "ssn": f"123-45-000{i}"} for i in range(3)]
    hits0 = counter(inst, admin, MEMO_HITS)
    for _ in range(ROUNDS):
        assert query_ok(inst, a, body)["data"] == plain
    assert counter(inst, admin, MEMO_HITS) - hits0 >= ROUNDS - 4
    encrypt(inst, admin, {"table_name": t, "column_name": "ssn", "searchable": False})
    assert inst.pg.query(inst.db, f"SELECT count(*) FROM {t} WHERE ssn LIKE 'cdb1:%%'")[0][0] == 3
    # at once, on every loop: decrypted by the plan for encrypted columns, never the stored form
    for _ in range(3 * ROUNDS):
        assert query_ok(inst, a, body)["data"] == plain


def test_cache_keys_stay_per_caller(pg, own_redis):
    # one loop: b's first miss finds the plan a's made
    inst = start_instance(pg, own_redis, REDIS_DB + 1, CACHE_TTL="60", **{**LOOP_ENV, "HTTP_THREADS": "1"})
    try:
        admin = admin_of(inst)
        a, b = user(inst), user(inst)
        warm_up(inst, a, b)
        add_projects(inst, a.id, 4, prefix="a")
        add_projects(inst, b.id, 5, prefix="b")
        body = {"table": "projects", "select": ["title"], "order_by": [{"column": "title"}]}
        hits0 = counter(inst, admin, MEMO_HITS)
        seen = {}
        for _ in range(ROUNDS):
            for acct in (a, b):
                got = query_ok(inst, acct, body)
                assert [r["title"] for r in got["data"]] == own_titles(inst, acct), (acct.id, got)
                seen.setdefault(acct.id, []).append(got["cached"])
        # each caller's first read is a miss, then its own entry answers (never the other's)
        for acct in (a, b):
            assert seen[acct.id][0] is False and seen[acct.id][-1] is True, seen
        # b's first miss ran the plan a's made (same role, same bytes), with b's settings and
        # cache key; every later read was a hit, which plans nothing
        assert counter(inst, admin, MEMO_HITS) - hits0 == 1
    finally:
        inst.stop_clean()
