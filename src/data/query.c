/*
 * query.c - POST /data/query (cdb_data_query of data.h).
 *
 * A request goes through four gates in order: its shape is validated
 * without touching anything; its table and columns are resolved against
 * the caller role's catalog snapshot (only catalog names reach SQL); the
 * result cache is asked (qcache.h, keyed by caller identity + the canonical
 * request); and only then PostgreSQL runs it. The whole database part is
 * ONE round trip: the caller's role with the settings RLS reads, the page
 * of rows as JSON built by PostgreSQL and the total count, pipelined up to
 * one Sync (their one implicit transaction: no BEGIN/COMMIT, query_run.c)
 * and read back together; all are prepared statements of the pooled
 * connection, parsed and planned once per shape. Rows are spliced into the response as
 * PostgreSQL wrote them; the cached bytes are the response minus
 * execution_time_ms and cached.
 *
 * database "redis" reads one key of the caller's namespace (data_internal.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "data/data_internal.h"
#include "data/sqlbuild.h"
#include "data/crypt.h"
#include "data/documents.h"
#include "data/vectors.h"
#include "data/query_probe.h"
#include "coredb/data.h"
#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"


/* A validated request, pointing into the request JSON. */
typedef struct query_req {
    const char *table;
    const json_t *select;     /* array of strings or NULL (every readable column) */
    const json_t *filters;    /* object or NULL */
    json_t *order;            /* normalized [{column, direction}], owned */
    json_int_t page, limit;
} query_req;

static bool plain_string(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0 &&
           strlen(json_string_value(v)) == json_string_length(v);
}

static int invalid(cdb_error *err, const char *field, const char *msg)
{
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s", msg);
}

/* order_by: one {column, direction} or an array of them, into req->order. */
static int parse_order(const json_t *v, query_req *req, cdb_error *err)
{
    static const char *const members[] = {"column", "direction", NULL};
    json_t *single = NULL;
    size_t i;
    json_t *o;

    if (!v || json_is_null(v))
        return 0;
    if (json_is_object(v))
        v = single = json_pack("[O]", v);
    if (!json_is_array(v))
        return invalid(err, "order_by", "order_by must be an array of {column, direction}");
    if (!(req->order = json_array())) {
        json_decref(single);
        return cdb_error_oom(err);
    }
    int rc = 0;
    json_array_foreach(v, i, o) {
        json_t *col = json_object_get(o, "column"), *dir = json_object_get(o, "direction");
        const char *d = dir ? json_string_value(dir) : "asc";
        if (!json_is_object(o) || cdb__query_unknown_member(o, members) || !plain_string(col) ||
            (dir && !json_is_string(dir))) {
            rc = invalid(err, "order_by", "order_by must be an array of {column, direction}");
            break;
        }
        if (!d || (strcasecmp(d, "asc") != 0 && strcasecmp(d, "desc") != 0)) {
            rc = invalid(err, "order_by", "direction must be asc or desc");
            break;
        }
        json_array_append_new(req->order, json_pack("{s:O, s:s}", "column", col, "direction",
                                                    strcasecmp(d, "asc") == 0 ? "asc" : "desc"));
    }
    json_decref(single);
    return rc;
}


/* Everything that can be checked without the catalog. */
static int validate_select(const json_t *r, cdb_role role, query_req *req, cdb_error *err)
{
    static const char *const members[] = {"database", "query_type", "table", "select",
                                          "filters", "order_by", "pagination", NULL};
    const char *bad = cdb__query_unknown_member(r, members);
    json_t *v;
    size_t i;

    if (bad)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", bad, "Unknown field");
    v = json_object_get(r, "query_type");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "select") == 0))
        return invalid(err, "query_type", "query_type must be \"select\" for postgresql");
    v = json_object_get(r, "table");
    if (!plain_string(v))
        return invalid(err, "table", "table must be a non-empty string");
    req->table = json_string_value(v);
    v = json_object_get(r, "select");
    if (v && !json_is_null(v)) {
        json_t *c;
        if (!json_is_array(v) || json_array_size(v) == 0)
            return invalid(err, "select", "select must be a non-empty array of column names");
        json_array_foreach(v, i, c) {
            if (!plain_string(c))
                return invalid(err, "select", "select must be a non-empty array of column names");
        }
        req->select = v;
    }
    v = json_object_get(r, "filters");
    if (v && !json_is_null(v)) {
        if (!json_is_object(v))
            return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, NULL, NULL,
                                        "filters must be an object of column names");
        req->filters = v;
    }
    int rc = parse_order(json_object_get(r, "order_by"), req, err);
    if (rc == 0)
        rc = cdb__query_pagination(json_object_get(r, "pagination"), role, &req->page, &req->limit, err);
    return rc;
}

