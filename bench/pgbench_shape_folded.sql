-- bench/pgbench_shape_folded.sql - sql_shapes.sh: shape (e), UNSOUND, measured only to show what
-- it would save: the settings folded into the page statement itself. The
-- statement's permission checks and row-level security are decided for the
-- role current when it is planned and started (the login role), BEFORE
-- set_config runs in its target list: as a table owner or superuser login it
-- reads EVERY user's rows (sql_shapes.sh shows the wrong total).
-- Run with -M prepared -D nusers=N -D role=user (see pgbench_coredb.sql for
-- the caller's id lookup, the one difference from what coredb binds).
\set n random(1, :nusers)
\set lim 20
\set off 0
\startpipeline
SELECT s.r, s.u, s.a, (SELECT count(*) FROM "public"."projects"), (SELECT string_agg(row_to_json(t)::text, ',') FROM (SELECT "id", "title", "description", "status", "settings", "created_at" FROM "public"."projects" ORDER BY "created_at" DESC LIMIT :lim::bigint OFFSET :off::bigint) t) FROM (SELECT set_config('role', 'coredb_user', true) r, set_config('app.current_user_id', (SELECT id::text FROM bench.users WHERE n = :n), true) u, set_config('app.current_role', :role, true) a) s;
\endpipeline
