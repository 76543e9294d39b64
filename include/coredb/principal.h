/*
 * principal.h - who is calling: an application role, a user id and the
 * session the token belongs to; and the one rule every module shares about
 * acting on a user ("self or admin"). Pure, no I/O (src/security/principal.c).
 *
 * An embedder acting as an operator passes {.role = CDB_ROLE_ADMIN}.
 */
#ifndef COREDB_PRINCIPAL_H
#define COREDB_PRINCIPAL_H

#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "coredb/role.h"

/* Who is calling. role == CDB_ROLE_ANON means no valid token was given. */
typedef struct cdb_principal {
    cdb_role role;
    char user_id[37];
    char session_id[37];
    int64_t token_exp;
} cdb_principal;

bool cdb_principal_is_admin(const cdb_principal *p);
/* Whether p is a caller with a token (not NULL, not anonymous). */
bool cdb_principal_known(const cdb_principal *p);
/*
 * 0 for a caller with a token; UNAUTHORIZED ("Authentication required")
 * for NULL or anonymous: the one answer every module gives an anonymous
 * caller of an operation that needs one (HTTP: 401).
 */
int cdb_principal_require(const cdb_principal *p, cdb_error *err);
/* The database role p's requests run as (role.h), NULL for anonymous or NULL p. */
const char *cdb_principal_db_role(const cdb_principal *p);

/* Copies a UUID in canonical lowercase form into out; false when s is not one. */
bool cdb_uuid_norm(const char *s, char out[37]);

/*
 * Self or admin on user_id: UNAUTHORIZED for no caller, NOT_FOUND when it is
 * not a UUID, FORBIDDEN for someone else's; id gets the normalized form.
 */
int cdb_principal_authorize_target(const cdb_principal *caller, const char *user_id, char id[37],
                                   cdb_error *err);

#endif