static const cdb_column *readable_column(const cdb_table *t, const char *name, cdb_error *err)
{
    const cdb_column *c = cdb_catalog_column(t, name);
    if (c && (c->privs & CDB_PRIV_SELECT))
        return c;
    cdb_error_set_detail(err, CDB_ERR_UNKNOWN_COLUMN, "column", name, "Unknown column");
    return NULL;
}

static bool has_string(const json_t *array, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(array, i, v) {
        if (strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

/*
 * Builds the rows statement into q (its text and params) and the count
 * statement's text into *count_sql (same params minus the last two), and
 * the resolved select list into cols (for the cache key). hidden_pk (a
 * table with encrypted columns): its primary key is added to each row as
 * CDB_CRYPT_PK_MEMBER, which decryption binds values to (and removes).
 */
static int build_sql(const cdb_catalog *cat, const cdb_table *t, const query_req *req, cdb_sql *q,
                     char **count_sql, json_t *cols, const char *hidden_pk, cdb_error *err)
{
    const char *schema = cdb_catalog_schema(cat);
    size_t i, from, where_end;
    json_t *v;
    int rc;

    cdb_sql_append(q, "SELECT row_to_json(t)::text FROM (SELECT ");
    if (req->select) {
        json_array_foreach(req->select, i, v) {
            const cdb_column *c = readable_column(t, json_string_value(v), err);
            if (!c)
                return err->code;
            if (!has_string(cols, c->name)) /* a repeated name would repeat a JSON key */
                json_array_append_new(cols, json_string(c->name));
        }
    } else {
        for (i = 0; i < t->ncolumns; i++)
            if (t->columns[i].privs & CDB_PRIV_SELECT)
                json_array_append_new(cols, json_string(t->columns[i].name));
    }
    json_array_foreach(cols, i, v) {
        if (i)
            cdb_sql_append(q, ", ");
        cdb_sql_ident(q, json_string_value(v));
    }
    if (hidden_pk) {
        cdb_sql_append(q, json_array_size(cols) ? ", " : "");
        cdb_sql_ident(q, hidden_pk);
        cdb_sql_append(q, "::text AS \"" CDB_CRYPT_PK_MEMBER "\"");
    }
    from = q->len;
    cdb_sql_append(q, " FROM ");
    cdb_sql_table(q, schema, t->name);
    if ((rc = cdb_sql_where(q, t, req->filters, err)) < 0)
        return rc;
    where_end = q->len;
    json_array_foreach(req->order, i, v) {
        const cdb_column *c = readable_column(t, json_string_value(json_object_get(v, "column")), err);
        if (!c)
            return err->code;
        cdb_sql_append(q, i ? ", " : " ORDER BY ");
        cdb_sql_ident(q, c->name);
        cdb_sql_append(q, strcmp(json_string_value(json_object_get(v, "direction")), "asc") == 0
                              ? " ASC" : " DESC");
    }
    char num[24];
    cdb_sql_append(q, " LIMIT ");
    snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, req->limit);
    if (cdb_sql_param(q, num) < 0)
        goto fail_params;
    cdb_sql_append(q, "::bigint OFFSET ");
    snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, (req->page - 1) * req->limit);
    if (cdb_sql_param(q, num) < 0)
        goto fail_params;
    cdb_sql_append(q, "::bigint) t");
    if (q->oom || asprintf(count_sql, "SELECT count(*)%.*s", (int)(where_end - from),
                           q->text + from) < 0) {
        *count_sql = NULL;
        return cdb_error_oom(err);
    }
    return 0;

fail_params:
    if (q->oom)
        return cdb_error_oom(err);
    return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, NULL, NULL,
                                "Too many filter values (at most %d)", CDB_SQL_MAX_PARAMS - 2);
}

