-- bench/pgbench_fast_json.sql - data.sh: the same page and total as one
-- statement that builds the whole answer's JSON in PostgreSQL, as the table
-- owner filtering by user_id itself (no role switch). Run with -M prepared
-- -D nusers=N.
\set n random(1, :nusers)
SELECT json_build_object('data', coalesce((SELECT json_agg(t) FROM (SELECT id, title, description, status, settings, created_at FROM public.projects WHERE user_id = u.id ORDER BY created_at DESC LIMIT 20 OFFSET 0) t), '[]'), 'total', (SELECT count(*) FROM public.projects WHERE user_id = u.id))::text FROM bench.users u WHERE u.n = :n;
