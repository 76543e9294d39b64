/*
 * users_list.c - cdb_users_list (users.h): the admin's listing of users,
 * paginated by keyset on (created_at, user_id) so a page boundary stays put
 * while users are created or deleted, which OFFSET cannot promise.
 *
 * The cursor is "v1:<created_at as microseconds since the epoch>:<user_id>"
 * in unpadded base64url: opaque to callers, checked field by field here
 * before it reaches SQL, where it is only ever a bound parameter (as is the
 * email filter). Microseconds are PostgreSQL's timestamp precision, so the
 * round trip through the cursor is exact.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "identity/identity_internal.h"
#include "identity/user_input.h"
#include "store/pg.h"

#define CURSOR_PREFIX "v1:"
#define CURSOR_TEXT_MAX 64 /* "v1:" + up to 20 digits/sign + ':' + 36 */
#define CURSOR_B64_MAX 100

static int bad_cursor(cdb_error *err)
{
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "cursor",
                                "cursor: not a cursor of this listing (use next_cursor as given)");
}

/* Decodes a cursor into its microseconds (text, digits only) and user id. */
static int cursor_decode(const char *cursor, char micros[24], char id[37], cdb_error *err)
{
    unsigned char text[CURSOR_TEXT_MAX + 1];
    size_t len = 0, n = strlen(cursor);
    const char *end = NULL;
    if (n == 0 || n > CURSOR_B64_MAX ||
        sodium_base642bin(text, CURSOR_TEXT_MAX, cursor, n, NULL, &len, &end,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 || end != cursor + n)
        return bad_cursor(err);
    text[len] = '\0';
    const char *t = (const char *)text;
    if (strlen(t) != len || strncmp(t, CURSOR_PREFIX, strlen(CURSOR_PREFIX)) != 0)
        return bad_cursor(err);
    t += strlen(CURSOR_PREFIX);
    const char *colon = strchr(t, ':');
    size_t digits = colon ? (size_t)(colon - t) : 0;
    size_t start = digits > 0 && t[0] == '-' ? 1 : 0;
    if (digits <= start || digits > 19)
        return bad_cursor(err);
    for (size_t i = start; i < digits; i++)
        if (t[i] < '0' || t[i] > '9')
            return bad_cursor(err);
    memcpy(micros, t, digits);
    micros[digits] = '\0';
    if (!cdb_uuid_norm(colon + 1, id))
        return bad_cursor(err);
    return 0;
}

/* The cursor after the row with these microseconds and id; NULL on OOM. */
static json_t *cursor_encode(const char *micros, const char *id)
{
    char text[CURSOR_TEXT_MAX + 1];
    int n = snprintf(text, sizeof text, CURSOR_PREFIX "%s:%s", micros, id);
    if (n < 0 || (size_t)n >= sizeof text)
        return NULL;
    char b64[CURSOR_B64_MAX + 1];
    if (sodium_base64_ENCODED_LEN((size_t)n, sodium_base64_VARIANT_URLSAFE_NO_PADDING) > sizeof b64)
        return NULL;
    sodium_bin2base64(b64, sizeof b64, (const unsigned char *)text, (size_t)n,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return json_string(b64);
}

/* Splits the email filter into an exact or a prefix match (users.h). */
static int email_filter(const char *email, char **exact, char **prefix, cdb_error *err)
{
    size_t n = strlen(email);
    json_t *probe = json_string(email); /* NULL for invalid UTF-8 */
    bool utf8 = probe != NULL;
    json_decref(probe);
    bool star = n > 0 && email[n - 1] == '*';
    if (!utf8 || n - star == 0 || n - star > EMAIL_MAX || memchr(email, '*', n - star))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "email",
                                    "email: an email address, or the start of one followed by '*' "
                                    "(UTF-8, at most %d characters)", EMAIL_MAX);
    char *copy = strndup(email, n - star);
    if (!copy)
        return cdb_error_oom(err);
    *(star ? prefix : exact) = copy;
    return 0;
}

int cdb_users_list(cdb_service *svc, const cdb_principal *caller, const cdb_users_list_options *opt,
                   json_t **out, cdb_error *err)
{
    /* $1 exact email, $2 email prefix, $3 cursor microseconds, $4 cursor id, $5 limit + 1 */
    static const char *const sql =
        "SELECT " CDB__USER_JSON ", (extract(epoch FROM u.created_at) * 1000000)::bigint, u.user_id"
        " FROM public.users u"
        " WHERE ($1::text IS NULL OR lower(u.email) = lower($1::text))"
        " AND ($2::text IS NULL OR starts_with(lower(u.email), lower($2::text)))"
        " AND ($3::bigint IS NULL OR (u.created_at, u.user_id) >"
        " (timestamptz 'epoch' + $3::bigint * interval '1 microsecond', $4::uuid))"
        " ORDER BY u.created_at, u.user_id LIMIT $5::int";
    cdb_users_list_options none = {0};
    char micros[24], id[37], limit_s[16];
    char *exact = NULL, *prefix = NULL;
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    json_t *users = NULL, *next = NULL;
    int rc;

    *out = NULL;
    if (!opt)
        opt = &none;
    if ((rc = cdb_principal_require(caller, err)) < 0)
        return rc;
    if (!cdb_principal_is_admin(caller))
        return cdb_error_set(err, CDB_ERR_FORBIDDEN, "Only an admin may list users");
    int limit = opt->limit == 0 ? CDB_USERS_LIST_DEFAULT_LIMIT : opt->limit;
    if (limit < 1 || limit > CDB_USERS_LIST_MAX_LIMIT)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "limit",
                                    "limit: must be an integer from 1 to %d", CDB_USERS_LIST_MAX_LIMIT);
    if (opt->cursor && (rc = cursor_decode(opt->cursor, micros, id, err)) < 0)
        return rc;
    if (opt->email && (rc = email_filter(opt->email, &exact, &prefix, err)) < 0)
        return rc;
    snprintf(limit_s, sizeof limit_s, "%d", limit + 1); /* one more tells whether a next page exists */

    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn) {
        rc = err->code;
        goto out_free;
    }
    const char *params[] = {exact, prefix, opt->cursor ? micros : NULL, opt->cursor ? id : NULL, limit_s};
    if ((rc = cdb_pg_exec(conn, sql, 5, params, &res, err)) < 0)
        goto out_release;
    if (!(users = json_array())) {
        rc = cdb_error_oom(err);
        goto out_release;
    }
    int rows = PQntuples(res), shown = rows > limit ? limit : rows;
    for (int i = 0; i < shown; i++) {
        json_t *user = NULL;
        if ((rc = cdb_pg_json_parse(PQgetvalue(res, i, 0), &user, err)) < 0)
            goto out_release;
        if (json_array_append_new(users, user) < 0) {
            rc = cdb_error_oom(err);
            goto out_release;
        }
    }
    if (rows > limit && !(next = cursor_encode(PQgetvalue(res, shown - 1, 1), PQgetvalue(res, shown - 1, 2)))) {
        rc = cdb_error_oom(err);
        goto out_release;
    }
    *out = json_pack("{s:O, s:O}", "users", users, "next_cursor", next ? next : json_null());
    if (!*out)
        rc = cdb_error_oom(err);

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
out_free:
    json_decref(users);
    json_decref(next);
    free(exact);
    free(prefix);
    return rc;
}
