-- bench/pgbench_shape_begin.sql - sql_shapes.sh shape (a): the statements
-- coredb sent for one POST /api/v1/data/query cache miss BEFORE issue 8
-- (BEGIN ... COMMIT around the read; today's are pgbench_coredb.sql),
-- pipelined the same way (one sync, one round trip). Run with -M prepared: coredb prepares the role+settings
-- statement, the page and the count once per pooled connection (pgbench
-- also prepares BEGIN and COMMIT, which cost next to nothing to parse).
-- -D nusers=N -D role=user. The one difference: the caller's id is looked
-- up from the random n in bench.users inside the set_config statement
-- (pgbench has no string variables); coredb binds it as a parameter.
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
BEGIN;
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT row_to_json(t)::text FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t;
SELECT count(*) FROM "public"."projects";
COMMIT;
\endpipeline
