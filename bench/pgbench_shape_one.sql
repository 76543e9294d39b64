-- bench/pgbench_shape_one.sql - sql_shapes.sh: shape (c): no BEGIN/COMMIT, page and total in ONE
-- statement (one snapshot): the total as a scalar subquery, the page's rows
-- rendered by row_to_json and joined with ',' by string_agg (byte for byte
-- what coredb's C splicing makes today); one row even for an empty page.
-- Run with -M prepared -D nusers=N -D role=user (see pgbench_coredb.sql for
-- the caller's id lookup, the one difference from what coredb binds).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT (SELECT count(*) FROM "public"."projects"), (SELECT string_agg(row_to_json(t)::text, ',') FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t);
\endpipeline
