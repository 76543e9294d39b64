-- bench/data_seed.sql - the rows behind data.sh, written straight into
-- PostgreSQL as its owner (past row-level security) for speed. Expects the
-- user "data0" registered through the API (its password hash is copied to
-- the others, so they all log in with the same password) and psql variables
-- nusers and nprojects. bench.users maps 1..nusers to user ids: pgbench
-- picks a user by a random n (it has no string variables).
INSERT INTO public.users (email, username, password_hash, role)
SELECT 'data' || g || '@bench.example.com', 'data' || g,
       (SELECT password_hash FROM public.users WHERE username = 'data0'), 'user'
  FROM generate_series(1, :nusers - 1) g;

CREATE SCHEMA bench;
CREATE TABLE bench.users (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench.users
SELECT substr(username, 5)::int + 1, user_id FROM public.users WHERE username ~ '^data[0-9]+$';
-- the exact-SQL script looks the id up after SET LOCAL ROLE
GRANT USAGE ON SCHEMA bench TO coredb_user;
GRANT SELECT ON bench.users TO coredb_user;

-- nprojects per user, distinct created_at, a description and settings of
-- realistic size (about 0.5 KiB of JSON per row in the answer)
INSERT INTO public.projects (user_id, title, description, status, settings, created_at, updated_at)
SELECT u.id, 'Project ' || k || ' of user ' || u.n,
       'A benchmark project, number ' || k || '. ' || repeat('Lorem ipsum dolor sit amet. ', 5),
       (ARRAY['draft', 'active', 'archived'])[1 + k % 3],
       jsonb_build_object('theme', 'dark', 'notifications', k % 2 = 0, 'tags', jsonb_build_array('bench', 'p' || k), 'version', k),
       now() - k * interval '1 hour' - u.n * interval '1 second',
       now() - k * interval '1 hour'
  FROM bench.users u CROSS JOIN generate_series(1, :nprojects) k;
ANALYZE;
