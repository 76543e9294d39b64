/*
 * vec_index.c - the approximate (HNSW) index of the vector store's "hnsw"
 * collections (data/vectors.h): one in-process hnswlib graph (vec_hnsw.h)
 * per service and collection table, holding every point of the collection
 * whoever owns it, with the table label -> (id, etag). Visibility is never
 * decided here: the search (vec_query.c) asks PostgreSQL, as the caller,
 * which candidates the caller may see.
 *
 * Freshness. The registry's `version` counts the write statements on the
 * table (a statement-level trigger, migration 015); the index remembers the
 * version it reflects. When the registry's differs (read by the collection
 * look-up just before), the index catches up under its write lock: it reads
 * (id, etag) of every row with the service's own connection, adds or
 * replaces the points whose etag is new (reading their vectors, binary, in
 * single-row mode), marks deleted the ids that are gone, then takes the
 * version read before it started (so a write racing the catch-up is caught
 * by the next search). Searches take the read lock. Only one request
 * catches up at a time; while it does (a first build of 100k points takes
 * minutes), the other searches of that collection do not wait: they are
 * answered by the exact path, which is always correct. The first build is the
 * same catch-up from an empty index, done in the request that needs it.
 * Deleted points stay in the graph (hnswlib marks them); when they outnumber
 * the live ones the index is rebuilt from scratch.
 */
#include <arpa/inet.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/vec_hnsw.h"
#include "data/vectors.h"
#include "core/timeutil.h"
#include "store/pg.h"
#include "store/txn.h"

#define INDEX_SLOTS 64
/* a rebuild pays off when deleted points are this many and more than the live ones */
#define REBUILD_DELETED 1000

typedef struct point {
    char *id, *etag;
    size_t label;
} point;

struct cdb_vec_index {
    int refs;
    int updating;       /* a request is catching up (atomic) */
    pthread_rwlock_t lock;
    const void *svc;
    char table[64], incarnation[64];
    int dims, m, efc, efs;
    cdb_vec_metric metric;
    long long version;  /* the registry's version the index reflects; -1 before the first build */
    cdb_vec_hnsw *h;
    point *pts;         /* live points, sorted by id (byte order) */
    int n;
    point **by_label;   /* label -> its point in pts (NULL: deleted or never added) */
    size_t nlabels, label_cap;
    size_t deleted;
};

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static cdb_vec_index *slots[INDEX_SLOTS];

static void clear_points(cdb_vec_index *ix)
{
    for (int i = 0; i < ix->n; i++) {
        free(ix->pts[i].id);
        free(ix->pts[i].etag);
    }
    free(ix->pts);
    free(ix->by_label);
    cdb__vec_hnsw_free(ix->h);
    ix->pts = NULL;
    ix->by_label = NULL;
    ix->h = NULL;
    ix->n = 0;
    ix->nlabels = ix->label_cap = ix->deleted = 0;
    ix->version = -1;
}

