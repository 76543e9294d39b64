/*
 * dbauth.c - database roles (coredb/dbauth.h: cdb_dbauth_create_role) and
 * the helpers every part shares (dbauth_internal.h); logins live in
 * dbauth_users.c, revoking their access in dbauth_revoke.c.
 *
 * A permission names a privilege from a fixed list (compared as words, so
 * nothing but a list entry ever reaches SQL) and optionally a table, which
 * is looked up in POSTGRES_SCHEMA as a bound parameter; the catalog's own
 * name, quoted, is what GRANT gets. Each grant is checked before (may
 * coredb's login grant it at all: otherwise PostgreSQL fails it as a
 * missing privilege, which is not the login lacking CREATEROLE) and
 * afterwards with has_table_privilege, because PostgreSQL answers a GRANT
 * its issuer may not fully make with a warning, not an error: a role
 * silently missing what was asked for would be worse than a refusal. Both
 * are a 403 naming the table.
 */
#include "management/dbauth_internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/txn.h"

#define PERMISSIONS_MAX 64
#define DESCRIPTION_MAX 1024
#define ROLES_MAX 64

static const char *const PRIVILEGES[] = {"SELECT",     "INSERT",  "UPDATE", "DELETE", "TRUNCATE",
                                         "REFERENCES", "TRIGGER", NULL};

/* $1 schema, $2 name: a table (or view, matview, foreign table) of the schema. */
static const char TABLE_SQL[] =
    "SELECT c.oid::text, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')";

/* $1 role, $2 privilege, $3 schema, $4 table oid or NULL (every table): a table it did not get. */
static const char MISSED_SQL[] =
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = $3 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    " AND ($4::oid IS NULL OR c.oid = $4::oid) AND NOT has_table_privilege($1, c.oid, $2)"
    " ORDER BY c.relname LIMIT 1";

/*
 * $1 privilege, $2 schema, $3 table oid or NULL (every table): a table
 * coredb's login may not grant that privilege on: it neither owns it (nor
 * inherits from its owner) nor holds the privilege WITH GRANT OPTION.
 * Asked before the GRANT, because such a GRANT fails outright (42501) when
 * the login holds no privilege at all on the table, and only warns when it
 * holds some: either way the answer is a 403 naming the table.
 */
static const char UNGRANTABLE_SQL[] =
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    " AND ($3::oid IS NULL OR c.oid = $3::oid) AND NOT pg_has_role(current_user, c.relowner, 'USAGE')"
    " AND NOT has_table_privilege(current_user, c.oid, $1 || ' WITH GRANT OPTION')"
    " ORDER BY c.relname LIMIT 1";

/*
 * $1 schema, $2 table oid or NULL (every table): a table with row-level
 * security enabled, which TRUNCATE and TRIGGER would get around (see
 * check_rls_bypass).
 */
static const char RLS_SQL[] =
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relrowsecurity"
    " AND ($2::oid IS NULL OR c.oid = $2::oid) ORDER BY c.relname LIMIT 1";

static const char EXISTS_SQL[] = "SELECT 1 FROM pg_roles WHERE rolname = $1";

/* ---- shared helpers (dbauth_internal.h) ---- */

int cdb__dbauth_privilege_error(int rc, const char *what, cdb_error *err)
{
    if (rc < 0 && strcmp(cdb__admin_sqlstate(err), "42710") == 0)
        rc = cdb_error_set(err, CDB_ERR_CONFLICT, "A role of that name exists already");
    else
        rc = cdb__admin_privilege_error(rc, what, err);
    return rc;
}

int cdb__dbauth_run(PGconn *conn, const char *what, cdb_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cdb__admin_runv(conn, "dbauth.statement_failed", err, fmt, ap);
    va_end(ap);
    return cdb__dbauth_privilege_error(rc, what, err);
}

int cdb__dbauth_body(const json_t *request, bool allow_null, const char *const *fields, cdb_error *err)
{
    if (!request && allow_null)
        return 0;
    if (!json_is_object(request))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "The body must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)request, key, v) {
        bool known = false;
        for (const char *const *f = fields; *f && !known; f++)
            known = strcmp(*f, key) == 0;
        if (!known) {
            /* the key came from the client: shown only when it is printable and short */
            bool plain = strlen(key) <= 40 && strspn(key, "abcdefghijklmnopqrstuvwxyz_") == strlen(key);
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", plain ? key : NULL,
                                        "Unknown field %s", plain ? key : "in the body");
        }
    }
    return 0;
}

int cdb__dbauth_password(const json_t *request, const char *field, int min_chars, const char **pw,
                         cdb_error *err)
{
    json_t *v = json_object_get(request, field);
    if (!v)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s is required", field);
    if (!json_is_string(v))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s must be a string",
                                    field);
    int rc = cdb_password_check_length(json_string_value(v), json_string_length(v), min_chars, field, err);
    if (rc == 0)
        *pw = json_string_value(v);
    return rc;
}