/* identity + canonical request: what a cached answer may be reused for. */
static char *cache_key(const cdb_principal *p, const cdb_table *t, const query_req *req,
                       json_t *cols)
{
    json_t *canon = json_pack("{s:s, s:s, s:s, s:O, s:O?, s:O?, s:{s:I, s:I}}",
                              "database", "postgresql", "query_type", "select", "table", t->name,
                              "select", cols, "filters", req->filters, "order_by", req->order,
                              "pagination", "page", (json_int_t)req->page, "limit",
                              (json_int_t)req->limit);
    return cdb__query_cache_key(p, canon);
}

/* What a request resolves to before any round trip: table, statements, cache key. */
typedef struct query_plan {
    query_req req;
    cdb_catalog *cat;
    const cdb_table *t;
    cdb_colset *cs;
    const char *hidden_pk;     /* encrypted columns bound to this primary key, or NULL */
    json_t *blind_filters;
    cdb_sql q;
    char *count_sql;
    json_t *cols;
    char *key;                 /* the cache key, or NULL when caching is off */
} query_plan;

static void plan_destroy(cdb_service *svc, query_plan *pl)
{
    free(pl->key);
    free(pl->count_sql);
    cdb_sql_destroy(&pl->q);
    json_decref(pl->cols);
    json_decref(pl->blind_filters);
    json_decref(pl->req.order);
    if (pl->cs)
        cdb__colring_put(svc, pl->cs);
    if (pl->cat)
        cdb_catalog_unref(pl->cat);
}

/* plan() could not finish without loading something (may_block false). */
enum { PLAN_LATER = 1 };

/*
 * Resolves r: its shape, the caller role's catalog snapshot, encrypted
 * columns (filters through blind indexes, the primary key for decryption),
 * the statements and the cache key. With may_block false (the event loops)
 * nothing is loaded: a snapshot not in memory or the cache namespace not
 * known yet gives PLAN_LATER, and the blocking path loads it.
 */
static int plan(cdb_service *svc, const cdb_principal *p, json_t *r, bool may_block, query_plan *pl,
                cdb_error *err)
{
    int rc;

    memset(pl, 0, sizeof *pl);
    cdb_sql_init(&pl->q);
    if (!(pl->cols = json_array()))
        return cdb_error_oom(err);
    if ((rc = validate_select(r, p->role, &pl->req, err)) < 0)
        return rc;
    if (!svc->catalog)
        return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
    pl->cat = may_block ? cdb_catalog_cache_get(svc->catalog, err) : cdb_catalog_cache_peek(svc->catalog);
    if (!pl->cat)
        return may_block ? err->code : PLAN_LATER;
    pl->t = cdb_catalog_table(pl->cat, p->role, pl->req.table);
    if (!pl->t || !(pl->t->privs & CDB_PRIV_SELECT))
        return cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "table", pl->req.table, "Unknown table");
    pl->cs = may_block ? cdb__colring_get(svc, err) : cdb__colring_peek(svc);
    if (!pl->cs)
        return may_block ? err->code : PLAN_LATER;
    if ((pl->hidden_pk = cdb__colset_pk_of(pl->cs, pl->t->name))) {
        if ((rc = cdb__crypt_read_plan(pl->cs, pl->t->name, pl->req.filters, pl->req.order, &pl->blind_filters,
                                       err)) < 0)
            return rc;
        if (pl->blind_filters)
            pl->req.filters = pl->blind_filters;
    }
    if ((rc = build_sql(pl->cat, pl->t, &pl->req, &pl->q, &pl->count_sql, pl->cols, pl->hidden_pk, err)) < 0)
        return rc;
    if (!may_block && !cdb_qcache_has_namespace(svc->qcache))
        return PLAN_LATER;
    if ((rc = cdb_qcache_ensure_namespace(svc->qcache, svc->pool, err)) < 0)
        return rc;
    if (cdb_qcache_enabled(svc->qcache) && !(pl->key = cache_key(p, pl->t, &pl->req, pl->cols)))
        return cdb_error_oom(err);
    return 0;
}