void cdb__vec_index_unref(cdb_vec_index *ix)
{
    if (!ix || __atomic_sub_fetch(&ix->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    clear_points(ix);
    pthread_rwlock_destroy(&ix->lock);
    free(ix);
}

static cdb_vec_index *index_new(const void *svc, const cdb_vec_coll *c)
{
    cdb_vec_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return NULL;
    /* writers first: a catch-up is not starved by a steady stream of searches
     * (which meanwhile fail their tryrdlock and take the exact path) */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int ok = pthread_rwlock_init(&ix->lock, &attr) == 0;
    pthread_rwlockattr_destroy(&attr);
    if (!ok) {
        free(ix);
        return NULL;
    }
    ix->refs = 1;
    ix->svc = svc;
    snprintf(ix->table, sizeof ix->table, "%s", c->table);
    snprintf(ix->incarnation, sizeof ix->incarnation, "%s", c->incarnation);
    ix->dims = c->dimensions;
    ix->metric = c->metric;
    ix->m = c->m;
    ix->efc = c->ef_construction;
    ix->efs = c->ef_search;
    ix->version = -1;
    return ix;
}

/* Whether ix is the index of this very collection (same table, same incarnation and parameters). */
static bool same(const cdb_vec_index *ix, const void *svc, const cdb_vec_coll *c)
{
    return ix->svc == svc && strcmp(ix->table, c->table) == 0 && strcmp(ix->incarnation, c->incarnation) == 0 &&
           ix->dims == c->dimensions && ix->metric == c->metric && ix->m == c->m && ix->efc == c->ef_construction &&
           ix->efs == c->ef_search;
}

/* The slot's index of (svc, c) with a ref, replacing a stale one of the same table. */
static cdb_vec_index *slot_get(const void *svc, const cdb_vec_coll *c)
{
    cdb_vec_index *ix = NULL, *old = NULL;
    int at = -1, empty = -1;
    pthread_mutex_lock(&slots_lock);
    for (int i = 0; i < INDEX_SLOTS; i++) {
        if (!slots[i]) {
            if (empty < 0)
                empty = i;
        } else if (slots[i]->svc == svc && strcmp(slots[i]->table, c->table) == 0) {
            at = i;
            break;
        }
    }
    if (at >= 0 && same(slots[at], svc, c)) {
        ix = slots[at];
        __atomic_add_fetch(&ix->refs, 1, __ATOMIC_ACQ_REL);
        goto out;
    }
    /* a new collection, or one dropped and made again: a new index (the old one goes with its last user) */
    if (at < 0)
        at = empty >= 0 ? empty : 0; /* full: the first slot's index goes, rebuilt when needed */
    if (!(ix = index_new(svc, c)))
        goto out;
    old = slots[at];
    slots[at] = ix;
    __atomic_add_fetch(&ix->refs, 1, __ATOMIC_ACQ_REL);
out:
    pthread_mutex_unlock(&slots_lock);
    cdb__vec_index_unref(old);
    return ix;
}

void cdb__vec_index_drop(const void *svc, const char *table)
{
    cdb_vec_index *old = NULL;
    pthread_mutex_lock(&slots_lock);
    for (int i = 0; i < INDEX_SLOTS; i++)
        if (slots[i] && slots[i]->svc == svc && strcmp(slots[i]->table, table) == 0) {
            old = slots[i];
            slots[i] = NULL;
            break;
        }
    pthread_mutex_unlock(&slots_lock);
    cdb__vec_index_unref(old);
}

void cdb__vec_index_forget(const void *svc)
{
    for (int i = 0; i < INDEX_SLOTS; i++) {
        cdb_vec_index *old = NULL;
        pthread_mutex_lock(&slots_lock);
        if (slots[i] && slots[i]->svc == svc) {
            old = slots[i];
            slots[i] = NULL;
        }
        pthread_mutex_unlock(&slots_lock);
        cdb__vec_index_unref(old);
    }
}

static int cmp_point(const void *a, const void *b)
{
    return strcmp(((const point *)a)->id, ((const point *)b)->id);
}

/* x scaled to unit length into out (a zero vector stays zero, as the exact path scores it 0). */
static void normalize(const float *x, float *out, int dims)
{
    double s = 0;
    for (int i = 0; i < dims; i++)
        s += (double)x[i] * (double)x[i];
    float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    for (int i = 0; i < dims; i++)
        out[i] = x[i] * inv;
}

/* A real[] in PostgreSQL's binary form (1 dimension of dims non-NULL float4) into x. */
static bool parse_binary(const char *b, int len, float *x, int dims)
{
    uint32_t w;
    /* ndim, has-null flag, element oid, then (length, lower bound) per dimension */
    if (len != 20 + dims * 8)
        return false;
    memcpy(&w, b, 4);
    if (ntohl(w) != 1)
        return false;
    memcpy(&w, b + 12, 4);
    if ((int)ntohl(w) != dims)
        return false;
    b += 20;
    for (int i = 0; i < dims; i++, b += 8) {
        memcpy(&w, b, 4);
        if (ntohl(w) != 4)
            return false;
        memcpy(&w, b + 4, 4);
        w = ntohl(w);
        memcpy(&x[i], &w, 4);
    }
    return true;
}

/* Room for `need` labels in by_label and the graph. */
static int grow(cdb_vec_index *ix, size_t need, cdb_error *err)
{
    if (need <= ix->label_cap)
        return 0;
    size_t cap = ix->label_cap ? ix->label_cap : 1024;
    while (cap < need)
        cap *= 2;
    point **nb = realloc(ix->by_label, cap * sizeof *nb);
    if (!nb)
        return cdb_error_oom(err);
    memset(nb + ix->label_cap, 0, (cap - ix->label_cap) * sizeof *nb);
    ix->by_label = nb;
    ix->label_cap = cap;
    if (!ix->h) {
        ix->h = cdb__vec_hnsw_new(ix->dims, ix->metric == CDB_VEC_L2 ? CDB_VEC_HNSW_L2 : CDB_VEC_HNSW_IP, cap, ix->m,
                                  ix->efc, ix->efs);
        if (!ix->h)
            return cdb_error_oom(err);
    } else if (cdb__vec_hnsw_resize(ix->h, cap) < 0)
        return cdb_error_oom(err);
    return 0;
}

/* The points read by load_vectors, added to the graph by add_all's threads. */
typedef struct batch {
    cdb_vec_index *ix;
    float *xs;        /* n x dims */
    point **pts;      /* their points in ix->pts */
    int n, next;      /* next: the next point to add, taken atomically */
    int failed;
} batch;

static void *add_worker(void *arg)
{
    batch *b = arg;
    for (;;) {
        int i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n)
            break;
        if (cdb__vec_hnsw_add(b->ix->h, b->pts[i]->label, b->xs + (size_t)i * (size_t)b->ix->dims) < 0)
            __atomic_store_n(&b->failed, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

/*
 * Adds the batch to the graph: hnswlib takes concurrent inserts of distinct
 * labels, so a large batch (the first build) uses every core; the request
 * waits for it either way.
 */
static int add_all(batch *b, cdb_error *err)
{
    pthread_t tids[8];
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = b->n < 2000 ? 1 : cores < 1 ? 1 : cores > 8 ? 8 : (int)cores, started = 0;
    for (; started < nt - 1; started++)
        if (pthread_create(&tids[started], NULL, add_worker, b) != 0)
            break; /* fewer threads: the others and this one do the rest */
    add_worker(b);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    if (b->failed)
        return cdb_error_oom(err);
    for (int i = 0; i < b->n; i++)
        b->ix->by_label[b->pts[i]->label] = b->pts[i];
    return 0;
}

/*
 * Reads the vectors of the points flagged in need (nneed of them; every
 * row when all) and puts them into the graph. The rows are read to the end
 * first (binary, one at a time into one float array), then added: the
 * statement never waits on the graph (DB_STATEMENT_TIMEOUT). Rows gone
 * since the (id, etag) read are skipped: the next catch-up deletes them.
 */
static int load_vectors(cdb_vec_index *ix, PGconn *conn, const bool *need, int nneed, bool all, cdb_error *err)
{
    char *sql = NULL, *list = NULL;
    size_t len = 0, cap = 0;
    PGresult *r = NULL;
    batch b = {.ix = ix};
    int rc = 0;

    if (asprintf(&sql, "SELECT id, vector FROM coredb.\"%s\"%s", ix->table, all ? "" : " WHERE id = ANY($1::text[])") < 0) {
        sql = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    if (!all) {
        /* {"id","id",...}: ids escaped for an array literal */
        for (int i = 0; i < ix->n; i++)
            if (need[i])
                cap += 2 * strlen(ix->pts[i].id) + 3;
        if (!(list = malloc(cap + 3))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        list[len++] = '{';
        for (int i = 0; i < ix->n; i++) {
            if (!need[i])
                continue;
            if (len > 1)
                list[len++] = ',';
            list[len++] = '"';
            for (const char *p = ix->pts[i].id; *p; p++) {
                if (*p == '"' || *p == '\\')
                    list[len++] = '\\';
                list[len++] = *p;
            }
            list[len++] = '"';
        }
        list[len++] = '}';
        list[len] = '\0';
    }
    if (!(b.xs = malloc((size_t)nneed * (size_t)ix->dims * sizeof *b.xs)) ||
        !(b.pts = malloc((size_t)nneed * sizeof *b.pts))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    const char *params[] = {list};
    /* binary results (4 bytes a float instead of ~10 of text), one row at a time (no 100k-row result in memory) */
    if (!PQsendQueryParams(conn, sql, all ? 0 : 1, NULL, params, NULL, NULL, 1) || !PQsetSingleRowMode(conn)) {
        rc = cdb_pg_error_from_result(conn, NULL, err);
        goto out;
    }
    while ((r = PQgetResult(conn))) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE && rc == 0 && b.n < nneed) {
            point key = {.id = PQgetvalue(r, 0, 0)};
            point *p = bsearch(&key, ix->pts, (size_t)ix->n, sizeof *ix->pts, cmp_point);
            float *x = b.xs + (size_t)b.n * (size_t)ix->dims;
            if (p && parse_binary(PQgetvalue(r, 0, 1), PQgetlength(r, 0, 1), x, ix->dims)) {
                if (ix->metric == CDB_VEC_COSINE)
                    normalize(x, x, ix->dims);
                b.pts[b.n++] = p;
            }
        } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && rc == 0) {
            rc = cdb_pg_error_from_result(conn, r, err);
        }
        PQclear(r); /* drained to the end: the connection goes back idle */
    }
    if (rc == 0)
        rc = add_all(&b, err);
out:
    free(sql);
    free(list);
    free(b.xs);
    free(b.pts);
    return rc;
}

/* A point gone from the table: out of the graph's answers (it may never have got there). */
static void forget(cdb_vec_index *ix, size_t label)
{
    if (ix->h && cdb__vec_hnsw_mark_deleted(ix->h, label) == 0)
        ix->deleted++;
    ix->by_label[label] = NULL;
}

/* Brings ix up to the registry's `version` (write lock held). */
static int catch_up(cdb_service *svc, cdb_vec_index *ix, long long version, cdb_error *err)
{
    static const char IDS_FMT[] = "SELECT id, etag FROM coredb.\"%s\" ORDER BY id COLLATE \"C\"";
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    char *sql = NULL;
    point *pts = NULL;
    bool *need = NULL;
    int rc = 0, n = 0, nneed = 0;

    /* many deleted points: cheaper searches and less memory after a rebuild */
    if (ix->deleted >= REBUILD_DELETED && ix->deleted > (size_t)ix->n)
        clear_points(ix);
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    /* the registry's table name, [a-z0-9_] by its CHECK, quoted; the service's own role: every row */
    if (asprintf(&sql, IDS_FMT, ix->table) < 0) {
        sql = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_pg_exec(conn, sql, 0, NULL, &res, err)) < 0)
        goto out;
    n = PQntuples(res);
    if (!(pts = calloc((size_t)(n ? n : 1), sizeof *pts)) || !(need = calloc((size_t)(n ? n : 1), sizeof *need))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    /* merge the rows (id order) with the index's points (id order) */
    int a = 0, added = 0;
    for (int b = 0; b < n; b++) {
        const char *id = PQgetvalue(res, b, 0), *etag = PQgetvalue(res, b, 1);
        while (a < ix->n && strcmp(ix->pts[a].id, id) < 0) {
            point *gone = &ix->pts[a++];
            forget(ix, gone->label);
            free(gone->id);
            free(gone->etag);
            gone->id = gone->etag = NULL;
        }
        if (a < ix->n && strcmp(ix->pts[a].id, id) == 0) {
            pts[b] = ix->pts[a];
            ix->pts[a].id = ix->pts[a].etag = NULL;
            a++;
            if (strcmp(pts[b].etag, etag) != 0) {
                free(pts[b].etag);
                pts[b].etag = NULL;
                need[b] = true;
            }
        } else {
            pts[b].label = ix->nlabels + (size_t)added++;
            need[b] = true;
        }
        if (!pts[b].etag && !(pts[b].etag = strdup(etag))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        if (!pts[b].id && !(pts[b].id = strdup(id))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        nneed += need[b];
    }
    for (; a < ix->n; a++) {
        point *gone = &ix->pts[a];
        forget(ix, gone->label);
        free(gone->id);
        free(gone->etag);
    }
    free(ix->pts);
    ix->pts = pts;
    ix->n = n;
    pts = NULL;
    /* the points moved: by_label is rebuilt from the new array (a point without a vector stays NULL) */
    if ((rc = grow(ix, ix->nlabels + (size_t)added, err)) < 0)
        goto out;
    for (int i = 0; i < n; i++)
        ix->by_label[ix->pts[i].label] = need[i] ? NULL : &ix->pts[i];
    ix->nlabels += (size_t)added;
    if (nneed && (rc = load_vectors(ix, conn, need, nneed, nneed == n, err)) < 0)
        goto out;
    ix->version = version;
out:
    if (rc < 0 && pts) {
        for (int i = 0; i < n; i++) {
            free(pts[i].id);
            free(pts[i].etag);
        }
        free(pts);
    }
    if (rc < 0)
        clear_points(ix); /* half-merged: start over next time */
    free(need);
    free(sql);
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

int cdb__vec_index_get(cdb_service *svc, const cdb_vec_coll *c, cdb_vec_index **out, double *ms_built,
                       cdb_error *err)
{
    int rc = 0;
    *out = NULL;
    *ms_built = 0;
    cdb_vec_index *ix = slot_get(svc, c);
    if (!ix)
        return cdb_error_oom(err);
    /*
     * Another request building or updating the index holds the write lock
     * (a first build of 100k points takes minutes): rather than parking a
     * worker thread behind it, this request takes the exact path.
     */
    if (pthread_rwlock_tryrdlock(&ix->lock) != 0) {
        rc = 1;
        goto out;
    }
    bool fresh = ix->version == c->version;
    pthread_rwlock_unlock(&ix->lock);
    if (!fresh) {
        /* one request catches up; the others meanwhile take the exact path */
        int idle = 0;
        if (!__atomic_compare_exchange_n(&ix->updating, &idle, 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            rc = 1;
            goto out;
        }
        pthread_rwlock_wrlock(&ix->lock); /* waits only for the searches under way (milliseconds) */
        /* another request may have caught up meanwhile */
        if (ix->version != c->version) {
            int64_t t0 = cdb_mono_us();
            rc = catch_up(svc, ix, c->version, err);
            *ms_built = (double)(cdb_mono_us() - t0) / 1000.0;
        }
        pthread_rwlock_unlock(&ix->lock);
        __atomic_store_n(&ix->updating, 0, __ATOMIC_RELEASE);
    }
out:
    if (rc != 0) {
        cdb__vec_index_unref(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

void cdb__vec_cands_free(cdb_vec_cands *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->ids[i]);
        free(c->etags[i]);
    }
    free(c->ids);
    free(c->etags);
    free(c->xs);
    memset(c, 0, sizeof *c);
}

int cdb__vec_index_search(cdb_vec_index *ix, const float *q, int kq, cdb_vec_cands *out, cdb_error *err)
{
    size_t *labels = NULL;
    float *dists = NULL, *qn = NULL;
    int rc = 0, got;

    memset(out, 0, sizeof *out);
    if (pthread_rwlock_tryrdlock(&ix->lock) != 0)
        return 1; /* being updated by another request: the exact path answers */
    out->live = (size_t)ix->n;
    if ((size_t)kq > out->live)
        kq = (int)out->live; /* more than every point cannot be found */
    if (!ix->h || kq <= 0)
        goto out;
    if (!(labels = malloc((size_t)kq * sizeof *labels)) || !(dists = malloc((size_t)kq * sizeof *dists)) ||
        !(qn = malloc((size_t)ix->dims * sizeof *qn)) || !(out->ids = calloc((size_t)kq, sizeof *out->ids)) ||
        !(out->etags = calloc((size_t)kq, sizeof *out->etags)) ||
        !(out->xs = malloc((size_t)kq * (size_t)ix->dims * sizeof *out->xs))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (ix->metric == CDB_VEC_COSINE)
        normalize(q, qn, ix->dims);
    else
        memcpy(qn, q, (size_t)ix->dims * sizeof *qn);
    if ((got = cdb__vec_hnsw_search(ix->h, qn, kq, labels, dists)) < 0) {
        rc = cdb_error_oom(err); /* hnswlib's only failures are allocations */
        goto out;
    }
    /* ids, etags and vectors copied out: the caller uses them without the lock */
    for (int i = 0; i < got; i++) {
        const point *p = labels[i] < ix->nlabels ? ix->by_label[labels[i]] : NULL;
        const float *x = p ? cdb__vec_hnsw_vector(ix->h, labels[i]) : NULL;
        if (!x)
            continue;
        int k = out->n;
        if (!(out->ids[k] = strdup(p->id)) || !(out->etags[k] = strdup(p->etag))) {
            free(out->ids[k]);
            out->ids[k] = NULL;
            rc = cdb_error_oom(err);
            goto out;
        }
        memcpy(out->xs + (size_t)k * (size_t)ix->dims, x, (size_t)ix->dims * sizeof *x);
        out->n++;
    }
out:
    pthread_rwlock_unlock(&ix->lock);
    if (rc < 0)
        cdb__vec_cands_free(out);
    free(labels);
    free(dists);
    free(qn);
    return rc;
}