int cdb__dbauth_verifier(PGconn *conn, const char *user, const char *password, char **literal,
                         cdb_error *err)
{
    *literal = NULL;
    /* with the algorithm named, libpq computes the verifier locally (no round trip) */
    char *verifier = PQencryptPasswordConn(conn, password, user, "scram-sha-256");
    if (!verifier)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Could not compute the password verifier");
    *literal = PQescapeLiteral(conn, verifier, strlen(verifier));
    PQfreemem(verifier);
    return *literal ? 0 : cdb_error_oom(err);
}

int cdb__dbauth_absent(PGconn *conn, const char *field, const char *name, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {name};
    int rc = cdb_pg_exec(conn, EXISTS_SQL, 1, params, &res, err);
    if (rc == 0 && PQntuples(res) > 0)
        rc = cdb_error_set_detail(err, CDB_ERR_CONFLICT, "field", field, "%s: a role named %s exists already",
                                  field, name);
    PQclear(res);
    return rc;
}


/* The username of a path as a name: valid UTF-8 and the strict pattern. */
int cdb__dbauth_path_name(const char *username, json_t **holder, const char **out, cdb_error *err)
{
    *holder = username ? json_string(username) : NULL;
    if (!*holder)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "username",
                                    "username must be UTF-8 text");
    return cdb__admin_name_check("username", *holder, out, err);
}

/*
 * request's "roles": absent (none) or a list of at most ROLES_MAX names;
 * optional (revoke): absent or null means "everything", so an empty list
 * is refused rather than read as either.
 */
int cdb__dbauth_role_list(const json_t *request, bool optional, json_t **roles, cdb_error *err)
{
    json_t *v = json_object_get(request, "roles");
    *roles = NULL;
    if (optional && (!v || json_is_null(v)))
        return 0;
    if (v && (!json_is_array(v) || json_array_size(v) > ROLES_MAX || (optional && json_array_size(v) == 0)))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "roles",
                                    optional ? "roles must be a list of 1 to %d role names (omit it to "
                                               "revoke everything)"
                                             : "roles must be a list of at most %d role names",
                                    ROLES_MAX);
    size_t i;
    json_t *r;
    const char *name;
    json_array_foreach(v, i, r) {
        int rc = cdb__admin_name_check("roles", r, &name, err);
        if (rc < 0)
            return rc;
    }
    *roles = v;
    return 0;
}

/* ---- create_role ---- */

/* One permission of the request, resolved. */
typedef struct perm {
    const char *privilege;         /* an entry of PRIVILEGES */
    char oid[16];                  /* the table's, "" for every table */
    char *table;                   /* the catalog's name (malloc), NULL for every table */
} perm;

typedef struct role_req {
    const char *name;
    const char *description;       /* NULL: none */
    perm perms[PERMISSIONS_MAX];
    size_t nperms;
} role_req;

static void role_req_destroy(role_req *r)
{
    for (size_t i = 0; i < r->nperms; i++)
        free(r->perms[i].table);
}

/* The privilege word at s (len bytes), upper-cased, or NULL when it is not one of PRIVILEGES. */
static const char *privilege_of(const char *s, size_t len)
{
    char word[16];
    if (len == 0 || len >= sizeof word)
        return NULL;
    for (size_t i = 0; i < len; i++)
        word[i] = (char)toupper((unsigned char)s[i]);
    word[len] = '\0';
    for (const char *const *p = PRIVILEGES; *p; p++)
        if (strcmp(*p, word) == 0)
            return *p;
    return NULL;
}

/* How many bytes of s (len bytes) to show, at most max, never ending inside a UTF-8 sequence. */
static int shown(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return (int)len;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
        max--;
    return (int)max;
}

static int bad_permission(cdb_error *err)
{
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "permissions",
                                "permissions must be a list of \"PRIVILEGE\" or \"PRIVILEGE ON table\" "
                                "(privileges: " CDB_DBAUTH_PRIVILEGES ")");
}

