/*
 * ledger.h - what the transaction path (data/tx.c) and user creation
 * (identity/users.c) share about coredb.tx_ledger (migration 010): checking
 * an Idempotency-Key, the keyed hash of a request, claiming a key inside the
 * transaction, replaying a stored answer, deciding when a lost connection
 * leaves a transaction's outcome unknown, and the expiry job. The status
 * route (GET /data/transactions/{id}) is data/tx_status.c.
 */
#ifndef COREDB_STORE_LEDGER_H
#define COREDB_STORE_LEDGER_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/error.h"
#include "coredb/idempotency.h"
#include "store/pool.h"

/* A request hash as PostgreSQL bytea text: "\x" + 64 hex digits. */
#define CDB_LEDGER_HASH_LEN 67

/* The scope of keys sent without a token (registration). */
#define CDB_LEDGER_ANON_SCOPE "anonymous"

/*
 * First statement of a keyed transaction, run as the login role before the
 * caller's role is set: $1 scope, $2 key, $3 request hash. Fails with
 * SQLSTATE CDB09 (in progress), CDB22 (reused) or CDB00 (replay): see
 * cdb_ledger_claim_refused.
 */
#define CDB_LEDGER_CLAIM_SQL "SELECT coredb.tx_ledger_claim($1, $2, $3::bytea)"

/* A random (version 4) UUID: the transaction id, decided before anything runs. */
void cdb_ledger_new_id(char out[37]);

/* 1..CDB_IDEMPOTENCY_KEY_MAX visible ASCII characters, else VALIDATION_FAILED naming the header. */
int cdb_ledger_check_key(const char *key, cdb_error *err);

/*
 * HMAC-SHA-256 (key: JWT_SECRET) of what ("data.transaction", "users.create":
 * the route, whatever alias was called) and the body in canonical form
 * (compact, keys sorted), into out as bytea text. Keyed, because a
 * registration body holds a password: a plain hash in the table would let
 * anyone who reads it test guesses at SHA-256 speed, past argon2id.
 */
int cdb_ledger_request_hash(const unsigned char *secret, size_t secret_len, const char *what,
                            const json_t *body, char out[CDB_LEDGER_HASH_LEN], cdb_error *err);

/* Whether err is a refusal of CDB_LEDGER_CLAIM_SQL. */
bool cdb_ledger_claim_error(const cdb_error *err);

/*
 * After the claim refused (cdb_ledger_claim_error): CDB09 ->
 * IDEMPOTENCY_KEY_IN_PROGRESS, CDB22 -> IDEMPOTENCY_KEY_REUSED; CDB00 rolls
 * the failed transaction back (conn must be out of pipeline mode), reads the
 * stored answer into idem (status, body, replayed) and returns 0.
 */
int cdb_ledger_claim_refused(PGconn *conn, const char *scope, const char *key,
                              cdb_idempotency *idem, cdb_error *err);

/*
 * After a failure in a transaction whose COMMIT was sent: whether it may
 * nevertheless have committed. before_commit: the failing result belonged
 * to a statement queued before the COMMIT. Known rollbacks are the server's
 * own errors (any result with a SQLSTATE for a statement before COMMIT,
 * anything at all while the connection still stands); unknown is a lost
 * connection (libpq's own error, no SQLSTATE) or a server silent past the
 * client-side deadline (cdb_pg_timed_out).
 */
bool cdb_ledger_outcome_unknown(PGconn *conn, bool before_commit, const cdb_error *err);

/* Replaces err with TRANSACTION_OUTCOME_UNKNOWN and details.transaction_id; returns the code. */
int cdb_ledger_fail_unknown(cdb_error *err, const char *transaction_id);

/* How long a ledger row answers (CDB_IDEMPOTENCY_TTL_S), spelled for SQL parameters. */
#define CDB_LEDGER_TTL_PARAM "86400"

/*
 * Background: deletes ledger rows older than 24 h, in batches of 1000 (at
 * most 20 batches a call); *deleted (may be NULL) reports how many.
 */
int cdb_ledger_expire(cdb_pool *pool, int *deleted, cdb_error *err);

#endif
