-- bench/pgbench_shape_one_jsonagg.sql - sql_shapes.sh: shape (d): as pgbench_shape_one.sql with the
-- page built by json_agg (one JSON array value) instead of row_to_json +
-- string_agg.
-- Run with -M prepared -D nusers=N -D role=user (see pgbench_coredb.sql for
-- the caller's id lookup, the one difference from what coredb binds).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT (SELECT count(*) FROM "public"."projects"), (SELECT json_agg(t) FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t);
\endpipeline
