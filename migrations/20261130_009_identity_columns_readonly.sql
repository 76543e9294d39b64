-- public.users is written only through the users API (src/api/users.c,
-- auth.c), which runs as the service's owning login role and enforces what
-- the database cannot: the password policy and argon2id, the end of the
-- other sessions on a password or role change, email and username rules,
-- display_name without control characters, profile_picture_url http(s)
-- only. 004 granted user and premium UPDATE on email, username,
-- password_hash, display_name, profile_picture_url and updated_at, and admin
-- every table privilege, so /api/v1/data/transaction could skip all of it.
--
-- After this file, per application role on public.users:
--   user, premium: SELECT on every column but password_hash (unchanged),
--                  DELETE of their own row (unchanged), nothing else.
--   admin:         SELECT on every column but password_hash, UPDATE of
--                  is_active only (the users API has no other way to
--                  deactivate an account; login and the session check read
--                  it), DELETE; no INSERT (a row needs email, username and
--                  password_hash).
-- display_name and profile_picture_url lose their grants too: the users API
-- validates them and PostgreSQL does not, so a data-API write could store
-- what PUT /users refuses (a javascript: URL). updated_at is set by the
-- users_set_updated_at trigger. Nothing else in the migrations is granted
-- to the application roles beyond 004's tables (coredb.* holds no grant).
-- The check at the end refuses to commit while any of them, directly or
-- through a membership, can still write an identity column or read
-- password_hash. down restores 004's grants exactly.

-- migrate:up
-- revoking a table privilege revokes the same privilege on every column too
REVOKE SELECT, INSERT, UPDATE ON public.users FROM coredb_admin;
GRANT SELECT (user_id, email, username, display_name, profile_picture_url, role,
              is_active, created_at, updated_at)
    ON public.users TO coredb_admin;
GRANT UPDATE (is_active) ON public.users TO coredb_admin;

REVOKE INSERT, UPDATE ON public.users FROM coredb_user, coredb_premium;

DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(format('%s %s(%s)', r.rolname, p.priv, a.attname), ', ')
      INTO bad
      FROM pg_roles r
     CROSS JOIN pg_attribute a
     CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('SELECT')) AS p(priv)
     WHERE r.rolname IN ('coredb_admin', 'coredb_user', 'coredb_premium')
       AND a.attrelid = 'public.users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       AND has_column_privilege(r.oid, a.attrelid, a.attnum, p.priv)
       AND (p.priv = 'INSERT'
            OR (p.priv = 'UPDATE' AND NOT (r.rolname = 'coredb_admin' AND a.attname = 'is_active'))
            OR (p.priv = 'SELECT' AND a.attname = 'password_hash'));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'application roles still hold privileges on public.users: %', bad;
    END IF;
END
$$;

-- migrate:down
REVOKE SELECT, UPDATE ON public.users FROM coredb_admin;
GRANT SELECT, INSERT, UPDATE ON public.users TO coredb_admin;
GRANT UPDATE (email, username, password_hash, display_name, profile_picture_url, updated_at)
    ON public.users TO coredb_user, coredb_premium;
