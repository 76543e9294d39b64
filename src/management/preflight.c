/*
 * preflight.c - cdb_migrate_preflight (migrate.h): before a migration runs,
 * read what the login role may do and say at once, in one error, what it
 * lacks for the pending files, rather than fail halfway through them with
 * PostgreSQL's "must have admin option on role ..." and no hint of a fix.
 *
 * What the shipped migrations need (the SQL of `coredb setup-sql` gives it):
 *   - CREATE on the database while the coredb schema does not exist yet
 *     (001 and the history table create it), and CREATE on the coredb and
 *     public schemas while files are pending (their tables live there);
 *   - for 002 (app roles): each of coredb_admin, coredb_user and
 *     coredb_premium created up front and granted WITH ADMIN OPTION, or
 *     CREATEROLE, since 002 creates missing roles and grants all three to
 *     the login role;
 *   - once 002 is applied: membership in the three roles, because every
 *     data request runs SET LOCAL ROLE to one of them;
 *   - for 013 (connection leases): the read-only roles coredb_admin_ro,
 *     coredb_user_ro and coredb_premium_ro created up front, or CREATEROLE.
 * A superuser has all of it. Without a superuser, 006 cannot create its
 * event trigger, so catalog changes reach running services through the
 * 30 s periodic reload instead of at once: a warning, not an error (a DBA
 * may create the trigger beforehand, as `coredb setup-sql` does).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "coredb/migrate.h"
#include "management/migrate_internal.h"
#include "store/pg.h"

#define APP_ROLES_VERSION "20261122_002"
#define READ_ROLES_VERSION "20261130_013"

/* The application roles (migration 002), then their SELECT-only counterparts (013). */
static const char *const app_roles[] = {"coredb_admin", "coredb_user", "coredb_premium",
                                        "coredb_admin_ro", "coredb_user_ro", "coredb_premium_ro"};
enum { NAPP_ROLES = 3, NROLES = 6 };

#define FACTS_SQL                                                                              \
    "SELECT current_user, r.rolsuper, r.rolcreaterole,"                                        \
    " has_database_privilege(current_database(), 'CREATE'),"                                   \
    " (SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n WHERE n.nspname = 'public'),"   \
    " (SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n WHERE n.nspname = 'coredb')," \
    " EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'coredb_catalog_change'),"         \
    " EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"            \
    "  WHERE n.nspname = 'coredb' AND c.relname = 'schema_migrations'),"                       \
    " current_database()"                                                                      \
    " FROM pg_roles r WHERE r.rolname = current_user"
enum { F_USER, F_SUPER, F_CREATEROLE, F_DB_CREATE, F_PUBLIC_CREATE, F_COREDB_CREATE, F_TRIGGER,
       F_HISTORY, F_DB };

/* For each app role: whether it exists, membership, admin option. */
#define ROLES_SQL                                                                              \
    "SELECT w.name, a.oid IS NOT NULL,"                                                        \
    " COALESCE(pg_has_role(current_user, a.oid, 'MEMBER'), false),"                            \
    " COALESCE(pg_has_role(current_user, a.oid, 'MEMBER WITH ADMIN OPTION'), false)"           \
    " FROM unnest(ARRAY['coredb_admin', 'coredb_user', 'coredb_premium', 'coredb_admin_ro', 'coredb_user_ro',"  \
    " 'coredb_premium_ro']) WITH ORDINALITY AS w(name, i)" \
    " LEFT JOIN pg_roles a ON a.rolname = w.name ORDER BY w.i"

static bool yes(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

static bool is_null(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col);
}

/* What the role lacks: each item's full explanation (details.missing and
 * the log) and its short name for the error message, which is 256 bytes. */
typedef struct lacks {
    json_t *full;
    char brief[200];
    bool oom;
} lacks;

static void lacks_add(lacks *l, const char *brief, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void lacks_add(lacks *l, const char *brief, const char *fmt, ...)
{
    char line[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (json_array_append_new(l->full, json_string(line)) < 0)
        l->oom = true;
    size_t used = strlen(l->brief);
    snprintf(l->brief + used, sizeof l->brief - used, "%s%s", used ? ", " : "", brief);
}

/* A catalog or history read that failed: a role that may not even read the
 * history (a database migrated by another role) is a configuration error. */
static int query_fail(PGconn *conn, const PGresult *res, const char *what, cdb_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state && strcmp(state, "42501") == 0)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "DATABASE_URL: the role may not read %s (was the database migrated by another "
                             "role? it must own coredb's objects); see docs/production.md", what);
    if (PQstatus(conn) != CONNECTION_OK)
        return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "database connection lost during %s", what);
    return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "reading %s failed: %.120s", what,
                         res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
}

