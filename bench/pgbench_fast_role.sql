-- bench/pgbench_fast_role.sql - data.sh: what coredb does (transaction,
-- role switch, the settings row-level security reads, page + total,
-- pipelined) with plain rows instead of row_to_json. Run with -M prepared
-- (named statements, parsed and planned once per connection) -D nusers=N
-- -D role=user.
\set n random(1, :nusers)
\startpipeline
BEGIN;
SELECT set_config('role', 'coredb_user', true), set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true), set_config('app.current_role', :role, true);
SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT 20 OFFSET 0;
SELECT count(*) FROM "public"."projects";
COMMIT;
\endpipeline
