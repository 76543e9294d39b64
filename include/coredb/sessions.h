/*
 * sessions.h - identity: login, sessions, access and refresh tokens, and
 * the check every authenticated request makes (users are users.h).
 *
 * Sessions and refresh tokens live in coredb.sessions /
 * coredb.refresh_tokens, durable in PostgreSQL. Redis holds
 * a short-lived positive copy of "this session is alive" (key
 * coredb:session:<sid>, TTL at most CDB_SESSION_CACHE_TTL_S) so most
 * requests check liveness with one GET; every revocation overwrites that key
 * with "revoked" (so a concurrent check cannot re-create a live copy: copies
 * are written with SET NX), and a miss falls back to PostgreSQL, which is
 * always right — so a revoked session is refused
 * on the next request on every instance, and still (more slowly) with Redis
 * down.
 *
 * Every function blocks (PostgreSQL, Redis, argon2id): call them from worker
 * threads. Results are JSON objects the caller owns; errors use the codes of
 * API.md (VALIDATION_FAILED naming details.field, CONFLICT naming
 * details.field, FORBIDDEN, NOT_FOUND, INVALID_CREDENTIALS, TOKEN_REVOKED,
 * RATE_LIMITED with details.retry_after).
 */
#ifndef COREDB_SESSIONS_H
#define COREDB_SESSIONS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

#define CDB_SESSION_CACHE_TTL_S 60

typedef struct cdb_client_info {
    const char *address;           /* peer IP, for login limits and the session record */
    const char *user_agent;        /* may be NULL */
} cdb_client_info;

/* ---- authentication of a request ---- */

/*
 * Verifies the bearer token (JWT) and that its session is alive; fills *out.
 * UNAUTHORIZED / TOKEN_EXPIRED / TOKEN_REVOKED. Cheap when Redis has the
 * session (one GET), one PostgreSQL round trip otherwise.
 */
int cdb_session_authenticate(cdb_service *svc, const char *token, cdb_principal *out, cdb_error *err);

/* Only the JWT part (no I/O), for the event loop to refuse bad tokens early. */
int cdb_session_verify_token(cdb_service *svc, const char *token, cdb_principal *out, cdb_error *err);
/*
 * Only the liveness part, for a principal cdb_session_verify_token filled:
 * TOKEN_REVOKED (and *p reset to anonymous) when its session has ended.
 */
int cdb_session_check(cdb_service *svc, cdb_principal *p, cdb_error *err);

/* ---- sessions and tokens ---- */

/* {access_token, refresh_token, token_type, expires_in, session_id, user} */
int cdb_session_login(cdb_service *svc, const char *email, const char *password,
                   const cdb_client_info *client, json_t **out, cdb_error *err);
/* A new pair for the same session; a reused refresh token revokes the session. */
int cdb_session_refresh(cdb_service *svc, const char *refresh_token, json_t **out, cdb_error *err);
/* Ends the caller's session. */
int cdb_session_logout(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);
/* Ends every session of user_id (self or admin). -> {user_id, revoked_sessions} */
int cdb_session_revoke_user(cdb_service *svc, const cdb_principal *caller, const char *user_id,
                         json_t **out, cdb_error *err);
/* -> {sessions: [{session_id, created_at, last_seen_at, expires_at, ip_address, user_agent, current}]} */
int cdb_session_list(cdb_service *svc, const cdb_principal *caller, json_t **out,
                           cdb_error *err);
/* Ends one of the caller's sessions (admin: anyone's). NOT_FOUND otherwise. */
int cdb_session_delete(cdb_service *svc, const cdb_principal *caller,
                            const char *session_id, cdb_error *err);

/* Background: marks idle/expired sessions ended, deletes old rows. -> count */
int cdb_session_reap(cdb_service *svc, int *reaped, cdb_error *err);

#endif
