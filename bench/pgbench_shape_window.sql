-- bench/pgbench_shape_window.sql - sql_shapes.sh: shape (c''): no BEGIN/COMMIT, the total as
-- count(*) OVER () computed before LIMIT (every matching row is read and
-- kept for the window); an empty page loses the total here too.
-- Run with -M prepared -D nusers=N -D role=user (see pgbench_coredb.sql for
-- the caller's id lookup, the one difference from what coredb binds).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT row_to_json(t)::text, t.total FROM (SELECT "id", "title", "description", "status", "settings", "created_at", count(*) OVER () AS total FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t;
\endpipeline