/* Parses "PRIV" / "PRIV ON table" into p, looking the table up in schema. */
static int parse_permission(PGconn *conn, const char *schema, const json_t *v, perm *p, cdb_error *err)
{
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return bad_permission(err);
    const char *s = json_string_value(v);
    s += strspn(s, " ");
    size_t wlen = strcspn(s, " ");
    if (!(p->privilege = privilege_of(s, wlen))) {
        int rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "permissions",
                                      "Unknown privilege %.*s in permissions (expected one of "
                                      CDB_DBAUTH_PRIVILEGES ")",
                                      shown(s, wlen, 40), s);
        cdb_error_detail(err, "privilege", json_stringn(s, (size_t)shown(s, wlen, 63)));
        return rc;
    }
    s += wlen;
    s += strspn(s, " ");
    if (!*s)
        return 0;
    if (strncasecmp(s, "ON ", 3) != 0)
        return bad_permission(err);
    s += 3;
    s += strspn(s, " ");
    size_t tlen = strlen(s);
    while (tlen > 0 && s[tlen - 1] == ' ')
        tlen--;
    if (tlen == 0)
        return bad_permission(err);

    char *name = strndup(s, tlen);
    PGresult *res = NULL;
    int rc = 0;
    if (!name) {
        rc = cdb_error_oom(err);
        goto out;
    }
    const char *params[] = {schema, name};
    if (tlen <= CDB_ADMIN_IDENT_MAX && (rc = cdb_pg_exec(conn, TABLE_SQL, 2, params, &res, err)) < 0)
        goto out;
    if (!res || PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "permissions",
                                  "Unknown table %.*s in permissions: no table of that name in schema %s",
                                  shown(name, tlen, 63), name, schema);
        cdb_error_detail(err, "table", json_stringn(name, (size_t)shown(name, tlen, 63)));
        goto out;
    }
    snprintf(p->oid, sizeof p->oid, "%s", PQgetvalue(res, 0, 0));
    if (!(p->table = strdup(PQgetvalue(res, 0, 1))))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    free(name);
    return rc;
}

/*
 * TRUNCATE empties a table whatever its row-level security says, and
 * TRIGGER lets the role attach code that sees every row coredb writes (the
 * users table's password hashes among them): on a table that relies on
 * row-level security (coredb's own, or an exposed one) either would undo
 * it, so they are refused there (FORBIDDEN naming the table), also as part
 * of "every table". Granted per table, they stay possible elsewhere.
 */
static int check_rls_bypass(PGconn *conn, const char *schema, const perm *p, cdb_error *err)
{
    if (strcmp(p->privilege, "TRUNCATE") != 0 && strcmp(p->privilege, "TRIGGER") != 0)
        return 0;
    PGresult *res = NULL;
    const char *params[] = {schema, p->table ? p->oid : NULL};
    int rc = cdb_pg_exec(conn, RLS_SQL, 2, params, &res, err);
    if (rc == 0 && PQntuples(res) > 0) {
        rc = cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "table", PQgetvalue(res, 0, 0),
                                  "%s is not limited by row-level security, which table %s relies on: "
                                  "grant it per table, on tables without row-level security",
                                  p->privilege, PQgetvalue(res, 0, 0));
        cdb_error_detail(err, "privilege", json_string(p->privilege));
    }
    PQclear(res);
    return rc;
}

/* Checks the request's shape and its names (those that need no catalog). */
static int parse_role_request(const json_t *request, role_req *r, cdb_error *err)
{
    static const char *const fields[] = {"role_name", "permissions", "description", NULL};
    int rc;
    if ((rc = cdb__dbauth_body(request, false, fields, err)) < 0 ||
        (rc = cdb__admin_name_check("role_name", json_object_get(request, "role_name"), &r->name, err)) < 0)
        return rc;
    json_t *perms = json_object_get(request, "permissions");
    if (!json_is_array(perms) || json_array_size(perms) > PERMISSIONS_MAX)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "permissions",
                                    "permissions must be a list of at most %d privileges", PERMISSIONS_MAX);
    json_t *d = json_object_get(request, "description");
    if (d && !json_is_null(d)) {
        if (!json_is_string(d) || json_string_length(d) > DESCRIPTION_MAX ||
            strlen(json_string_value(d)) != json_string_length(d))
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "description",
                                        "description must be text of at most %d bytes, without NUL",
                                        DESCRIPTION_MAX);
        r->description = json_string_value(d);
    }
    return 0;
}

/*
 * Runs a query naming a table (UNGRANTABLE_SQL, MISSED_SQL): one row = 403
 * naming it, the same answer whether the GRANT would fail or only warn.
 * *res is the caller's scratch, cleared here.
 */
static int refuse_missed(PGconn *conn, const char *sql, int n, const char *const *params, const char *privilege,
                         PGresult **res, cdb_error *err)
{
    PQclear(*res);
    *res = NULL;
    int rc = cdb_pg_exec(conn, sql, n, params, res, err);
    if (rc == 0 && PQntuples(*res) > 0)
        rc = cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "table", PQgetvalue(*res, 0, 0),
                                  "coredb's database login cannot grant %s on table %s: it neither owns "
                                  "it nor holds that privilege WITH GRANT OPTION",
                                  privilege, PQgetvalue(*res, 0, 0));
    PQclear(*res);
    *res = NULL;
    return rc;
}

