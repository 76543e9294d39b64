/*
 * idempotency.h - the Idempotency-Key of a write (POST /data/transaction,
 * POST /users) and how the request was answered.
 *
 * The key and the answer are stored in coredb.tx_ledger in the same
 * PostgreSQL transaction as the write (migration 010), so a retry of the
 * same request (same key, same caller, same method, route and body) gets
 * the stored answer back instead of writing twice; another body with that
 * key -> IDEMPOTENCY_KEY_REUSED (422); a retry while the first is still
 * running -> IDEMPOTENCY_KEY_IN_PROGRESS (409). Only committed answers are
 * stored: a request that failed stored nothing, and its retry runs again.
 * Keys expire after CDB_IDEMPOTENCY_TTL_S.
 */
#ifndef COREDB_IDEMPOTENCY_H
#define COREDB_IDEMPOTENCY_H

#include <stdbool.h>

#define CDB_IDEMPOTENCY_KEY_MAX 255          /* bytes of printable ASCII */
#define CDB_IDEMPOTENCY_TTL_S   (24 * 3600)  /* also spelled in tx_ledger_claim (migration 010) */

typedef struct cdb_idempotency {
    const char *key;   /* in: the Idempotency-Key header as sent, NULL when absent (not owned) */
    int status;        /* out: HTTP status of the answer */
    char *body;        /* out: the serialized answer body (malloc'd; the caller frees) */
    bool replayed;     /* out: body is the stored answer of an earlier request with this key */
} cdb_idempotency;

/* Frees what the call filled in (the key is not owned); idem may be NULL. */
void cdb_idempotency_destroy(cdb_idempotency *idem);

#endif