int cdb_migrate_preflight(PGconn *conn, const cdb_migration_set *set, const char *target, cdb_error *err)
{
    PGresult *facts = NULL, *roles = NULL, *hist = NULL;
    json_t *missing = NULL;
    int rc = 0;

    facts = cdb_pg_query(conn, FACTS_SQL);
    if (PQresultStatus(facts) != PGRES_TUPLES_OK || PQntuples(facts) != 1) {
        rc = query_fail(conn, facts, "the role's attributes", err);
        goto out;
    }
    if (yes(facts, 0, F_SUPER))
        goto out; /* a superuser may do everything the migrations do */
    if (yes(facts, 0, F_HISTORY)) {
        hist = cdb_pg_query(conn, "SELECT version FROM coredb.schema_migrations");
        if (PQresultStatus(hist) != PGRES_TUPLES_OK) {
            rc = query_fail(conn, hist, "the migration history", err);
            goto out;
        }
    }
    /* What is pending, as cdb_migrate_up would plan it. */
    size_t pending = 0;
    bool roles_pending = false, read_roles_pending = false, trigger_pending = false;
    for (size_t i = 0; i < set->count; i++) {
        const char *v = set->items[i].version;
        if (target && strcmp(v, target) > 0)
            break;
        bool applied = false;
        for (int r = 0; hist && r < PQntuples(hist) && !applied; r++)
            applied = strcmp(PQgetvalue(hist, r, 0), v) == 0;
        if (applied)
            continue;
        pending++;
        roles_pending |= strcmp(v, APP_ROLES_VERSION) == 0;
        read_roles_pending |= strcmp(v, READ_ROLES_VERSION) == 0;
        trigger_pending |= strstr(set->items[i].up_sql, "CREATE EVENT TRIGGER") != NULL;
    }

    roles = cdb_pg_query(conn, ROLES_SQL);
    if (PQresultStatus(roles) != PGRES_TUPLES_OK || PQntuples(roles) != NROLES) {
        rc = query_fail(conn, roles, "the application roles", err);
        goto out;
    }
    lacks l = {.full = missing = json_array()};
    if (!missing) {
        rc = cdb_error_oom(err);
        goto out;
    }
    const char *user = PQgetvalue(facts, 0, F_USER), *db = PQgetvalue(facts, 0, F_DB);
    bool createrole = yes(facts, 0, F_CREATEROLE);
    if (pending && is_null(facts, 0, F_COREDB_CREATE) && !yes(facts, 0, F_DB_CREATE))
        lacks_add(&l, "CREATE on the database", "CREATE on database %s (migrations create the coredb schema)", db);
    if (pending && !is_null(facts, 0, F_COREDB_CREATE) && !yes(facts, 0, F_COREDB_CREATE))
        lacks_add(&l, "CREATE on schema coredb",
                  "CREATE on schema coredb (migrations create the service's tables there)");
    if (pending && !yes(facts, 0, F_PUBLIC_CREATE))
        lacks_add(&l, "CREATE on schema public",
                  "CREATE on schema public (migrations create the users and data tables there)");
    for (int i = 0; i < NAPP_ROLES; i++) {
        const char *name = app_roles[i];
        char brief[64];
        bool exists = yes(roles, i, 1), member = yes(roles, i, 2), admin = yes(roles, i, 3);
        if (roles_pending && !exists && !createrole) {
            snprintf(brief, sizeof brief, "role %s", name);
            lacks_add(&l, brief, "role %s does not exist and %s lacks CREATEROLE to create it "
                      "(migration 002 creates the application roles)", name, user);
        } else if (roles_pending && exists && !admin && !createrole) {
            snprintf(brief, sizeof brief, "ADMIN OPTION on %s", name);
            lacks_add(&l, brief, "ADMIN OPTION on role %s, or CREATEROLE (migration 002 grants it to "
                      "the login role; data requests SET ROLE to it)", name);
        } else if (!roles_pending && hist && !exists) {
            snprintf(brief, sizeof brief, "role %s", name);
            lacks_add(&l, brief, "role %s does not exist (data requests SET ROLE to it)", name);
        } else if (!roles_pending && hist && !member) {
            snprintf(brief, sizeof brief, "membership in %s", name);
            lacks_add(&l, brief, "membership in role %s (data requests SET ROLE to it)", name);
        }
    }
    /* 013 creates the SELECT-only roles; leases grant them (CREATEROLE or ADMIN OPTION) */
    for (int i = NAPP_ROLES; read_roles_pending && i < NROLES; i++) {
        char brief[64];
        if (!yes(roles, i, 1) && !createrole) {
            snprintf(brief, sizeof brief, "role %s", app_roles[i]);
            lacks_add(&l, brief, "role %s does not exist and %s lacks CREATEROLE to create it "
                      "(migration 013 creates the read-only roles)", app_roles[i], user);
        }
    }
    if (l.oom) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (json_array_size(missing) > 0) {
        char list[900] = "";
        size_t i;
        json_t *line;
        json_array_foreach(missing, i, line) {
            size_t used = strlen(list);
            snprintf(list + used, sizeof list - used, "%s%s", i ? "; " : "", json_string_value(line));
        }
        /* the whole story in the log; the message names the items and the fix */
        cdb_log_error("migrate.preflight", "role %s may not run the migrations of database %s; it lacks: %s. "
                      "Run the SQL of `coredb setup-sql --role %s --database %s` once as a superuser "
                      "(docs/production.md)", user, db, list, user, db);
        rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                           "DATABASE_URL: role %s lacks %s; run `coredb setup-sql` as a superuser "
                           "(docs/production.md)", user, l.brief);
        cdb_error_detail(err, "role", json_string(user));
        cdb_error_detail(err, "missing", json_incref(missing));
        cdb_error_detail(err, "fix", json_string("coredb setup-sql"));
        goto out;
    }
    if (!yes(facts, 0, F_TRIGGER) && (trigger_pending || hist))
        cdb_log_warn("migrate.no_event_trigger",
                     "role %s is not a superuser and the event trigger coredb_catalog_change does not exist: "
                     "new tables and grants reach the API within 30 s (periodic catalog reload) instead of at "
                     "once; `coredb setup-sql` creates the trigger as a superuser", user);
out:
    json_decref(missing);
    PQclear(hist);
    PQclear(roles);
    PQclear(facts);
    return rc;
}