static int query_postgresql(cdb_service *svc, const cdb_principal *p, json_t *r, int64_t start_us,
                            char **body_out, cdb_error *err)
{
    query_plan pl;
    char *part = NULL, *plain = NULL;
    size_t len = 0;
    bool cacheable = true;
    cdb_qcache_lookup lk = {0};
    int rc;

    if ((rc = plan(svc, p, r, true, &pl, err)) < 0)
        goto out;
    const cdb_table *t = pl.t;
    if (pl.key) {
        cdb_qcache_get(svc->qcache, t->name, pl.key, &lk);
        if (lk.hit) {
            /* the cache holds ciphertext, as PostgreSQL does: decrypted per answer */
            if (pl.hidden_pk) {
                if ((rc = cdb__crypt_read_page(pl.cs, t->name, lk.value, lk.len, &plain, &len, err)) < 0)
                    goto out;
                if (!(*body_out = cdb__query_wrap(plain, len, start_us, true)))
                    goto fail_oom;
            } else if (!(*body_out = cdb__query_wrap(lk.value, lk.len, start_us, true))) {
                goto fail_oom;
            }
            goto out;
        }
    }
    rc = cdb__query_run(svc, p, &pl.q, pl.count_sql, pl.q.nparams - 2, pl.req.page, pl.req.limit, &part, &len,
                        lk.leader ? lk.lsn_seen : UINT64_MAX, &cacheable, err);
    if (lk.leader) {
        if (rc == 0 && cacheable)
            cdb_qcache_store(svc->qcache, t->name, pl.key, lk.generation, part, len);
        else
            cdb_qcache_abandon(svc->qcache, pl.key);
    }
    if (rc == 0 && pl.hidden_pk) {
        if ((rc = cdb__crypt_read_page(pl.cs, t->name, part, len, &plain, &len, err)) < 0)
            goto out;
    }
    if (rc == 0 && !(*body_out = cdb__query_wrap(plain ? plain : part, len, start_us, false)))
        goto fail_oom;
    goto out;

fail_oom:
    rc = cdb_error_oom(err);
out:
    free(lk.value);
    free(part);
    free(plain);
    plan_destroy(svc, &pl);
    return rc;
}

int cdb__data_query_probe(cdb_service *svc, const cdb_principal *p, json_t *request, cdb__query_probe *probe)
{
    query_plan pl;
    cdb_error err;
    int ok = 0;

    memset(probe, 0, sizeof *probe);
    probe->start_us = cdb_mono_us();
    cdb_error_init(&err);
    json_t *db = json_object_get(request, "database");
    if (!cdb_principal_known(p) || !json_is_object(request) ||
        (db && !(json_is_string(db) && strcmp(json_string_value(db), "postgresql") == 0)))
        goto out;
    /* a request the blocking path would refuse is refused there, with its error */
    if (plan(svc, p, request, false, &pl, &err) != 0 || !pl.key || pl.hidden_pk)
        goto out_plan;
    if (!cdb_qcache_probe_keys(svc->qcache, pl.t->name, pl.key, probe->gen_key, &probe->entry_key))
        goto out_plan;
    snprintf(probe->table, sizeof probe->table, "%s", pl.t->name);
    ok = 1;
out_plan:
    plan_destroy(svc, &pl);
out:
    cdb_error_destroy(&err);
    return ok;
}

size_t cdb__data_query_probe_tail(const cdb__query_probe *probe, char *tail, size_t size)
{
    cdb__metrics_inc(CDB_M_CACHE_HITS);
    return cdb__query_wrap_tail(tail, size, probe->start_us, true);
}

