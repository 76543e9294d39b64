#!/usr/bin/python3
"""bench/lease_rls.py - the API path's cost of migration 013's
coredb.current_user_id() (lease roles bound on the server side) against the
definition it replaces (a bare read of app.current_user_id).

A throw-away PostgreSQL 15 cluster (tests/e2e/servers.py), coredb's
migrations applied, 100 users x 200 projects; then pgbench runs
bench/pgbench_fast_role.sql (what coredb sends for a data API cache miss:
role switch, settings, one page + total under row-level security) with one
definition and then the other, alternating, ROUNDS rounds of SECONDS each.
Appends a section to bench/RESULTS.md. Usage: make && bench/lease_rls.py"""
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from servers import COREDB_BIN, PgServer  # noqa: E402

ROUNDS, SECONDS, CLIENTS = 4, 5, 4
OLD = """CREATE OR REPLACE FUNCTION coredb.current_user_id() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('app.current_user_id', true), '')::uuid $$"""
NEW = """CREATE OR REPLACE FUNCTION coredb.current_user_id() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.starts_with(session_user::pg_catalog.text, 'coredb_lease_')
                THEN coredb.lease_user_id()
                ELSE NULLIF(pg_catalog.current_setting('app.current_user_id', true), '')::pg_catalog.uuid
           END $$"""


def main():
    pg = PgServer("bench-lease")
    try:
        db = pg.create_database("bench")
        env = dict(os.environ, DATABASE_URL=pg.url(db), JWT_SECRET="x" * 64)
        subprocess.run([COREDB_BIN, "migrate", "up"], env=env, check=True, capture_output=True)
        seed = f"""
INSERT INTO public.users (email, username, password_hash, role)
SELECT 'b' || g || '@bench.example.com', 'b' || g, 'x', 'user' FROM generate_series(1, 100) g;
CREATE SCHEMA bench;
CREATE TABLE bench.users (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench.users SELECT substr(username, 2)::int, user_id FROM public.users WHERE username ~ '^b[0-9]+$';
GRANT USAGE ON SCHEMA bench TO coredb_user;
GRANT SELECT ON bench.users TO coredb_user;
INSERT INTO public.projects (user_id, title, description, status, created_at)
SELECT u.id, 'p' || k, repeat('x', 100), 'draft', now() - k * interval '1 hour' FROM bench.users u
 CROSS JOIN generate_series(1, 200) k;
ANALYZE;"""
        pg.query(db, seed)
        rows = {"013 (lease-aware)": [], "012 (setting only)": []}
        for r in range(ROUNDS):
            for label, sql in (("012 (setting only)", OLD), ("013 (lease-aware)", NEW)):
                pg.query(db, sql)
                out = subprocess.run(
                    ["pgbench", "-n", "-M", "prepared", "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS),
                     "-D", "nusers=100", "-D", "role=user", "-f", os.path.join(ROOT, "bench", "pgbench_fast_role.sql"),
                     "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", db],
                    capture_output=True, text=True, check=True).stdout
                tps = float([line for line in out.splitlines() if line.startswith("tps")][0].split()[2])
                load = os.getloadavg()[0]
                rows[label].append((r + 1, tps, load))
                print(label, r + 1, tps, load, flush=True)
        lines = [f"\n### Lease-aware coredb.current_user_id() on the data API path — {time.strftime('%Y-%m-%d')}"
                 f" — {os.cpu_count()} cores\n",
                 "bench/lease_rls.py: pgbench -M prepared -c 4 -j 2, bench/pgbench_fast_role.sql (role switch,"
                 " settings, one page of 20 + count(*) of the caller's projects under RLS), 100 users x 200 projects,"
                 f" {ROUNDS} rounds of {SECONDS} s alternating the two definitions of the function on the same"
                 " database.\n", "| round | definition | tps | load |", "|---|---|---|---|"]
        for r in range(ROUNDS):
            for label in rows:
                rr = rows[label][r]
                lines.append(f"| {rr[0]} | {label} | {rr[1]:.1f} | {rr[2]:.2f} |")
        med = {k: statistics.median(t for _, t, _ in v) for k, v in rows.items()}
        ratio = med["013 (lease-aware)"] / med["012 (setting only)"]
        lines.append(f"\n- Median tps: 013 {med['013 (lease-aware)']:.1f}, 012 {med['012 (setting only)']:.1f}:"
                     f" ratio 013 / 012 = **{ratio:.3f}**.")
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
