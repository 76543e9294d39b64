/*
 * access_rls.c - a row-level security policy on an application table
 * (cdb_access_enable_row_level_security, access.h).
 *
 * The policy expression is the one piece of a request that is SQL by
 * nature, so it is the one piece spliced into a statement, inside
 * CREATE POLICY ... USING (expr). Four checks keep it one expression:
 *   1. expr_lex_check: no ';', no comment, no '$' (dollar quotes and
 *      parameters), every literal and quoted identifier closed, and the
 *      parentheses balanced without ever closing one it did not open. This
 *      is what stops `true) OR (true` and `true) WITH CHECK (true`, which a
 *      parse alone accepts (the first inside WHERE, the second inside
 *      CREATE POLICY). standard_conforming_strings is forced on for the
 *      transaction so PostgreSQL reads literals the way the scan did.
 *   2. A prepared SELECT 1 FROM table WHERE (expr): it parses and analyses
 *      the expression against the table's columns, requires a boolean, and
 *      the extended protocol refuses a second command.
 *   3. CREATE POLICY itself goes through the extended protocol too.
 *   4. What PostgreSQL stored is read back: exactly the clause asked for
 *      (USING, or WITH CHECK for INSERT) and not the other.
 * A rejected expression answers VALIDATION_FAILED with PostgreSQL's primary
 * message about the expression (never the statement around it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "coredb/role.h"
#include "management/access_internal.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/txn.h"

#define run(conn, err, ...) cdb__admin_run((conn), "access.statement_failed", (err), __VA_ARGS__)

#define ACTION "rls.create"
enum { MAX_ROLES = 16 };

static const char *const FIELDS[] = {"table_name", "policy_name", "policy", "roles", "command",
                                     "restrictive", "force", "replace", NULL};
static const char *const COMMANDS[] = {"ALL", "SELECT", "INSERT", "UPDATE", "DELETE", NULL};

/* $1 table oid, $2 policy name: whether it exists. */
static const char EXISTS_SQL[] = "SELECT 1 FROM pg_policy WHERE polrelid = $1::oid AND polname = $2";

/* $1 table oid, $2 policy name: what PostgreSQL stored. */
static const char STORED_SQL[] =
    "SELECT pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),"
    " c.relforcerowsecurity"
    " FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.polrelid = $1::oid AND p.polname = $2";

static bool ident_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '$' || c >= 0x80;
}

/*
 * NULL when s (n bytes) lexes as something that stays inside one pair of
 * parentheses, else why not. Literals: '...' with '' (and, after a
 * standalone E prefix, backslash escapes); quoted identifiers "..." with "".
 */
static const char *expr_lex_check(const char *s, size_t n)
{
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\0')
            return "contains a NUL byte";
        if (c == '\'' || c == '"') {
            bool backslash = c == '\'' && i > 0 && (s[i - 1] == 'E' || s[i - 1] == 'e') &&
                             (i < 2 || !ident_char((unsigned char)s[i - 2]));
            for (i++;; i++) {
                if (i >= n)
                    return c == '\'' ? "has an unterminated string literal"
                                     : "has an unterminated quoted identifier";
                if (s[i] == '\0')
                    return "contains a NUL byte";
                if (backslash && s[i] == '\\') {
                    i++;
                    if (i >= n)
                        return "has an unterminated string literal";
                    continue;
                }
                if ((unsigned char)s[i] == c) {
                    if (i + 1 < n && (unsigned char)s[i + 1] == c) {
                        i++;
                        continue;
                    }
                    break;
                }
            }
            continue;
        }
        if (c == ';')
            return "contains ';' (one expression, not statements)";
        if (c == '-' && i + 1 < n && s[i + 1] == '-')
            return "contains a comment (--)";
        if (c == '/' && i + 1 < n && s[i + 1] == '*')
            return "contains a comment (/*)";
        if (c == '$')
            return "contains '$' (no parameters or dollar quoting)";
        if (c == '(')
            depth++;
        else if (c == ')' && --depth < 0)
            return "closes a parenthesis it did not open";
    }
    return depth ? "leaves a parenthesis open" : NULL;
}

