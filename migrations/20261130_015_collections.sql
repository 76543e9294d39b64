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
--   hnsw vector collections also carry the statement-level trigger
--   coredb_version (AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE) calling
--   coredb.collection_version_bump(), which counts the writes in the
--   registry's `version`: coredb's in-process HNSW index compares it with
--   its own before a search and catches up when it moved.
-- Both: row-level security as `coredb table expose` sets it (coredb_admin
-- every row; coredb_user/coredb_premium only rows whose user_id is
-- coredb.current_user_id()).

-- migrate:up
CREATE TABLE coredb.collections (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,57}$'),
    kind          text NOT NULL CHECK (kind IN ('documents', 'vectors')),
    -- spliced (quoted) into the data API's statements: only ever coll_<name>
    table_name    text NOT NULL UNIQUE CHECK (table_name = 'coll_' || name),
    partition_key text,
    dimensions    integer CHECK (dimensions BETWEEN 1 AND 4096),
    metric        text CHECK (metric IN ('cosine', 'l2', 'dot')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text,
    -- vectors: the search index, exact scan or approximate HNSW with its
    -- parameters (include/coredb/collections.h)
    vector_index  text CHECK (vector_index IN ('exact', 'hnsw')),
    hnsw_m        integer CHECK (hnsw_m BETWEEN 4 AND 64),
    hnsw_ef_construction integer CHECK (hnsw_ef_construction BETWEEN 8 AND 1000),
    hnsw_ef_search integer CHECK (hnsw_ef_search BETWEEN 10 AND 2000),
    -- bumped by coredb.collection_version_bump() on every write statement
    -- to an hnsw collection's table
    version       bigint NOT NULL DEFAULT 0,
    CHECK ((kind = 'vectors') = (dimensions IS NOT NULL AND metric IS NOT NULL)),
    CHECK ((kind = 'vectors') = (vector_index IS NOT NULL)),
    CHECK ((vector_index IS NOT DISTINCT FROM 'hnsw') =
           (hnsw_m IS NOT NULL AND hnsw_ef_construction IS NOT NULL AND hnsw_ef_search IS NOT NULL))
);
-- No grant to the application roles: the data API reads the registry on the
-- service's own connection (and from its catalog snapshot), never as the
-- caller, so no coredb.* table is reachable by an app role
-- (tests/e2e/test_identity_columns.py audits that).

-- The trigger function of hnsw collections' tables (statement level, so a
-- bulk write bumps once): the writer's role may only read the registry,
-- hence SECURITY DEFINER, owned by the service; search_path pinned.
CREATE FUNCTION coredb.collection_version_bump() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    UPDATE coredb.collections SET version = version + 1 WHERE table_name = TG_TABLE_NAME;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION coredb.collection_version_bump() FROM PUBLIC;

-- JSON merge patch (RFC 7396) of the data API's document "patch": members
-- of patch replace target's, null removes one, objects merge recursively.
-- Depth is bounded by the data API's document depth limit.
CREATE FUNCTION coredb.jsonb_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    v jsonb;
    r jsonb;
BEGIN
    IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    r := CASE WHEN jsonb_typeof(target) = 'object' THEN target ELSE '{}'::jsonb END;
    FOR k, v IN SELECT * FROM jsonb_each(patch) LOOP
        IF jsonb_typeof(v) = 'null' THEN
            r := r - k;
        ELSE
            r := jsonb_set(r, ARRAY[k], coredb.jsonb_merge_patch(r -> k, v));
        END IF;
    END LOOP;
    RETURN r;
END
$$;

-- A patched document within the data API's size limit (max_bytes, the
-- limit of its compact JSON text; jsonb's text adds a space after each ':'
-- and ',', so this over-counts a little and never lets a larger one in):
-- the merge of two documents within the limit may exceed it, and only
-- PostgreSQL sees the merge. CD413 maps to VALIDATION_FAILED on "patch".
CREATE FUNCTION coredb.doc_sized(doc jsonb, max_bytes integer) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF octet_length(doc::text) > max_bytes THEN
        RAISE EXCEPTION 'patched document larger than % bytes', max_bytes USING ERRCODE = 'CD413';
    END IF;
    RETURN doc;
END
$$;

-- The answer of a conditional document write (replace, patch, delete):
-- the written row's JSON, or an error the data API maps: CD404 when no
-- document of that id is visible to the caller (NOT_FOUND), CD412 when it
-- is but its etag differs from if_match (PRECONDITION_FAILED).
CREATE FUNCTION coredb.doc_written(visible bigint, written text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF written IS NOT NULL THEN
        RETURN written;
    END IF;
    IF visible = 0 THEN
        RAISE EXCEPTION 'document not found' USING ERRCODE = 'CD404';
    END IF;
    RAISE EXCEPTION 'document etag differs from if_match' USING ERRCODE = 'CD412';
END
$$;

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
DROP FUNCTION IF EXISTS coredb.collection_version_bump();
DROP FUNCTION IF EXISTS coredb.doc_written(bigint, text);
DROP FUNCTION IF EXISTS coredb.jsonb_merge_patch(jsonb, jsonb);
DROP FUNCTION IF EXISTS coredb.doc_sized(jsonb, integer);
