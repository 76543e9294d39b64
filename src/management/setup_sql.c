/*
 * setup_sql.c - cdb_setup_sql (migrate.h): the SQL a DBA runs once, as a
 * superuser, so that coredb can run as an ordinary login role: no
 * SUPERUSER and no CREATEROLE (coredb creates no role at run time; in
 * PostgreSQL 15 CREATEROLE could grant itself almost any role).
 *
 * What it grants, and which migration needs it (preflight.c checks the
 * same list before migrations run):
 *   - the application roles coredb_admin, coredb_user and coredb_premium,
 *     created up front and granted WITH ADMIN OPTION: migration 002 grants
 *     them to the login role, and every data request SETs ROLE to one;
 *   - their SELECT-only counterparts coredb_admin_ro, coredb_user_ro and
 *     coredb_premium_ro, likewise: migration 013 creates them otherwise,
 *     and a read connection lease's login is made a member of one;
 *   - a database owned by the role: CREATE on it (the coredb schema) and on
 *     its public schema (in PostgreSQL 15 only the database owner may
 *     create there by default), where migrations create tables;
 *   - optionally the catalog event trigger of migration 006, which only a
 *     superuser may create: without it, new tables reach running services
 *     through the 30 s periodic reload instead of at once. Its function is
 *     handed to the role so that migration 006 may replace it.
 *   - with administration (`--administration`), CREATEROLE and membership
 *     in pg_signal_backend: a deliberate departure from "no CREATEROLE",
 *     needed only by the database roles and users of coredb/dbauth.h
 *     (CREATE ROLE, ALTER ROLE ... PASSWORD, ending a revoked user's
 *     sessions). Without it those operations answer
 *     DATABASE_PRIVILEGE_MISSING and everything else works as before.
 * Names are checked (lower-case identifiers), so they are safe both as
 * quoted identifiers and inside the literals of the DO blocks; a password
 * is a literal with its quotes doubled.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/migrate.h"

#define NAME_MAX_LEN 63

/* ^[a-z_][a-z0-9_]{0,62}$ and not pg_* (reserved for the system's roles). */
static int check_name(const char *field, const char *name, cdb_error *err)
{
    size_t n = name ? strlen(name) : 0;
    bool ok = n > 0 && n <= NAME_MAX_LEN && ((name[0] >= 'a' && name[0] <= 'z') || name[0] == '_') &&
              strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") == n && strncmp(name, "pg_", 3) != 0;
    if (ok)
        return 0;
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                "%s: 1 to %d characters of a-z, 0-9 and '_', not starting with a digit or pg_",
                                field, NAME_MAX_LEN);
}

