/*
 * colring.c - the snapshot of encrypted columns and their keys
 * (colring.h): loaded on a pooled connection (a worker that found it stale)
 * or on the refresh job's own connection, unwrapped with DB_ENCRYPTION_KEY,
 * swapped whole under a mutex.
 *
 * The refresh job keeps a connection of its own: the loops use the snapshot
 * only while it is younger than CDB_COLRING_TTL_MS, and a pooled connection
 * was often a backend that had never run the statement (its catalog caches
 * cold), which with the cores busy serving hits took up to a second.
 */
#include "security/colring.h"

#include <pthread.h>
#include <stdio.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "core/timeutil.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/pool.h"
#include "store/txn.h"

struct cdb_colring {
    pthread_mutex_t lock;
    cdb_colset *current;           /* NULL: load on the next get */
    int64_t loaded_us;
    PGconn *refresh_conn;          /* the refresh job's own (its thread only), or NULL */
    uint64_t invalidations;        /* cdb__colring_invalidate calls: a load begun before one is stale */
    bool loading;                  /* a reload runs: others wait for it (one load, not one per worker) */
    pthread_cond_t loaded;         /* signalled when it ends */
};

/* $1 the service schema. Columns 7-10 describe the primary key, which writes bind values to. */
static const char LOAD_SQL[] =
    "SELECT c.table_name, c.column_name, c.pk_column, c.searchable, c.current_version, k.version, k.wrapped,"
    " format_type(a.atttypid, NULL), a.attidentity = 'a', a.atthasdef OR a.attidentity <> '',"
    /* guarded: pg_get_serial_sequence raises for a table dropped since */
    " CASE WHEN a.attrelid IS NOT NULL THEN pg_get_serial_sequence(format('%I.%I', $1::text, c.table_name),"
    "   c.pk_column) END"
    " FROM coredb.encryption_columns c JOIN coredb.encryption_keys k USING (table_name, column_name)"
    " LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(format('%I.%I', $1::text, c.table_name))"
    "   AND a.attname = c.pk_column AND a.attnum > 0 AND NOT a.attisdropped"
    /* retired keys too: a value a stale writer stored with one still reads */
    " ORDER BY 1, 2";

static cdb_pk_kind pk_kind_of(const char *type)
{
    if (!strcmp(type, "smallint") || !strcmp(type, "integer") || !strcmp(type, "bigint"))
        return CDB_PK_INT;
    if (!strcmp(type, "uuid"))
        return CDB_PK_UUID;
    if (!strcmp(type, "text") || !strcmp(type, "character varying"))
        return CDB_PK_TEXT;
    return CDB_PK_OTHER;
}

static void colset_free(cdb_colset *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->cols[i].table);
        free(s->cols[i].column);
        free(s->cols[i].pk);
        free(s->cols[i].pk_sequence);
        for (int v = 0; v < CDB_COLRING_VERSIONS; v++)
            cdb__colkey_free(s->cols[i].keys[v]);
    }
    free(s->cols);
    free(s);
}

cdb_colring *cdb__colring_new(void)
{
    cdb_colring *r = calloc(1, sizeof *r);
    if (r) {
        pthread_mutex_init(&r->lock, NULL);
        pthread_cond_init(&r->loaded, NULL);
    }
    return r;
}

