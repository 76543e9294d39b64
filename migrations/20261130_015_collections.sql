-- Collections (include/coredb/collections.h, src/management/collections.c):
-- the registry of the document and vector collections. Each registered
-- collection is one table coredb.coll_<name>, created and dropped by the
-- admin routes (POST/DELETE /api/v1/admin/collections), never by a
-- migration: this file only holds the registry. The data API finds a
-- collection's table here, by name as a bound parameter, so a request's
-- name never reaches SQL as text.
--
-- Table layout (what the data API and the vector engine rely on):
--   documents: id text PK, user_id uuid (owner, default
--              coredb.current_user_id()), partition_key text (generated from
--              the document at the registered path, NULL without one),
--              doc jsonb, etag text, created_at, updated_at; GIN index on doc.
--   vectors:   id text PK, user_id uuid, vector real[] (CHECK: one
--              dimension of exactly `dimensions` elements), payload jsonb,
--              etag, created_at, updated_at; GIN index on payload.
-- Both: row-level security as `coredb table expose` sets it (coredb_admin
-- every row; coredb_user/coredb_premium only rows whose user_id is
-- coredb.current_user_id()).

-- migrate:up
CREATE TABLE coredb.collections (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,57}$'),
    kind          text NOT NULL CHECK (kind IN ('documents', 'vectors')),
    table_name    text NOT NULL UNIQUE,
    partition_key text,
    dimensions    integer CHECK (dimensions BETWEEN 1 AND 4096),
    metric        text CHECK (metric IN ('cosine', 'l2', 'dot')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text,
    CHECK ((kind = 'vectors') = (dimensions IS NOT NULL AND metric IS NOT NULL))
);
-- the data API reads the registry as the caller's role
GRANT SELECT ON coredb.collections TO coredb_admin, coredb_user, coredb_premium;

-- migrate:down
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT table_name FROM coredb.collections LOOP
        EXECUTE format('DROP TABLE IF EXISTS coredb.%I', t);
    END LOOP;
END
$$;
DROP TABLE IF EXISTS coredb.collections;
