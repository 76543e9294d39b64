/*
 * json_bodies.c - libFuzzer harness: the JSON body validators of the users
 * and admin routes, each run on the same parsed body, as far as they go
 * without a database:
 *   users       cdb_user_input_parse, create and update (src/identity/user_input.c:
 *               email, username, password policy, role, display_name, picture URL)
 *   leases      parse_acquire (src/management/leases.c: service_name,
 *               database_type, operation_type, ttl_seconds)
 *   dbauth      parse_role_request (src/management/dbauth.c: role_name, permissions,
 *               description; cdb__dbauth_body's unknown-field rule)
 *   access      parse_request of RLS policies (access_rls.c: table, policy_name,
 *               expression, command, roles, flags) and parse_permissions of grants
 *               (access_grants.c)
 *   encryption  parse_names and parse_wait (encryption.c: table_name, column_name)
 *   tables      parse_opts and check_name of the expose routes (tables.c:
 *               owner_column, read_only_for, the table name)
 *   migrations  parse_request of the migration run routes (migrate_runs.c:
 *               target_version, dry_run)
 * The private files are included to reach their statics (renamed around
 * the include where two files use one static name).
 *
 * Oracles: every refusal is VALIDATION_FAILED (or the route's other 4xx
 * codes) with details naming a field where the validator promises one;
 * an accepted users body has a lowercased e-mail and a username of
 * [a-z0-9_.-]{3,50}.
 */
#include <ctype.h>
#include <stdint.h>

#include "identity/user_input.h"
#include "management/leases.c"
#include "management/dbauth.c"
#include "management/access_grants.c"
/* the files share static names; each is renamed around its include */
#undef ACTION
#undef run
#define FIELDS rls_FIELDS
#define EXISTS_SQL rls_EXISTS_SQL
#include "management/access_rls.c"
#undef FIELDS
#undef EXISTS_SQL
#undef ACTION
#undef run
#include "management/encryption.c"
#undef run
#define parse_request migrate_parse_request
#define finish migrate_finish
#include "management/migrate_runs.c"
#undef parse_request
#undef finish
#undef run
#define check_name tables_check_name
#define LIST_SQL tables_LIST_SQL
#include "management/tables.c"
#undef check_name
#undef LIST_SQL

static cdb_config cfg;
static struct cdb_service svc;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    cfg.password_min_length = 10;
    cfg.lease_ttl_s = 300;
    cfg.lease_max_ttl_s = 3600;
    svc.cfg = &cfg;
    cdb_log_set_level(CDB_LOG_OFF);
    return 0;
}

static void check(int rc, cdb_error *err, const char *who)
{
    if (rc == 0 || rc == CDB_ERR_VALIDATION_FAILED || rc == CDB_ERR_INVALID_FILTER ||
        rc == CDB_ERR_FORBIDDEN || rc == CDB_ERR_UNKNOWN_TABLE || rc == CDB_ERR_UNKNOWN_COLUMN) {
        cdb_error_destroy(err);
        cdb_error_init(err);
        return;
    }
    fprintf(stderr, "%s: unexpected code %s: %s\n", who, cdb_err_name((cdb_err)rc), err->message);
    abort();
}

static void check_user(const cdb_user_input *in)
{
    if (in->has_email)
        for (const char *p = in->email; *p; p++)
            if (isupper((unsigned char)*p))
                abort();
    if (in->username) {
        size_t n = strlen(in->username);
        if (n < USERNAME_MIN || n > USERNAME_MAX || strspn(in->username, "abcdefghijklmnopqrstuvwxyz0123456789_.-") != n)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (!body)
        return 0;
    cdb_error err;
    cdb_error_init(&err);
    int rc;

    for (int create = 0; create < 2; create++) {
        cdb_user_input in;
        memset(&in, 0, sizeof in);
        rc = cdb_user_input_parse(&cfg, body, create, &in, &err);
        if (rc == 0)
            check_user(&in);
        check(rc, &err, "users");
    }

    acquire_req a = {0};
    check(parse_acquire(&svc, body, &a, &err), &err, "leases");

    role_req r;
    memset(&r, 0, sizeof r);
    rc = parse_role_request(body, &r, &err);
    for (size_t i = 0; i < PERMISSIONS_MAX; i++)
        free(r.perms[i].table);
    check(rc, &err, "dbauth");

    rls_req q;
    memset(&q, 0, sizeof q);
    check(parse_request(body, &q, &err), &err, "access rls");
    unsigned sb = 0, tb = 0;
    check(parse_permissions(json_object_get(body, "permissions"), &sb, &tb, &err), &err, "access grants");

    const char *table = NULL, *column = NULL;
    bool wait = false;
    check(parse_names(body, &table, &column, &err), &err, "encryption names");
    check(parse_wait(body, &wait, &err), &err, "encryption wait");

    const char *target = NULL;
    bool dry = false;
    check(migrate_parse_request(body, &target, &dry, &err), &err, "migrations");

    expose_opts eo;
    check(parse_opts(body, &eo, &err), &err, "tables expose");
    check(tables_check_name(json_string_value(json_object_get(body, "table")), &err), &err, "tables name");

    cdb_error_destroy(&err);
    json_decref(body);
    return 0;
}