/* Inside the transaction: the role, its grants (each verified), its comment. */
static int create_role_in_tx(PGconn *conn, const char *schema, const json_t *perms, role_req *r,
                             cdb_error *err)
{
    char *qrole = cdb__admin_quote(conn, r->name), *qschema = cdb__admin_quote(conn, schema);
    char *qtable = NULL, *comment = NULL;
    PGresult *res = NULL;
    int rc = 0;
    if (!qrole || !qschema) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb__admin_role_check(conn, "role_name", r->name, false, err)) < 0 ||
        (rc = cdb__dbauth_absent(conn, "role_name", r->name, err)) < 0)
        goto out;
    size_t i;
    json_t *v;
    json_array_foreach(perms, i, v) {
        if ((rc = parse_permission(conn, schema, v, &r->perms[i], err)) < 0)
            goto out;
        r->nperms = i + 1;
        if ((rc = check_rls_bypass(conn, schema, &r->perms[i], err)) < 0)
            goto out;
    }
    r->nperms = json_array_size(perms);
    if ((rc = cdb__dbauth_run(conn, "create roles (CREATE ROLE)", err, "CREATE ROLE %s NOLOGIN", qrole)) < 0)
        goto out;
    if (r->nperms > 0 &&
        (rc = cdb__dbauth_run(conn, "grant USAGE on the schema", err, "GRANT USAGE ON SCHEMA %s TO %s", qschema,
                              qrole)) < 0)
        goto out;
    for (i = 0; i < r->nperms; i++) {
        const perm *p = &r->perms[i];
        const char *asked[] = {p->privilege, schema, p->table ? p->oid : NULL};
        if ((rc = refuse_missed(conn, UNGRANTABLE_SQL, 3, asked, p->privilege, &res, err)) < 0)
            goto out;
        if (p->table) {
            PQfreemem(qtable);
            if (!(qtable = cdb__admin_quote(conn, p->table))) {
                rc = cdb_error_oom(err);
                goto out;
            }
            rc = cdb__dbauth_run(conn, "grant privileges on that table", err, "GRANT %s ON TABLE %s.%s TO %s",
                                 p->privilege, qschema, qtable, qrole);
        } else {
            rc = cdb__dbauth_run(conn, "grant privileges on the schema's tables", err,
                                 "GRANT %s ON ALL TABLES IN SCHEMA %s TO %s", p->privilege, qschema, qrole);
        }
        if (rc < 0)
            goto out;
        /* a GRANT its issuer may not make is only a warning: check what the role holds */
        const char *params[] = {r->name, p->privilege, schema, p->table ? p->oid : NULL};
        if ((rc = refuse_missed(conn, MISSED_SQL, 4, params, p->privilege, &res, err)) < 0)
            goto out;
    }
    if (r->description) {
        if (!(comment = PQescapeLiteral(conn, r->description, strlen(r->description)))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        rc = cdb__dbauth_run(conn, "comment on roles", err, "COMMENT ON ROLE %s IS %s", qrole, comment);
    }
out:
    PQclear(res);
    PQfreemem(qrole);
    PQfreemem(qschema);
    PQfreemem(qtable);
    PQfreemem(comment);
    return rc;
}

static json_t *role_json(const role_req *r)
{
    json_t *perms = json_array();
    for (size_t i = 0; perms && i < r->nperms; i++) {
        char buf[16 + 4 + CDB_ADMIN_IDENT_MAX + 1];
        const perm *p = &r->perms[i];
        if (p->table)
            snprintf(buf, sizeof buf, "%s ON %s", p->privilege, p->table);
        else
            snprintf(buf, sizeof buf, "%s", p->privilege);
        if (json_array_append_new(perms, json_string(buf)) < 0) {
            json_decref(perms);
            return NULL;
        }
    }
    return perms ? json_pack("{s:{s:s, s:b, s:o, s:s?}}", "role", "name", r->name, "login", 0, "permissions",
                             perms, "description", r->description)
                 : NULL;
}

int cdb_dbauth_create_role(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                           json_t **out, cdb_error *err)
{
    role_req r = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    json_t *name = json_is_object(request) ? json_object_get(request, "role_name") : NULL;
    const char *target = json_is_string(name) ? json_string_value(name) : NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "create database roles", err)) < 0 ||
        (rc = parse_role_request(request, &r, err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = create_role_in_tx(conn, svc->cfg->postgres_schema, json_object_get(request, "permissions"), &r,
                                err)) < 0)
        goto out;
    if (!(*out = role_json(&r))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_audit_record_in(conn, caller, "role.create", r.name, json_object_get(*out, "role"), err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb_log_info("dbauth.role_created", "role %s created with %zu permissions", r.name, r.nperms);

out:
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
    }
    cdb_txn_release(svc->pool, pc);    /* rolls back what did not commit */
    cdb__admin_audit_failure(svc, caller, "role.create", target, request, rc, err);
    role_req_destroy(&r);
    return rc;
}