void cdb__data_query_probe_destroy(cdb__query_probe *probe)
{
    free(probe->entry_key);
    probe->entry_key = NULL;
}

/* The prelude's settings: the caller's database role, user id and role name (pointing into p). */
static void loop_bind_caller(const cdb_principal *p, const char *db_role, cdb__query_loop *lp)
{
    lp->prelude_sql = cdb_txn_read_prelude_sql();
    lp->settings[0] = db_role;
    lp->settings[1] = p->user_id;
    lp->settings[2] = cdb_role_name(p->role);
}

/* The answer's Redis keys from its cache key (taken; NULL: not cached); a key the loop cannot look up is not kept. */
static void loop_take_keys(cdb_service *svc, char *key, cdb__query_loop *lp)
{
    if (key && cdb_qcache_probe_keys(svc->qcache, lp->table, key, lp->gen_key, &lp->entry_key)) {
        lp->cache_key = key;
        return;
    }
    lp->entry_key = NULL;
    free(key);
}

/* bound: for a lease's connection, which never reads a replica (query_run.c), so replicas do not matter */
static int loop_plan(cdb_service *svc, const cdb_principal *p, json_t *request, bool bound, cdb__query_loop *lp)
{
    query_plan pl;
    cdb_error err;
    int ok = 0;

    memset(lp, 0, sizeof *lp);
    cdb_sql_init(&lp->rows);
    cdb_error_init(&err);
    json_t *db = json_object_get(request, "database");
    const char *db_role = cdb_principal_db_role(p);
    /* replicas: choosing one reads Redis and its lag, blocking work (query_run.c) */
    if (!cdb_principal_known(p) || !db_role || (svc->replicas && !bound) || !json_is_object(request) ||
        (db && !(json_is_string(db) && strcmp(json_string_value(db), "postgresql") == 0)))
        goto out;
    if (plan(svc, p, request, false, &pl, &err) != 0 || pl.hidden_pk)
        goto out_plan;
    snprintf(lp->table, sizeof lp->table, "%s", pl.t->name);
    loop_take_keys(svc, pl.key, lp);
    pl.key = NULL;
    /* the statements move to lp (its own empty buffer goes first) */
    cdb_sql_destroy(&lp->rows);
    lp->rows = pl.q;
    cdb_sql_init(&pl.q);
    lp->count_sql = pl.count_sql;
    pl.count_sql = NULL;
    lp->count_nparams = lp->rows.nparams - 2;
    lp->page = pl.req.page;
    lp->limit = pl.req.limit;
    loop_bind_caller(p, db_role, lp);
    ok = 1;
out_plan:
    plan_destroy(svc, &pl);
out:
    if (!ok)
        cdb__data_query_loop_destroy(lp);
    cdb_error_destroy(&err);
    return ok;
}

int cdb__data_query_loop_plan(cdb_service *svc, const cdb_principal *p, json_t *request, cdb__query_loop *lp)
{
    return loop_plan(svc, p, request, false, lp);
}

int cdb__data_query_loop_plan_bound(cdb_service *svc, const cdb_principal *p, json_t *request,
                                    cdb__query_loop *lp)
{
    return loop_plan(svc, p, request, true, lp);
}

void cdb__data_query_loop_destroy(cdb__query_loop *lp)
{
    if (!lp->borrowed) {
        cdb_sql_destroy(&lp->rows);
        free(lp->count_sql);
    }
    free(lp->entry_key);
    free(lp->cache_key);
    lp->count_sql = lp->entry_key = lp->cache_key = NULL;
}

/*
 * A packed plan: this header, then the statement's text, the count's, the
 * canonical request (when has_canon) and each param, each NUL-terminated;
 * a param is preceded by one byte, 0 for SQL NULL (then no text) or 1.
 */
typedef struct packed_head {
    uint64_t catalog_version;
    json_int_t page, limit;
    int32_t nparams, count_nparams;
    uint8_t has_canon;
    char table[sizeof ((cdb__query_loop *)0)->table];
} packed_head;