/* What the request asks for, checked for shape (not yet against the catalog). */
typedef struct rls_req {
    const json_t *table;
    const char *policy_name;
    const char *expr;
    const char *command;
    const json_t *roles;           /* array or NULL: PUBLIC */
    bool restrictive, force, replace;
} rls_req;

static int parse_request(const json_t *request, rls_req *q, cdb_error *err)
{
    int rc;
    *q = (rls_req){.command = "ALL"};
    if ((rc = cdb__access_fields(request, FIELDS, err)) < 0 ||
        (rc = cdb__admin_name_check("policy_name", json_object_get(request, "policy_name"), &q->policy_name,
                                    err)) < 0 ||
        (rc = cdb__access_bool(request, "restrictive", false, &q->restrictive, err)) < 0 ||
        (rc = cdb__access_bool(request, "force", false, &q->force, err)) < 0 ||
        (rc = cdb__access_bool(request, "replace", false, &q->replace, err)) < 0)
        return rc;
    if (strncmp(q->policy_name, "coredb", 6) == 0)
        return cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "field", "policy_name",
                                    "policy_name: names starting with coredb belong to coredb's own "
                                    "policies (coredb table expose)");
    q->table = json_object_get(request, "table_name");
    if (!json_is_string(q->table))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "table_name",
                                    "table_name must be a string: name or schema.name");

    const json_t *e = json_object_get(request, "policy");
    if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > CDB_ACCESS_EXPR_MAX)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "policy",
                                    "policy must be a SQL boolean expression of 1 to %d bytes",
                                    CDB_ACCESS_EXPR_MAX);
    const char *why = expr_lex_check(json_string_value(e), json_string_length(e));
    if (why)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "policy",
                                    "policy must be one SQL expression: it %s", why);
    q->expr = json_string_value(e);

    const json_t *c = json_object_get(request, "command");
    if (c) {
        const char *const *k = COMMANDS;
        while (*k && !(json_is_string(c) && strcasecmp(*k, json_string_value(c)) == 0 &&
                       strlen(*k) == json_string_length(c)))
            k++;
        if (!*k)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "command",
                                        "command must be one of ALL, SELECT, INSERT, UPDATE, DELETE");
        q->command = *k;
    }
    const json_t *r = json_object_get(request, "roles");
    if (r && !json_is_null(r)) {
        if (!json_is_array(r) || json_array_size(r) == 0 || json_array_size(r) > MAX_ROLES)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "roles",
                                        "roles must be a list of 1 to %d role names", MAX_ROLES);
        q->roles = r;
    }
    return 0;
}

static bool app_role(const char *name)
{
    return strcmp(name, cdb_role_db_name(CDB_ROLE_USER)) == 0 ||
           strcmp(name, cdb_role_db_name(CDB_ROLE_PREMIUM)) == 0 ||
           strcmp(name, cdb_role_db_name(CDB_ROLE_ADMIN)) == 0;
}

/* $1 role: whether it exists. */
static const char ROLE_EXISTS_SQL[] = "SELECT 1 FROM pg_roles WHERE rolname = $1";

/*
 * Checks each role (an application role, public, or one that is not
 * coredb's) and writes them quoted, comma separated, into to (size
 * tosize); *names gets them as a JSON array.
 */
