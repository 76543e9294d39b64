-- bench/pgbench_shape_rows_total.sql - sql_shapes.sh: shape (c'): no BEGIN/COMMIT, one row per page
-- row with the total beside it as an uncorrelated scalar subquery (an
-- InitPlan, computed once); rows rendered in C. An empty page (past the end)
-- has no row to carry the total: coredb would need a second statement then.
-- Run with -M prepared -D nusers=N -D role=user (see pgbench_coredb.sql for
-- the caller's id lookup, the one difference from what coredb binds).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT row_to_json(t)::text, (SELECT count(*) FROM "public"."projects") FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t;
\endpipeline
