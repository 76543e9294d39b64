-- The seed schema: users (with username, display_name and
-- profile_picture_url), projects and their content_analysis and
-- media_assets. gen_random_uuid() is built into PostgreSQL 13+.

-- migrate:up
CREATE TABLE public.users (
    user_id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               varchar(255) NOT NULL,
    username            varchar(50) NOT NULL,
    password_hash       text NOT NULL,
    display_name        varchar(100),
    profile_picture_url varchar(500),
    role                varchar(20) NOT NULL DEFAULT 'user'
                        CHECK (role IN ('admin', 'user', 'premium')),
    is_active           boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username)
);
-- emails are unique case-insensitively
CREATE UNIQUE INDEX users_email_lower_key ON public.users (lower(email));

CREATE TABLE public.projects (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES public.users (user_id) ON DELETE CASCADE,
    title       varchar(255) NOT NULL,
    description text,
    status      varchar(50) NOT NULL DEFAULT 'draft',
    settings    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_projects_user_id ON public.projects (user_id);
CREATE INDEX idx_projects_status ON public.projects (status);
CREATE INDEX idx_projects_created_at ON public.projects (created_at);

CREATE TABLE public.content_analysis (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id    uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
    analysis_type varchar(50) NOT NULL,
    result        jsonb NOT NULL DEFAULT '{}',
    confidence    numeric(5,4),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_content_analysis_project_id ON public.content_analysis (project_id);

CREATE TABLE public.media_assets (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id  uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
    asset_type  varchar(50) NOT NULL,
    url         text NOT NULL,
    mime_type   varchar(100),
    size_bytes  bigint,
    metadata    jsonb DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_media_assets_project_id ON public.media_assets (project_id);
CREATE INDEX idx_media_assets_asset_type ON public.media_assets (asset_type);

CREATE FUNCTION coredb.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON public.users
    FOR EACH ROW EXECUTE FUNCTION coredb.set_updated_at();
CREATE TRIGGER projects_set_updated_at BEFORE UPDATE ON public.projects
    FOR EACH ROW EXECUTE FUNCTION coredb.set_updated_at();

-- migrate:down
DROP TABLE IF EXISTS public.media_assets;
DROP TABLE IF EXISTS public.content_analysis;
DROP TABLE IF EXISTS public.projects;
DROP TABLE IF EXISTS public.users;
DROP FUNCTION IF EXISTS coredb.set_updated_at();