char *cdb__data_query_loop_pack(const cdb__query_loop *lp, uint64_t catalog_version, size_t *len)
{
    /* the canonical request is the cache key's part after its first newline (cdb__query_cache_key_of) */
    const char *canon = lp->cache_key ? strchr(lp->cache_key, '\n') : NULL;
    packed_head h = {.catalog_version = catalog_version, .page = lp->page, .limit = lp->limit,
                     .nparams = lp->rows.nparams, .count_nparams = lp->count_nparams, .has_canon = canon != NULL};
    memcpy(h.table, lp->table, sizeof h.table);
    if (canon)
        canon++;
    size_t n = sizeof h + strlen(lp->rows.text) + 1 + strlen(lp->count_sql) + 1 + (canon ? strlen(canon) + 1 : 0);
    for (int i = 0; i < lp->rows.nparams; i++)
        n += 1 + (lp->rows.params[i] ? strlen(lp->rows.params[i]) + 1 : 0);
    char *out = malloc(n), *at = out;
    if (!out)
        return NULL;
    memcpy(at, &h, sizeof h);
    at += sizeof h;
    at = stpcpy(at, lp->rows.text) + 1;
    at = stpcpy(at, lp->count_sql) + 1;
    if (canon)
        at = stpcpy(at, canon) + 1;
    for (int i = 0; i < lp->rows.nparams; i++) {
        *at++ = lp->rows.params[i] != NULL;
        if (lp->rows.params[i])
            at = stpcpy(at, lp->rows.params[i]) + 1;
    }
    *len = n;
    return out;
}

/* The NUL-terminated string at *at within end, stepping past it; NULL when it does not end before end. */
static const char *packed_string(const char **at, const char *end)
{
    const char *s = *at, *nul = memchr(s, '\0', (size_t)(end - s));
    if (!nul)
        return NULL;
    *at = nul + 1;
    return s;
}

/* Whether the table has no encrypted column in the current snapshot (which the loops may use now). */
static bool plain_table_now(cdb_service *svc, const char *table)
{
    cdb_colset *cs = cdb__colring_peek(svc);
    if (!cs)
        return false;
    bool plain = !cdb__colset_pk_of(cs, table);
    cdb__colring_put(svc, cs);
    return plain;
}

int cdb__data_query_loop_unpack(cdb_service *svc, const cdb_principal *p, cdb_arena *arena, const char *packed,
                                size_t len, cdb__query_loop *lp)
{
    packed_head h;
    const char *db_role = cdb_principal_db_role(p);

    memset(lp, 0, sizeof *lp);
    /* loop_plan's checks of the caller and of the moment (the request's own are in the memo's key) */
    if (len < sizeof h || !cdb_principal_known(p) || !db_role || svc->replicas)
        return 0;
    memcpy(&h, packed, sizeof h);
    if (h.catalog_version != cdb_catalog_cache_version(svc->catalog) || h.nparams < 2 ||
        h.nparams > CDB_SQL_MAX_PARAMS || h.table[sizeof h.table - 1] != '\0' || !plain_table_now(svc, h.table) ||
        !cdb_qcache_has_namespace(svc->qcache))
        return 0;
    char *bytes = cdb_arena_alloc(arena, len - sizeof h);
    char **params = cdb_arena_alloc(arena, (size_t)h.nparams * sizeof *params);
    if (!bytes || !params)
        return 0;
    memcpy(bytes, packed + sizeof h, len - sizeof h);
    const char *at = bytes, *end = bytes + (len - sizeof h);
    const char *text = packed_string(&at, end), *count_sql = text ? packed_string(&at, end) : NULL;
    const char *canon = count_sql && h.has_canon ? packed_string(&at, end) : NULL;
    if (!count_sql || (h.has_canon && !canon))
        return 0;
    for (int i = 0; i < h.nparams; i++) {
        if (at >= end)
            return 0;
        params[i] = NULL;
        if (*at++ && !(params[i] = (char *)packed_string(&at, end)))
            return 0;
    }
    lp->borrowed = true;
    lp->rows.text = (char *)text;
    lp->rows.len = strlen(text);
    lp->rows.params = params;
    lp->rows.nparams = h.nparams;
    lp->count_sql = (char *)count_sql;
    lp->count_nparams = h.count_nparams;
    lp->page = h.page;
    lp->limit = h.limit;
    memcpy(lp->table, h.table, sizeof lp->table);
    loop_bind_caller(p, db_role, lp);
    loop_take_keys(svc, canon ? cdb__query_cache_key_of(p, canon) : NULL, lp);
    return 1;
}

