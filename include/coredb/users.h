/*
 * users.h - identity: the users of public.users (seed schema): create,
 * get, update, delete, and the first admin. Who may do what is decided from
 * the caller's principal (principal.h): self or admin, and only an admin
 * sets roles.
 *
 * Every function blocks (PostgreSQL, argon2id): call them from worker
 * threads. Results are JSON objects the caller owns; errors use the codes of
 * API.md (VALIDATION_FAILED naming details.field, CONFLICT naming
 * details.field, FORBIDDEN, NOT_FOUND).
 */
#ifndef COREDB_USERS_H
#define COREDB_USERS_H

#include <jansson.h>
#include <stdbool.h>

#include "coredb/error.h"
#include "coredb/idempotency.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/* POST /users: anyone; only an admin caller may set a role other than "user". -> user */
int cdb_users_create(cdb_service *svc, const cdb_principal *caller, json_t *body,
                     json_t **out, cdb_error *err);
/*
 * POST /users with an optional Idempotency-Key (idem->key, NULL for none):
 * the answer in idem->status (201) and idem->body (serialized; free with
 * cdb_idempotency_destroy). With a key, the user row and the key with the
 * answer commit in one transaction (idempotency.h); keys are scoped to the
 * caller's user id, or shared by all anonymous callers. A lost connection
 * after COMMIT was sent -> TRANSACTION_OUTCOME_UNKNOWN (details.transaction_id).
 */
int cdb_users_create_idem(cdb_service *svc, const cdb_principal *caller, json_t *body,
                          cdb_idempotency *idem, cdb_error *err);
/* by is "id", "email" or "username"; self or admin. -> user */
int cdb_users_get(cdb_service *svc, const cdb_principal *caller, const char *by,
                  const char *value, json_t **out, cdb_error *err);
/* Partial update; self or admin; only admin changes role. -> user */
int cdb_users_update(cdb_service *svc, const cdb_principal *caller, const char *user_id,
                     json_t *body, json_t **out, cdb_error *err);
/* Self or admin; cascades to the user's data and ends its sessions. */
int cdb_users_delete(cdb_service *svc, const cdb_principal *caller, const char *user_id,
                     cdb_error *err);
/* Defaults and bounds of cdb_users_list's page size. */
#define CDB_USERS_LIST_DEFAULT_LIMIT 20
#define CDB_USERS_LIST_MAX_LIMIT     100

typedef struct cdb_users_list_options {
    int limit;          /* 1..100; 0 = 20; anything else -> VALIDATION_FAILED (field limit) */
    const char *cursor; /* a previous page's next_cursor, or NULL for the first page */
    /* NULL = every user. "a@example.com" matches that email case-insensitively;
     * a trailing '*' ("ali*") matches emails starting with the rest,
     * case-insensitively. No other character is special. */
    const char *email;
} cdb_users_list_options;

/*
 * GET /users: admin only (no caller -> UNAUTHORIZED, others -> FORBIDDEN).
 * -> {"users": [user...], "next_cursor": string|null}, oldest first (keyset
 * on created_at, user_id, so pages never skip or repeat a user while others
 * are created). The cursor is opaque; one that was not made here ->
 * VALIDATION_FAILED (field cursor). opt may be NULL (first page of 20).
 */
int cdb_users_list(cdb_service *svc, const cdb_principal *caller, const cdb_users_list_options *opt,
                   json_t **out, cdb_error *err);
/*
 * Creates an admin with this email and password when no admin exists yet
 * (start-up with COREDB_ADMIN_EMAIL/PASSWORD, and the CLI). *created tells.
 */
int cdb_users_ensure_admin(cdb_service *svc, const char *email, const char *username,
                           const char *password, bool *created, cdb_error *err);

#endif
