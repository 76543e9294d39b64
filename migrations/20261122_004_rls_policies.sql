-- Privileges and row-level security for the application roles. admin sees
-- every row; user and premium see their own: users by user_id, projects by
-- user_id, child tables through their project. The caller's id comes from
-- the transaction-local setting app.current_user_id (unset or empty: no
-- rows). RLS is enabled, not forced: the owning login role (migrations,
-- maintenance) is not subject to it. user and premium can neither read
-- password_hash nor change user_id, role or is_active.

-- migrate:up
GRANT USAGE ON SCHEMA coredb TO coredb_admin, coredb_user, coredb_premium;

CREATE FUNCTION coredb.current_user_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('app.current_user_id', true), '')::uuid
$$;

GRANT SELECT, INSERT, UPDATE, DELETE
    ON public.users, public.projects, public.content_analysis, public.media_assets
    TO coredb_admin;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON public.projects, public.content_analysis, public.media_assets
    TO coredb_user, coredb_premium;
GRANT SELECT (user_id, email, username, display_name, profile_picture_url, role,
              is_active, created_at, updated_at)
    ON public.users TO coredb_user, coredb_premium;
GRANT UPDATE (email, username, password_hash, display_name, profile_picture_url, updated_at)
    ON public.users TO coredb_user, coredb_premium;
GRANT DELETE ON public.users TO coredb_user, coredb_premium;

ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.content_analysis ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.media_assets ENABLE ROW LEVEL SECURITY;

CREATE POLICY users_admin ON public.users TO coredb_admin USING (true) WITH CHECK (true);
CREATE POLICY projects_admin ON public.projects TO coredb_admin USING (true) WITH CHECK (true);
CREATE POLICY content_analysis_admin ON public.content_analysis TO coredb_admin
    USING (true) WITH CHECK (true);
CREATE POLICY media_assets_admin ON public.media_assets TO coredb_admin
    USING (true) WITH CHECK (true);

CREATE POLICY users_own ON public.users TO coredb_user, coredb_premium
    USING (user_id = coredb.current_user_id())
    WITH CHECK (user_id = coredb.current_user_id());
CREATE POLICY projects_own ON public.projects TO coredb_user, coredb_premium
    USING (user_id = coredb.current_user_id())
    WITH CHECK (user_id = coredb.current_user_id());
CREATE POLICY content_analysis_own ON public.content_analysis TO coredb_user, coredb_premium
    USING (project_id IN (SELECT id FROM public.projects WHERE user_id = coredb.current_user_id()))
    WITH CHECK (project_id IN (SELECT id FROM public.projects WHERE user_id = coredb.current_user_id()));
CREATE POLICY media_assets_own ON public.media_assets TO coredb_user, coredb_premium
    USING (project_id IN (SELECT id FROM public.projects WHERE user_id = coredb.current_user_id()))
    WITH CHECK (project_id IN (SELECT id FROM public.projects WHERE user_id = coredb.current_user_id()));

-- migrate:down
DROP POLICY IF EXISTS media_assets_own ON public.media_assets;
DROP POLICY IF EXISTS content_analysis_own ON public.content_analysis;
DROP POLICY IF EXISTS projects_own ON public.projects;
DROP POLICY IF EXISTS users_own ON public.users;
DROP POLICY IF EXISTS media_assets_admin ON public.media_assets;
DROP POLICY IF EXISTS content_analysis_admin ON public.content_analysis;
DROP POLICY IF EXISTS projects_admin ON public.projects;
DROP POLICY IF EXISTS users_admin ON public.users;

ALTER TABLE public.media_assets DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.content_analysis DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.projects DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.users DISABLE ROW LEVEL SECURITY;

-- REVOKE ALL on a table also revokes its column privileges
REVOKE ALL ON public.users, public.projects, public.content_analysis, public.media_assets
    FROM coredb_admin, coredb_user, coredb_premium;

DROP FUNCTION IF EXISTS coredb.current_user_id();

REVOKE USAGE ON SCHEMA coredb FROM coredb_admin, coredb_user, coredb_premium;
