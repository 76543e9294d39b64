-- bench/pgbench_shape_pinned.sql - sql_shapes.sh: what per-role sub-pools would give (not
-- implemented): the connection is already the caller's database role
-- (PGOPTIONS='-c role=coredb_user' at connect), so the per-request prelude
-- sets only the caller's id and app role; page and total in one statement.
-- Run with -M prepared -D nusers=N -D role=user (see pgbench_coredb.sql for
-- the caller's id lookup, the one difference from what coredb binds).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT (SELECT count(*) FROM "public"."projects"), (SELECT string_agg(row_to_json(t)::text, ',') FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t);
\endpipeline
