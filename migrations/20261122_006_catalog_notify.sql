-- Tells running services that the catalog changed (src/api/catalog.c): an
-- event trigger sends NOTIFY coredb_catalog (payload: the command tag) at the
-- end of every DDL command, GRANT and REVOKE included, and the service's
-- listener reloads its snapshot. Notifications are delivered on commit, so
-- the reload sees the change. Only a superuser may create event triggers:
-- without one the migration still succeeds with a NOTICE, and the service's
-- 30 s periodic reload picks changes up instead. Role membership changes
-- (GRANT role TO role) fire no event trigger either; the same reload covers
-- them.

-- migrate:up
CREATE OR REPLACE FUNCTION coredb.notify_catalog_change() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('coredb_catalog', tg_tag);
END
$$;

-- event triggers are per database, not per schema: replace a leftover one
DO $$
BEGIN
    DROP EVENT TRIGGER IF EXISTS coredb_catalog_change;
    CREATE EVENT TRIGGER coredb_catalog_change ON ddl_command_end
        EXECUTE FUNCTION coredb.notify_catalog_change();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'coredb_catalog_change not created (needs a superuser): '
                 'catalog changes are picked up by the periodic reload';
END
$$;

-- migrate:down
DROP EVENT TRIGGER IF EXISTS coredb_catalog_change;
DROP FUNCTION IF EXISTS coredb.notify_catalog_change();
