-- 013 gave coredb_admin_ro (the role an admin's read lease joins) SELECT on
-- the whole of public.users, password_hash included: an admin's read lease
-- could read every user's password hash, which 009 had taken from
-- coredb_admin and which the API never shows. The _ro roles must read no
-- more than their read-write counterparts: admin's 009 columns, as
-- coredb_user_ro and coredb_premium_ro already have them.
-- The check at the end refuses to commit while any application role, its
-- read-only counterpart included, directly or through a membership, can
-- read password_hash or write an identity column of public.users.

-- migrate:up
-- revoking the table privilege revokes it on every column too
REVOKE SELECT ON public.users FROM coredb_admin_ro;
GRANT SELECT (user_id, email, username, display_name, profile_picture_url, role,
              is_active, created_at, updated_at)
    ON public.users TO coredb_admin_ro;

DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(format('%s %s(%s)', r.rolname, p.priv, a.attname), ', ')
      INTO bad
      FROM pg_roles r
     CROSS JOIN pg_attribute a
     CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('SELECT')) AS p(priv)
     WHERE r.rolname IN ('coredb_admin', 'coredb_user', 'coredb_premium',
                         'coredb_admin_ro', 'coredb_user_ro', 'coredb_premium_ro')
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
REVOKE SELECT ON public.users FROM coredb_admin_ro;
GRANT SELECT ON public.users TO coredb_admin_ro;