char *cdb__data_query_loop_answer(const cdb__query_loop *lp, const PGresult *rows, const PGresult *count,
                                  int64_t start_us, char **part, size_t *part_len)
{
    char *body = NULL;
    if ((*part = cdb__query_page_body(rows, count, lp->page, lp->limit, part_len)))
        body = cdb__query_wrap(*part, *part_len, start_us, false);
    if (lp->entry_key)
        cdb__metrics_inc(CDB_M_CACHE_MISSES);
    return body;
}

/* database "redis", query_type "get": one key of the caller's namespace. */
static int query_redis(cdb_service *svc, const cdb_principal *p, json_t *r, char **body_out,
                       cdb_error *err)
{
    static const char *const members[] = {"database", "query_type", "key", NULL};
    const char *bad = cdb__query_unknown_member(r, members);
    json_t *qt = json_object_get(r, "query_type"), *jkey = json_object_get(r, "key");
    json_t *value = NULL, *body = NULL;
    char *key = NULL, *v = NULL;
    size_t len = 0;
    int rc;

    if (bad)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", bad, "Unknown field");
    if (qt && !(json_is_string(qt) && strcmp(json_string_value(qt), "get") == 0))
        return invalid(err, "query_type", "query_type must be \"get\" for redis");
    if ((rc = cdb_data_redis_key(p, jkey, &key, err)) < 0)
        return rc;

    /* one path for Redis and the in-process cache (cache.h) */
    if (!svc->cache) {
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Cache unavailable");
        goto out;
    }
    rc = cdb_cache_get(svc->cache, key, &v, &len, err);
    if (rc == CDB_ERR_VALIDATION_FAILED)           /* WRONGTYPE: a list, a hash, ... */
        rc = invalid(err, "key", "The key does not hold a string value");
    else if (rc == 0)
        value = json_null();
    else if (rc == 1 && !(value = json_stringn(v, len)))
        rc = invalid(err, "key", "The value of the key is not UTF-8 text");
    else if (rc == 1)
        rc = 0;
    if (rc < 0)
        goto out;
    body = json_pack("{s:{s:O, s:O}}", "data", "key", jkey, "value", value);
    if (!body || !(*body_out = json_dumps(body, JSON_COMPACT)))
        rc = cdb_error_oom(err);

out:
    json_decref(body);
    json_decref(value);
    free(v);
    free(key);
    return rc;
}

int cdb_data_query(cdb_service *svc, const cdb_principal *caller, json_t *request,
                   char **body_out, cdb_error *err)
{
    int64_t start_us = cdb_mono_us();

    *body_out = NULL;
    if (cdb_principal_require(caller, err) < 0)
        return err->code;
    if (!json_is_object(request))
        return invalid(err, "body", "The request must be a JSON object");
    json_t *db = json_object_get(request, "database");
    const char *name = db ? json_string_value(db) : "postgresql";
    if (name && strcmp(name, "postgresql") == 0)
        return query_postgresql(svc, caller, request, start_us, body_out, err);
    if (name && strcmp(name, "redis") == 0)
        return query_redis(svc, caller, request, body_out, err);
    if (cdb__doc_database(db))
        return cdb__doc_query(svc, caller, request, start_us, body_out, err);
    if (cdb__vec_database(db))
        return cdb__vec_query(svc, caller, request, start_us, body_out, err);
    return invalid(err, "database", "database must be \"postgresql\", \"redis\", \"documents\" or \"vectors\"");
}
