/*
 * vec_cache.c - the in-memory copy of vector collections (data/vectors.h):
 * per service and collection table, an immutable snapshot of the points
 * coredb has read, sorted by id (byte order), each with its etag and its
 * vector in one contiguous float32 array. A search never trusts the copy
 * for visibility: PostgreSQL names the candidates (id, etag) under the
 * caller's role, and a cached vector is used only when its etag is the
 * row's current one (every write through coredb changes the etag), so the
 * copy is kept fresh per row instead of by the generation counters.
 * Snapshots are reference counted: a search holds one while a newer one
 * replaces it.
 */
#include "data/vectors.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_SLOTS 64

typedef struct slot {
    const void *svc;
    char table[64];
    cdb_vec_snap *snap;
} slot;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static slot slots[CACHE_SLOTS];

cdb_vec_snap *cdb__vec_snap_new(int n, int dims)
{
    cdb_vec_snap *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->refs = 1;
    s->dims = dims;
    s->ids = calloc((size_t)(n ? n : 1), sizeof *s->ids);
    s->etags = calloc((size_t)(n ? n : 1), sizeof *s->etags);
    s->xs = malloc((size_t)(n ? n : 1) * (size_t)dims * sizeof *s->xs);
    s->norms = malloc((size_t)(n ? n : 1) * sizeof *s->norms);
    if (!s->ids || !s->etags || !s->xs || !s->norms) {
        cdb__vec_snap_unref(s);
        return NULL;
    }
    return s;
}

void cdb__vec_snap_unref(cdb_vec_snap *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (int i = 0; i < s->n; i++) {
        free(s->ids[i]);
        free(s->etags[i]);
    }
    free(s->ids);
    free(s->etags);
    free(s->xs);
    free(s->norms);
    free(s);
}

cdb_vec_snap *cdb__vec_cache_get(const void *svc, const char *table, int dims)
{
    cdb_vec_snap *s = NULL;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < CACHE_SLOTS; i++)
        if (slots[i].snap && slots[i].svc == svc && strcmp(slots[i].table, table) == 0) {
            /* a collection dropped and created again may have other dimensions */
            if (slots[i].snap->dims == dims) {
                s = slots[i].snap;
                __atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
            }
            break;
        }
    pthread_mutex_unlock(&lock);
    return s;
}

void cdb__vec_cache_put(const void *svc, const char *table, cdb_vec_snap *s)
{
    cdb_vec_snap *old = NULL;
    int free_slot = -1, victim = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < CACHE_SLOTS; i++) {
        if (slots[i].snap && slots[i].svc == svc && strcmp(slots[i].table, table) == 0) {
            free_slot = i;
            break;
        }
        if (!slots[i].snap && free_slot < 0)
            free_slot = i;
    }
    /* full: the slot of the smallest snapshot goes (cheapest to read again) */
    if (free_slot < 0) {
        for (int i = 1; i < CACHE_SLOTS; i++)
            if (slots[i].snap->n < slots[victim].snap->n)
                victim = i;
        free_slot = victim;
    }
    old = slots[free_slot].snap;
    slots[free_slot].svc = svc;
    snprintf(slots[free_slot].table, sizeof slots[free_slot].table, "%s", table);
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
    slots[free_slot].snap = s;
    pthread_mutex_unlock(&lock);
    cdb__vec_snap_unref(old);
}

void cdb__vec_cache_forget(const void *svc)
{
    cdb__vec_index_forget(svc); /* the approximate indexes (vec_index.c) go with the service too */
    pthread_mutex_lock(&lock);
    for (int i = 0; i < CACHE_SLOTS; i++)
        if (slots[i].snap && slots[i].svc == svc) {
            cdb__vec_snap_unref(slots[i].snap);
            slots[i].snap = NULL;
        }
    pthread_mutex_unlock(&lock);
}