static void put_literal(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

int cdb_setup_sql(const cdb_setup_sql_options *opt, char **out, cdb_error *err)
{
    const char *role = opt && opt->role ? opt->role : "coredb";
    const char *db = opt && opt->database ? opt->database : "coredb";
    const char *password = opt ? opt->password : NULL;
    bool trigger = !opt || !opt->no_event_trigger;
    bool administration = opt && opt->administration;
    int rc;
    *out = NULL;
    if ((rc = check_name("role", role, err)) < 0 || (rc = check_name("database", db, err)) < 0)
        return rc;
    if (password && (!*password || strpbrk(password, "\r\n")))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "password",
                                    "password: one non-empty line");

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return cdb_error_oom(err);
    fprintf(f,
            "-- coredb: prepare database \"%s\" and login role \"%s\", once, as a superuser:\n"
            "--   psql -v ON_ERROR_STOP=1 -U postgres -f this-file.sql\n"
            "-- The role gets LOGIN and nothing cluster-wide (no SUPERUSER, no CREATEROLE):\n"
            "--   * coredb_admin, coredb_user, coredb_premium WITH ADMIN OPTION: migration 002\n"
            "--     grants them to the role, and each data request runs SET ROLE to one;\n"
            "--   * the database is owned by the role: CREATE on it (schema coredb) and on its\n"
            "--     public schema, where the migrations create their tables.\n"
            "-- See docs/production.md.\n\n",
            db, role);
    fprintf(f,
            "-- 1. cluster-wide: the login role and the application roles\n"
            "DO $$\n"
            "BEGIN\n"
            "    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN\n"
            "        CREATE ROLE \"%s\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;\n"
            "    END IF;\n"
            "END\n"
            "$$;\n",
            role, role);
    if (password) {
        fprintf(f, "ALTER ROLE \"%s\" PASSWORD ", role);
        put_literal(f, password);
        fputs(";\n", f);
    } else {
        fprintf(f, "-- set its password in psql with: \\password %s\n", role);
    }
    fprintf(f,
            "DO $$\n"
            "DECLARE\n"
            "    r text;\n"
            "BEGIN\n"
            "    FOREACH r IN ARRAY ARRAY['coredb_admin', 'coredb_user', 'coredb_premium',\n"
            "                             'coredb_admin_ro', 'coredb_user_ro', 'coredb_premium_ro'] LOOP\n"
            "        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN\n"
            "            EXECUTE format('CREATE ROLE %%I NOLOGIN', r);\n"
            "        END IF;\n"
            "    END LOOP;\n"
            "END\n"
            "$$;\n"
            "GRANT coredb_admin, coredb_user, coredb_premium TO \"%s\" WITH ADMIN OPTION;\n"
            "-- the SELECT-only counterparts of migration 013, which connection leases\n"
            "-- grant to their read logins\n"
            "GRANT coredb_admin_ro, coredb_user_ro, coredb_premium_ro TO \"%s\" WITH ADMIN OPTION;\n",
            role, role);
    if (administration)
        fprintf(f,
                "-- --administration: database roles and users through coredb (coredb admin role,\n"
                "-- coredb admin db-user, /api/v1/admin/roles and /db-users). A deliberate\n"
                "-- departure from NOCREATEROLE, needed to create roles, set their passwords and\n"
                "-- end a revoked user's sessions; leave it out if coredb should not do that.\n"
                "ALTER ROLE \"%s\" CREATEROLE;\n"
                "GRANT pg_signal_backend TO \"%s\";\n",
                role, role);
    fprintf(f,
            "\n"
            "-- 2. the database, owned by the role (CREATE on it and on its public schema)\n"
            "CREATE DATABASE \"%s\" OWNER \"%s\" ENCODING 'UTF8' TEMPLATE template0;\n\n"
            "-- 3. in the new database\n"
            "\\connect %s\n"
            "CREATE SCHEMA IF NOT EXISTS coredb AUTHORIZATION \"%s\";\n",
            db, role, db, role);
    if (trigger)
        fprintf(f,
                "-- The catalog event trigger of migration 006 needs a superuser: with it, new\n"
                "-- tables and grants reach running services at once (else within 30 s).\n"
                "CREATE OR REPLACE FUNCTION coredb.notify_catalog_change() RETURNS event_trigger\n"
                "LANGUAGE plpgsql AS $$\n"
                "BEGIN\n"
                "    PERFORM pg_notify('coredb_catalog', tg_tag);\n"
                "END\n"
                "$$;\n"
                "ALTER FUNCTION coredb.notify_catalog_change() OWNER TO \"%s\";\n"
                "DROP EVENT TRIGGER IF EXISTS coredb_catalog_change;\n"
                "CREATE EVENT TRIGGER coredb_catalog_change ON ddl_command_end\n"
                "    EXECUTE FUNCTION coredb.notify_catalog_change();\n",
                role);
    else
        fputs("-- (no event trigger: catalog changes reach running services within 30 s)\n", f);
    fprintf(f, "\n-- Then: DATABASE_URL=postgresql://%s:PASSWORD@HOST:5432/%s coredb serve\n", role, db);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        free(text);
        return cdb_error_oom(err);
    }
    *out = text;
    return 0;
}