static int roles_sql(PGconn *conn, const rls_req *q, char *to, size_t tosize, json_t **names,
                     cdb_error *err)
{
    int rc = 0;
    size_t used = 0, i;
    const json_t *v;
    PGresult *res = NULL;
    if (!(*names = json_array()))
        return cdb_error_oom(err);
    if (!q->roles) {
        snprintf(to, tosize, "PUBLIC");
        return json_array_append_new(*names, json_string("public")) < 0 ? cdb_error_oom(err) : 0;
    }
    to[0] = '\0';
    json_array_foreach(q->roles, i, v) {
        const char *name;
        char *quoted = NULL;
        if ((rc = cdb__admin_name_check("roles", v, &name, err)) < 0)
            break;
        if (strcmp(name, "public") == 0) {
            quoted = NULL;
        } else if (app_role(name)) {
            const char *params[] = {name};
            PQclear(res);
            res = NULL;
            if ((rc = cdb_pg_exec(conn, ROLE_EXISTS_SQL, 1, params, &res, err)) < 0)
                break;
            if (PQntuples(res) != 1) {
                rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", "roles", "roles: no role named %s",
                                          name);
                break;
            }
        } else if ((rc = cdb__admin_role_check(conn, "roles", name, true, err)) < 0) {
            break;
        }
        if (strcmp(name, "public") != 0 && !(quoted = cdb__admin_quote(conn, name))) {
            rc = cdb_error_oom(err);
            break;
        }
        int n = snprintf(to + used, tosize - used, "%s%s", used ? ", " : "", quoted ? quoted : "PUBLIC");
        PQfreemem(quoted);
        if (n < 0 || (size_t)n >= tosize - used || json_array_append_new(*names, json_string(name)) < 0) {
            rc = cdb_error_oom(err);
            break;
        }
        used += (size_t)n;
    }
    PQclear(res);
    return rc;
}

/*
 * Parses and analyses expr as a condition over the table (a prepared,
 * never executed SELECT). VALIDATION_FAILED with PostgreSQL's reason.
 */
static int parse_check(PGconn *conn, const cdb__access_rel *t, const char *expr, cdb_error *err)
{
    char *sql = NULL;
    int rc = 0;
    if (asprintf(&sql, "SELECT 1 FROM %s.%s WHERE (%s)", t->qschema, t->qname, expr) < 0)
        return cdb_error_oom(err);
    PGresult *res = cdb_pg_prepare(conn, "", sql, 0);
    free(sql);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        rc = 0;
    } else if (state && (strncmp(state, "42", 2) == 0 || strncmp(state, "22", 2) == 0 ||
                         strncmp(state, "0A", 2) == 0 || strncmp(state, "54", 2) == 0)) {
        /* syntax, undefined column or function, wrong type, unsupported, too deep: the expression's fault */
        const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "policy",
                                  "policy is not a boolean expression over %s.%s", t->schema, t->name);
        cdb_error_detail(err, "reason", json_string(primary ? primary : "invalid"));
    } else {
        rc = cdb_pg_error_from_result(conn, res, err);
    }
    PQclear(res);
    return rc;
}

/* Reads back what was stored: exactly the clause asked for. */
static int stored_check(PGconn *conn, const cdb__access_rel *t, const rls_req *q, json_t **expr,
                        bool *forced, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {t->oid, q->policy_name};
    int rc = cdb_pg_exec(conn, STORED_SQL, 2, params, &res, err);
    if (rc < 0)
        goto out;
    bool insert = strcmp(q->command, "INSERT") == 0;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, insert ? 1 : 0) || !PQgetisnull(res, 0, insert ? 0 : 1)) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "policy",
                                  "policy did not become exactly one %s clause", insert ? "WITH CHECK" : "USING");
        goto out;
    }
    *forced = PQgetvalue(res, 0, 2)[0] == 't';
    if (!(*expr = json_string(PQgetvalue(res, 0, insert ? 1 : 0))))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    return rc;
}

