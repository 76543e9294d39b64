-- Connection leases (include/coredb/leases.h, src/management/leases*.c):
-- the lease table, the SELECT-only counterparts of the application roles,
-- and the server-side binding of a lease's login role to its user.
--
-- A lease's database_url logs in as a temporary role coredb_lease_<hex>,
-- member of coredb_<role> (write) or coredb_<role>_ro (read). The row
-- policies key on coredb.current_user_id(). For the API it is the
-- transaction-local setting app.current_user_id, set by coredb itself on
-- its own login. A lease holder could SET that setting, so for a session
-- whose session_user is a lease role the id comes from this table instead,
-- through coredb.lease_user_id() (SECURITY DEFINER, fixed search_path).
-- session_user, unlike current_user, does not change with SET ROLE, and
-- SET SESSION AUTHORIZATION needs a superuser. The API path only pays a
-- prefix test on session_user: it never reads the lease table.
--
-- Everything in current_user_id() is schema-qualified so a holder's
-- search_path cannot swap a function or type in (it has no schema to
-- create in anyway: PostgreSQL 15 gives PUBLIC no CREATE on public).

-- migrate:up
CREATE TABLE coredb.leases (
    id uuid PRIMARY KEY,
    role_name text NOT NULL UNIQUE CHECK (starts_with(role_name, 'coredb_lease_')),
    user_id uuid NOT NULL,
    app_role text NOT NULL,
    service_name text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('read', 'write')),
    state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'releasing', 'released', 'expired')),
    -- the reserved pooled connection's backend: gone means its instance is gone
    backend_pid integer,
    backend_start timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    released_at timestamptz
);
CREATE INDEX leases_live ON coredb.leases (expires_at) WHERE state IN ('active', 'releasing');
REVOKE ALL ON coredb.leases FROM PUBLIC;

CREATE FUNCTION coredb.lease_user_id() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT l.user_id FROM coredb.leases l
     WHERE l.role_name = session_user AND l.state = 'active' AND l.expires_at > now()
$$;
REVOKE ALL ON FUNCTION coredb.lease_user_id() FROM PUBLIC;

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['coredb_admin_ro', 'coredb_user_ro', 'coredb_premium_ro'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;
GRANT USAGE ON SCHEMA public, coredb TO coredb_admin_ro, coredb_user_ro, coredb_premium_ro;
GRANT EXECUTE ON FUNCTION coredb.lease_user_id()
    TO coredb_admin, coredb_user, coredb_premium, coredb_admin_ro, coredb_user_ro, coredb_premium_ro;

-- the lease's id for a lease login, the API's setting otherwise
CREATE OR REPLACE FUNCTION coredb.current_user_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.starts_with(session_user::pg_catalog.text, 'coredb_lease_')
                THEN coredb.lease_user_id()
                ELSE NULLIF(pg_catalog.current_setting('app.current_user_id', true), '')::pg_catalog.uuid
           END
$$;

GRANT SELECT ON public.users, public.projects, public.content_analysis, public.media_assets
    TO coredb_admin_ro;
GRANT SELECT ON public.projects, public.content_analysis, public.media_assets
    TO coredb_user_ro, coredb_premium_ro;
GRANT SELECT (user_id, email, username, display_name, profile_picture_url, role,
              is_active, created_at, updated_at)
    ON public.users TO coredb_user_ro, coredb_premium_ro;

ALTER POLICY users_admin ON public.users TO coredb_admin, coredb_admin_ro;
ALTER POLICY projects_admin ON public.projects TO coredb_admin, coredb_admin_ro;
ALTER POLICY content_analysis_admin ON public.content_analysis TO coredb_admin, coredb_admin_ro;
ALTER POLICY media_assets_admin ON public.media_assets TO coredb_admin, coredb_admin_ro;
ALTER POLICY users_own ON public.users TO coredb_user, coredb_premium, coredb_user_ro, coredb_premium_ro;
ALTER POLICY projects_own ON public.projects
    TO coredb_user, coredb_premium, coredb_user_ro, coredb_premium_ro;
ALTER POLICY content_analysis_own ON public.content_analysis
    TO coredb_user, coredb_premium, coredb_user_ro, coredb_premium_ro;
ALTER POLICY media_assets_own ON public.media_assets
    TO coredb_user, coredb_premium, coredb_user_ro, coredb_premium_ro;

-- tables exposed before this migration (src/management/tables.c names the
-- _ro roles from now on): SELECT and the same policies for the _ro roles
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT c.oid::regclass AS tbl, pol.polname
               FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
              WHERE pol.polname IN ('coredb_admin', 'coredb_rows') OR left(pol.polname, 11) = 'coredb_own_' LOOP
        IF p.polname = 'coredb_admin' THEN
            EXECUTE format('ALTER POLICY coredb_admin ON %s TO coredb_admin, coredb_admin_ro', p.tbl);
            EXECUTE format('GRANT SELECT ON %s TO coredb_user_ro, coredb_premium_ro, coredb_admin_ro', p.tbl);
        ELSE
            EXECUTE format('ALTER POLICY %I ON %s TO coredb_user, coredb_premium, coredb_user_ro, coredb_premium_ro',
                           p.polname, p.tbl);
        END IF;
    END LOOP;
END
$$;

-- migrate:down
ALTER POLICY users_admin ON public.users TO coredb_admin;
ALTER POLICY projects_admin ON public.projects TO coredb_admin;
ALTER POLICY content_analysis_admin ON public.content_analysis TO coredb_admin;
ALTER POLICY media_assets_admin ON public.media_assets TO coredb_admin;
ALTER POLICY users_own ON public.users TO coredb_user, coredb_premium;
ALTER POLICY projects_own ON public.projects TO coredb_user, coredb_premium;
ALTER POLICY content_analysis_own ON public.content_analysis TO coredb_user, coredb_premium;
ALTER POLICY media_assets_own ON public.media_assets TO coredb_user, coredb_premium;

CREATE OR REPLACE FUNCTION coredb.current_user_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('app.current_user_id', true), '')::uuid
$$;

DO $$
DECLARE
    r text;
BEGIN
    -- this database's leases only: roles are cluster-wide, other databases may hold leases too
    FOR r IN SELECT l.role_name FROM coredb.leases l JOIN pg_roles ON rolname = l.role_name LOOP
        EXECUTE format('DROP OWNED BY %I', r);
        EXECUTE format('DROP ROLE %I', r);
    END LOOP;
    FOREACH r IN ARRAY ARRAY['coredb_admin_ro', 'coredb_user_ro', 'coredb_premium_ro'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('DROP OWNED BY %I', r);
            BEGIN
                EXECUTE format('DROP ROLE %I', r);
            EXCEPTION WHEN dependent_objects_still_exist THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

DROP FUNCTION coredb.lease_user_id();
DROP TABLE coredb.leases;
