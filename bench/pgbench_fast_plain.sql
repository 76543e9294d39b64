-- bench/pgbench_fast_plain.sql - data.sh: the same page and total as
-- pgbench_coredb.sql in the cheapest shape: two plain statements (rows as
-- text columns, no JSON), pipelined, as the table owner filtering by user_id
-- itself (no transaction, no role switch, no row-level security). Run with
-- -M prepared -D nusers=N.
\set n random(1, :nusers)
\startpipeline
SELECT id, title, description, status, settings, created_at FROM public.projects WHERE user_id = (SELECT id FROM bench.users WHERE n = :n) ORDER BY created_at DESC LIMIT 20 OFFSET 0;
SELECT count(*) FROM public.projects WHERE user_id = (SELECT id FROM bench.users WHERE n = :n);
\endpipeline