/* Everything inside the transaction; *out on success. */
static int rls_in_tx(cdb_service *svc, PGconn *conn, const cdb_principal *caller, const json_t *request,
                     const rls_req *q, cdb__access_rel *t, json_t **out, cdb_error *err)
{
    char roles[MAX_ROLES * (2 * CDB_ADMIN_IDENT_MAX + 4) + 8];
    json_t *names = NULL, *stored = NULL;
    PGresult *res = NULL;
    char *qpolicy = NULL;
    bool exists = false, forced = false;
    int rc;

    if ((rc = run(conn, err, "SET LOCAL standard_conforming_strings = on")) < 0 ||
        (rc = cdb__access_rel_find(conn, "table_name", q->table, svc->cfg->postgres_schema, "rp", "table", t,
                                   err)) < 0 ||
        /*
         * two calls on one table run one after the other (the mode conflicts with
         * itself, as tables.c's expose takes it): taken before anything else
         * touches the table, so no call holds a weaker lock it must upgrade
         */
        (rc = run(conn, err, "LOCK TABLE %s.%s IN SHARE ROW EXCLUSIVE MODE", t->qschema, t->qname)) < 0 ||
        (rc = roles_sql(conn, q, roles, sizeof roles, &names, err)) < 0 ||
        (rc = parse_check(conn, t, q->expr, err)) < 0)
        goto out;
    const char *params[] = {t->oid, q->policy_name};
    if ((rc = cdb_pg_exec(conn, EXISTS_SQL, 2, params, &res, err)) < 0)
        goto out;
    exists = PQntuples(res) == 1;
    if (exists && !q->replace) {
        rc = cdb_error_set_detail(err, CDB_ERR_CONFLICT, "field", "policy_name",
                                  "Table %s.%s already has a policy %s (replace: true replaces it)", t->schema,
                                  t->name, q->policy_name);
        goto out;
    }
    if (!(qpolicy = cdb__admin_quote(conn, q->policy_name))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    bool insert = strcmp(q->command, "INSERT") == 0;
    if ((exists && (rc = run(conn, err, "DROP POLICY %s ON %s.%s", qpolicy, t->qschema, t->qname)) < 0) ||
        (rc = run(conn, err, "ALTER TABLE %s.%s ENABLE ROW LEVEL SECURITY", t->qschema, t->qname)) < 0 ||
        (q->force && (rc = run(conn, err, "ALTER TABLE %s.%s FORCE ROW LEVEL SECURITY", t->qschema, t->qname)) < 0) ||
        (rc = run(conn, err, "CREATE POLICY %s ON %s.%s AS %s FOR %s TO %s %s (%s)", qpolicy, t->qschema,
                  t->qname, q->restrictive ? "RESTRICTIVE" : "PERMISSIVE", q->command, roles,
                  insert ? "WITH CHECK" : "USING", q->expr)) < 0 ||
        (rc = stored_check(conn, t, q, &stored, &forced, err)) < 0 ||
        (rc = cdb_audit_record_in(conn, caller, ACTION, t->name, request, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:s, s:s, s:s, s:s, s:b, s:O, s:O, s:b, s:b, s:b}", "table", t->name, "schema",
                           t->schema, "policy", q->policy_name, "command", q->command, "permissive",
                           !q->restrictive, "roles", names, "expression", stored, "row_security", 1,
                           "force_row_security", forced, "replaced", exists)))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    PQfreemem(qpolicy);
    json_decref(names);
    json_decref(stored);
    return rc;
}

int cdb_access_enable_row_level_security(cdb_service *svc, const cdb_principal *caller,
                                         const json_t *request, json_t **out, cdb_error *err)
{
    cdb__access_rel t = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    rls_req q;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "create row-level security policies", err)) < 0 ||
        (rc = parse_request(request, &q, err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = rls_in_tx(svc, conn, caller, request, &q, &t, out, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    /* the connection goes back first: the catalog reload takes one of its own */
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    cdb__admin_announce(svc, t.name);
    cdb_log_info("access.rls_created", "policy %s on %s.%s", q.policy_name, t.schema, t.name);

out:
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
    }
    cdb_txn_release(svc->pool, pc);
    const json_t *target = json_is_object(request) ? json_object_get(request, "table_name") : NULL;
    rc = cdb__admin_audit_failure(svc, caller, ACTION, t.name ? t.name : json_string_value(target), request,
                                   rc, err);
    cdb__access_rel_destroy(&t);
    return rc;
}
