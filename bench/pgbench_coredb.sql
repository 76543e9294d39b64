-- bench/pgbench_coredb.sql - data.sh and sql_shapes.sh shape (b): the
-- statements coredb sends for one POST /api/v1/data/query cache miss since
-- issue 8 (src/data/query_run.c run_on, data/common.c
-- cdb_data_start_read_pipeline): role + settings, page, count, no BEGIN or
-- COMMIT. In pipeline mode everything up to the Sync (\endpipeline) is one
-- implicit transaction, so set_config(..., true) lasts for the page and the
-- count and is undone at the Sync.
-- Run with -M prepared -D nusers=N -D role=user: coredb prepares all three
-- once per pooled connection. The one difference from what coredb binds:
-- the caller's id is looked up from the random n in bench.users inside the
-- set_config statement (pgbench has no string variables).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT row_to_json(t)::text FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t;
SELECT count(*) FROM "public"."projects";
\endpipeline
