/*
 * liveness.h - the Redis copy of a session's liveness, for a caller that
 * reads it without blocking (the event loops' asynchronous Redis:
 * http/loop_admit.c). The blocking path is cdb_session_check (sessions.h),
 * which reads the same key and asks PostgreSQL when it says nothing.
 */
#ifndef COREDB_IDENTITY_LIVENESS_H
#define COREDB_IDENTITY_LIVENESS_H

#include <stddef.h>

#include "coredb/principal.h"

/* The key of p's session ("coredb:session:<sid>"); len >= 64. */
void cdb__session_liveness_key(const cdb_principal *p, char *buf, size_t len);
/*
 * What the key's value (NULL: no copy) says of p's session: 1 alive, 0
 * ended, -1 unknown (cdb_session_check must ask PostgreSQL).
 */
int cdb__session_liveness_of(const cdb_principal *p, const char *value);

#endif
