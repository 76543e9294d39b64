-- bench/pgbench_shape_nobegin.sql - sql_shapes.sh: shape (b): today's statements without BEGIN and
-- COMMIT. In pipeline mode everything up to the Sync (\endpipeline) is one
-- implicit transaction, so set_config(..., true) lasts for the page and the
-- count and is undone at the Sync.
-- Run with -M prepared -D nusers=N -D role=user (see pgbench_coredb.sql for
-- the caller's id lookup, the one difference from what coredb binds).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT row_to_json(t)::text FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t;
SELECT count(*) FROM "public"."projects";
\endpipeline
