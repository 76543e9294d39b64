/*
 * kvtable.h - a bounded table of string keys to byte values with deadlines,
 * for one thread (no lock: the owner serializes). The in-process backend of
 * the cache (store/cache.c, under its mutex) and each event loop's
 * first-level cache (http/loop_cache.c, its loop only) are built on it.
 *
 * Bounds: at most max_entries entries and max_bytes of keys and values
 * (0 = no byte bound). Expiry is lazy: an expired entry is dropped when it
 * is read, and every write drops the expired ones among the oldest few (a
 * table of short-lived entries holds what is live). A write that needs room first drops the
 * expired entries among the oldest few, then the oldest entries: bounded
 * memory and O(1) work per write, at the price of sometimes evicting a live
 * entry while an expired one sits further on.
 *
 * Values outliving their entry: a value is one reference-counted block
 * whose only owner is the table; cdb_kvtable_get_ref takes one more
 * reference (cdb_kvref), so the bytes stay valid after the entry is
 * replaced, evicted, deleted or the table freed, until the last release.
 * The count is atomic: a reference may be released on another thread than
 * the table's (an event loop hands an answer's bytes to libevent, which
 * drops them when they are written or its buffer freed).
 */
#ifndef COREDB_CORE_KVTABLE_H
#define COREDB_CORE_KVTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cdb_kvtable cdb_kvtable;
typedef struct cdb_kvref cdb_kvref;

/* NULL on out of memory. */
cdb_kvtable *cdb_kvtable_new(size_t max_entries, size_t max_bytes);
void cdb_kvtable_free(cdb_kvtable *t);

/*
 * The live value of key (NUL-terminated after len bytes; valid until the
 * table next changes) and its deadline (0: none; may be NULL), or NULL.
 */
const char *cdb_kvtable_get(cdb_kvtable *t, const char *key, size_t *len, int64_t *expires_ms, int64_t now_ms);
/*
 * Like cdb_kvtable_get, and takes a reference on the value (*ref): the bytes
 * stay valid until cdb_kvref_release(*ref), whatever the table does.
 */
const char *cdb_kvtable_get_ref(cdb_kvtable *t, const char *key, size_t *len, int64_t now_ms, cdb_kvref **ref);
/* Drops a reference taken by cdb_kvtable_get_ref or _put_ref (any thread; NULL: nothing). */
void cdb_kvref_release(cdb_kvref *ref);
/* The value bytes of a reference, and their length. */
const char *cdb_kvref_bytes(const cdb_kvref *ref, size_t *len);
/* Stores a copy of value under key as the newest entry; -1 on out of memory (nothing changed). */
int cdb_kvtable_put(cdb_kvtable *t, const char *key, const char *value, size_t len, int64_t expires_ms,
                    int64_t now_ms);
/*
 * The same with the value made of two parts (head, then value), copied
 * once; ref (may be NULL) gets a reference on the stored value, as
 * cdb_kvtable_get_ref gives.
 */
int cdb_kvtable_put_ref(cdb_kvtable *t, const char *key, const void *head, size_t head_len, const char *value,
                        size_t len, int64_t expires_ms, int64_t now_ms, cdb_kvref **ref);
/* Drops key; true when it had a live entry. */
bool cdb_kvtable_del(cdb_kvtable *t, const char *key, int64_t now_ms);
/* A new deadline for key's live entry; false when there is none. */
bool cdb_kvtable_expire(cdb_kvtable *t, const char *key, int64_t expires_ms, int64_t now_ms);
/* Drops every entry. */
void cdb_kvtable_clear(cdb_kvtable *t);
size_t cdb_kvtable_count(const cdb_kvtable *t);
size_t cdb_kvtable_bytes(const cdb_kvtable *t);

#endif
