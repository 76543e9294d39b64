-- Database roles for the application roles admin, user and premium. Data
-- requests run as one of them (SET LOCAL ROLE), so the service's login role
-- must be a member. Roles are cluster-wide while this file runs once per
-- database: creation tolerates roles that exist (or that a migrator of
-- another database creates at the same moment), and down only drops a role
-- no other database still uses.

-- migrate:up
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['coredb_admin', 'coredb_user', 'coredb_premium'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created concurrently for another database
            END;
        END IF;
    END LOOP;
END
$$;

GRANT coredb_admin, coredb_user, coredb_premium TO CURRENT_USER;

GRANT USAGE ON SCHEMA public TO coredb_admin, coredb_user, coredb_premium;

-- migrate:down
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['coredb_admin', 'coredb_user', 'coredb_premium'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            -- revokes what the role was granted in this database only
            EXECUTE format('DROP OWNED BY %I', r);
            BEGIN
                EXECUTE format('DROP ROLE %I', r);
            EXCEPTION WHEN dependent_objects_still_exist THEN
                NULL; -- another database still grants it something
            END;
        END IF;
    END LOOP;
END
$$;