void cdb__colring_free(cdb_colring *r)
{
    if (!r)
        return;
    colset_free(r->current);       /* every reference is given back by now */
    PQfinish(r->refresh_conn);
    pthread_cond_destroy(&r->loaded);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

void cdb__colring_invalidate(cdb_colring *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->loaded_us = 0;
    r->invalidations++;
    pthread_mutex_unlock(&r->lock);
}

/*
 * The snapshot's statement is small but runs at start and every 2 s; it gets
 * at least this long even when DB_STATEMENT_TIMEOUT is set lower for the
 * requests (a 10 ms request budget must not stop the instance from starting).
 */
#define LOAD_TIMEOUT_FLOOR_MS 1000
#define LOAD_TIMEOUT_FLOOR_SQL "SET LOCAL statement_timeout = 1000"

/* Reads the tables into a new snapshot, on own (a connection outside any transaction) or a pooled one. */
static cdb_colset *load(cdb_service *svc, PGconn *own, cdb_error *err)
{
    unsigned char m[CDB_COLKEY_BYTES];
    bool have_master = false;
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    cdb_colset *s = calloc(1, sizeof *s);
    PGconn *conn = NULL;
    int rc = 0;

    if (!s) {
        cdb_error_oom(err);
        return NULL;
    }
    s->refs = 1;
    if (!(conn = own ? own : cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = -1;
        goto out;
    }
    int request_ms = cdb_pool_statement_timeout_ms(svc->pool);
    if (request_ms > 0 && request_ms < LOAD_TIMEOUT_FLOOR_MS &&
        ((rc = cdb_txn_begin(conn, err)) < 0 ||
         (rc = cdb_pg_exec(conn, LOAD_TIMEOUT_FLOOR_SQL, 0, NULL, NULL, err)) < 0))
        goto out;                  /* the release rolls the transaction back, also after success */
    cdb_error probe;
    cdb_error_init(&probe);
    const char *schema[] = {svc->cfg->postgres_schema};
    if (cdb_pg_exec(conn, LOAD_SQL, 1, schema, &res, &probe) < 0) {
        /* before migration 014: nothing is encrypted */
        const char *state = json_string_value(json_object_get(probe.details, "sqlstate"));
        if (!state || strcmp(state, "42P01") != 0) {
            cdb_error_move(err, &probe);
            rc = -1;
        }
        cdb_error_destroy(&probe);
        goto out;
    }
    int nrows = PQntuples(res);
    if (nrows > 0) {
        if ((rc = cdb__colcrypt_master(svc->cfg->db_encryption_key, "DB_ENCRYPTION_KEY", m, err)) < 0)
            goto out;
        have_master = true;
        if (!(s->cols = calloc((size_t)nrows, sizeof *s->cols))) {
            rc = cdb_error_oom(err);
            goto out;
        }
    }
    for (int i = 0; i < nrows; i++) {
        const char *table = PQgetvalue(res, i, 0), *column = PQgetvalue(res, i, 1);
        cdb_enccol *c = s->n ? &s->cols[s->n - 1] : NULL;
        if (!c || strcmp(c->table, table) != 0 || strcmp(c->column, column) != 0) {
            c = &s->cols[s->n++];
            c->table = strdup(table);
            c->column = strdup(column);
            c->pk = strdup(PQgetvalue(res, i, 2));
            c->searchable = PQgetvalue(res, i, 3)[0] == 't';
            c->current = atoi(PQgetvalue(res, i, 4));
            c->pk_kind = pk_kind_of(PQgetvalue(res, i, 7));
            c->pk_identity_always = PQgetvalue(res, i, 8)[0] == 't';
            c->pk_has_default = PQgetvalue(res, i, 9)[0] == 't';
            c->pk_sequence = PQgetisnull(res, i, 10) ? NULL : strdup(PQgetvalue(res, i, 10));
            if (!c->table || !c->column || !c->pk || (!PQgetisnull(res, i, 10) && !c->pk_sequence)) {
                rc = cdb_error_oom(err);
                goto out;
            }
        }
        int v = atoi(PQgetvalue(res, i, 5));
        if (v < 0 || v >= CDB_COLRING_VERSIONS || c->keys[v])
            continue;
        if (!(c->keys[v] = cdb__colkey_unwrap(m, PQgetvalue(res, i, 6), v, table, column, err))) {
            rc = -1;
            goto out;
        }
    }
out:
    if (have_master)
        sodium_memzero(m, sizeof m);
    PQclear(res);
    if (pc)
        cdb_txn_release(svc->pool, pc);  /* rolls back what is open */
    else if (own && PQtransactionStatus(own) != PQTRANS_IDLE)
        PQclear(PQexec(own, "ROLLBACK"));
    if (rc < 0) {
        colset_free(s);
        return NULL;
    }
    return s;
}

/*
 * The current snapshot when it is younger than max_age_us at now_us, else
 * NULL. The workers and the loops use the same age (CDB_COLRING_TTL_MS): a
 * loop never decides from a snapshot a worker would reload first (a setup
 * made by another instance is seen by both within the TTL).
 */
static cdb_colset *current_locked(cdb_colring *r, int64_t now_us, int64_t max_age_us)
{
    cdb_colset *s = NULL;
    if (r->current && r->loaded_us && now_us - r->loaded_us < max_age_us) {
        s = r->current;
        s->refs++;
    }
    return s;
}

static cdb_colset *current(cdb_colring *r, int64_t now_us, int64_t max_age_us)
{
    pthread_mutex_lock(&r->lock);
    cdb_colset *s = current_locked(r, now_us, max_age_us);
    pthread_mutex_unlock(&r->lock);
    return s;
}

/*
 * Waits out a reload another thread runs. With fresh_ok, a snapshot that
 * is fresh then is returned (a reference); otherwise this thread is marked
 * as the one loading and NULL is returned: it must call end_load.
 */
static cdb_colset *begin_load(cdb_colring *r, bool fresh_ok)
{
    cdb_colset *s = NULL;
    pthread_mutex_lock(&r->lock);
    while (r->loading)
        pthread_cond_wait(&r->loaded, &r->lock);
    if (!fresh_ok || !(s = current_locked(r, cdb_mono_us(), CDB_COLRING_TTL_MS * 1000LL)))
        r->loading = true;
    pthread_mutex_unlock(&r->lock);
    return s;
}

static void end_load(cdb_colring *r)
{
    pthread_mutex_lock(&r->lock);
    r->loading = false;
    pthread_cond_broadcast(&r->loaded);
    pthread_mutex_unlock(&r->lock);
}

/* A new snapshot from the tables (on own, or a pooled connection), swapped in; a failed load keeps the one there is. */
static cdb_colset *reload(cdb_service *svc, PGconn *own, cdb_error *err)
{
    cdb_colring *r = svc->colring;
    cdb_colset *s = NULL;
    int64_t now = cdb_mono_us();
    pthread_mutex_lock(&r->lock);
    uint64_t invalidations = r->invalidations;
    pthread_mutex_unlock(&r->lock);

    /* loaded outside the lock: a slow database does not stall the readers of a fresh snapshot */
    cdb_error load_err;
    cdb_error_init(&load_err);
    cdb_colset *fresh = load(svc, own, &load_err);
    if (!fresh) {
        /* a failed reload keeps the snapshot there is (tried again in CDB_COLRING_TTL_MS): the
           data API should not fail with it; only with none at all is the error the caller's */
        pthread_mutex_lock(&r->lock);
        if ((s = r->current)) {
            s->refs++;
            r->loaded_us = r->invalidations == invalidations ? now : 0;
        }
        pthread_mutex_unlock(&r->lock);
        if (s)
            cdb_log_warn("encryption.reload_failed", "%s: the encrypted columns' snapshot is kept",
                         load_err.message);
        else
            cdb_error_move(err, &load_err);
        cdb_error_destroy(&load_err);
        return s;
    }
    pthread_mutex_lock(&r->lock);
    cdb_colset *old = r->current;
    r->current = fresh;
    /* an invalidation meanwhile may not be in what was read: the next get loads again */
    r->loaded_us = r->invalidations == invalidations ? now : 0;
    fresh->refs++;                 /* the ring's own and the caller's */
    if (old && --old->refs == 0)
        colset_free(old);
    pthread_mutex_unlock(&r->lock);
    return fresh;
}

cdb_colset *cdb__colring_peek(cdb_service *svc)
{
    return current(svc->colring, cdb_mono_us(), CDB_COLRING_TTL_MS * 1000LL);
}

cdb_colset *cdb__colring_get(cdb_service *svc, cdb_error *err)
{
    cdb_colset *s = current(svc->colring, cdb_mono_us(), CDB_COLRING_TTL_MS * 1000LL);
    if (s || (s = begin_load(svc->colring, true)))
        return s;
    s = reload(svc, NULL, err);
    end_load(svc->colring);
    return s;
}

cdb_colset *cdb__colring_refresh(cdb_service *svc, cdb_error *err)
{
    cdb_colring *r = svc->colring;
    if (r->refresh_conn && PQstatus(r->refresh_conn) != CONNECTION_OK) {
        PQfinish(r->refresh_conn);
        r->refresh_conn = NULL;
    }
    /* no connection of its own (the server refused one): a pooled one, as a worker does */
    if (!r->refresh_conn && svc->pool) {
        /* named apart from the pool's in pg_stat_activity ("coredb-snapshot"), as replicas' are "-read" */
        cdb_pg_settings own = *cdb_pool_pg_settings(svc->pool);
        char name[128];
        snprintf(name, sizeof name, "%s-snapshot", own.application_name ? own.application_name : "coredb");
        own.application_name = name;
        r->refresh_conn = cdb_pg_connect(&own, NULL);
    }
    begin_load(r, false);
    cdb_colset *s = reload(svc, r->refresh_conn, err);
    end_load(r);
    return s;
}

void cdb__colring_put(cdb_service *svc, cdb_colset *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&svc->colring->lock);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&svc->colring->lock);
    if (last)
        colset_free(s);
}

const cdb_enccol *cdb__colset_find(const cdb_colset *s, const char *table, const char *column)
{
    for (size_t i = 0; s && i < s->n; i++)
        if (strcmp(s->cols[i].table, table) == 0 && strcmp(s->cols[i].column, column) == 0)
            return &s->cols[i];
    return NULL;
}

const char *cdb__colset_pk_of(const cdb_colset *s, const char *table)
{
    for (size_t i = 0; s && i < s->n; i++)
        if (strcmp(s->cols[i].table, table) == 0)
            return s->cols[i].pk;
    return NULL;
}

bool cdb__colset_has_table(const cdb_colset *s, const char *table)
{
    return cdb__colset_pk_of(s, table) != NULL;
}
