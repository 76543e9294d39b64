/*
 * identity_internal.h - what users.c and sessions.c share: the user object
 * built in SQL, the session liveness condition, and ending sessions (in
 * PostgreSQL, then their Redis liveness keys: liveness.c). Connections and transactions
 * come from store/txn.h, the caller rules from principal.h.
 */
#ifndef COREDB_IDENTITY_INTERNAL_H
#define COREDB_IDENTITY_INTERNAL_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/sessions.h"
#include "coredb/users.h"
#include "store/txn.h"
#include "security/service_state.h"

/* The API's user object as JSON text, from public.users aliased u; never the hash. */
#define CDB__USER_JSON                                                                  \
    "json_build_object('user_id', u.user_id, 'email', u.email, 'username', u.username,"  \
    " 'display_name', u.display_name, 'profile_picture_url', u.profile_picture_url,"     \
    " 'role', u.role, 'created_at', " CDB_SQL_TS("u.created_at") ","                        \
    " 'updated_at', " CDB_SQL_TS("u.updated_at") ")::text"

/*
 * The per-user transaction lock (advisory key 20261122, hashtext(user id)
 * as $1) that logins and user deletion share, so the SESSION_MAX_PER_USER
 * eviction sees every concurrent login and a deleted user gets no new
 * session. Key 20261123 is users.c's first-admin lock; 6155020977930761511
 * and ...512 are the migrator's (management/migrate.c).
 */
#define CDB__USER_LOCK_SQL "SELECT pg_advisory_xact_lock(20261122, hashtext($1))"

/* The condition "session s is alive"; $N is SESSION_TIMEOUT in seconds. */
#define CDB__SESSION_LIVE(s, n)                                                  \
    s ".revoked_at IS NULL AND " s ".expires_at > now() AND " s ".last_seen_at > " \
    "now() - make_interval(secs => " n ")"




/*
 * Revokes user_id's live sessions (all but except_sid when it is not NULL)
 * with reason; *ended gets the session ids (column 0; caller PQclears and,
 * after commit, passes it to cdb__sessions_forget).
 */
int cdb__end_user_sessions(PGconn *conn, const char *user_id, const char *except_sid,
                           const char *reason, PGresult **ended, cdb_error *err);

/*
 * Stores the positive liveness copy of a session (SET NX, so never over a
 * tombstone); remaining_s: seconds left of the session's absolute lifetime.
 */
void cdb__session_remember(cdb_service *svc, const char *session_id, const char *user_id,
                           long long remaining_s);
/* What Redis says of p's session: 1 alive, 0 ended, -1 unknown (Redis absent, down, or no copy). */
int cdb__session_liveness(cdb_service *svc, const cdb_principal *p);

/* Marks these sessions dead in Redis (column col of res); no-op without Redis.
 * A mark Redis does not take is queued in the outbox on conn (may be NULL). */
void cdb__sessions_forget(cdb_service *svc, PGconn *conn, const PGresult *res, int col);
void cdb__session_forget(cdb_service *svc, PGconn *conn, const char *session_id);

#endif
