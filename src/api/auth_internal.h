/*
 * auth_internal.h - what users.c and auth.c share: pooled connections with
 * transactions, the user object built in SQL, UUID checks, and ending
 * sessions (in PostgreSQL, then their Redis liveness keys).
 */
#ifndef COREDB_AUTH_INTERNAL_H
#define COREDB_AUTH_INTERNAL_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/auth.h"

/* An ISO 8601 UTC rendering of a timestamptz column, "2024-01-15T10:30:00Z". */
#define CDB__TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* The API's user object as JSON text, from public.users aliased u; never the hash. */
#define CDB__USER_JSON                                                                  \
    "json_build_object('user_id', u.user_id, 'email', u.email, 'username', u.username,"  \
    " 'display_name', u.display_name, 'profile_picture_url', u.profile_picture_url,"     \
    " 'role', u.role, 'created_at', " CDB__TS("u.created_at") ","                        \
    " 'updated_at', " CDB__TS("u.updated_at") ")::text"

/* The condition "session s is alive"; $N is SESSION_TIMEOUT in seconds. */
#define CDB__SESSION_LIVE(s, n)                                                  \
    s ".revoked_at IS NULL AND " s ".expires_at > now() AND " s ".last_seen_at > " \
    "now() - make_interval(secs => " n ")"


/* Copies a UUID in canonical lowercase form into out; false when s is not one. */
bool cdb__uuid_norm(const char *s, char out[37]);

/*
 * Self or admin on user_id: UNAUTHORIZED for no caller, NOT_FOUND when it is
 * not a UUID, FORBIDDEN for someone else's; id gets the normalized form.
 */
int cdb__authorize_target(const cdb_principal *caller, const char *user_id, char id[37],
                          cdb_error *err);

/* Parses JSON text produced by PostgreSQL into *out. */
int cdb__json_parse(const char *text, json_t **out, cdb_error *err);

/* A pooled connection (NULL + err when none). */
PGconn *cdb__acquire(cdb_service *svc, cdb_pool_conn **pc, cdb_error *err);
/* Rolls back an open transaction, then gives the connection back. pc may be NULL. */
void cdb__release(cdb_service *svc, cdb_pool_conn *pc);
int cdb__begin(PGconn *conn, cdb_error *err);
int cdb__commit(PGconn *conn, cdb_error *err);

/*
 * Revokes user_id's live sessions (all but except_sid when it is not NULL)
 * with reason; *ended gets the session ids (column 0; caller PQclears and,
 * after commit, passes it to cdb__sessions_forget).
 */
int cdb__end_user_sessions(PGconn *conn, const char *user_id, const char *except_sid,
                           const char *reason, PGresult **ended, cdb_error *err);

/* Marks these sessions dead in Redis (column col of res); no-op without Redis. */
void cdb__sessions_forget(cdb_service *svc, const PGresult *res, int col);
void cdb__session_forget(cdb_service *svc, const char *session_id);

#endif
