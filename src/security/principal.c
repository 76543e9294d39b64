/*
 * principal.c - the caller (principal.h): the database role an application
 * role runs as, UUID normalization and "self or admin", shared by users,
 * sessions and the data API so each asks the same question the same way.
 */
#include <ctype.h>
#include <string.h>

#include "coredb/principal.h"

bool cdb_principal_is_admin(const cdb_principal *p)
{
    return p && p->role == CDB_ROLE_ADMIN;
}

bool cdb_principal_known(const cdb_principal *p)
{
    return p && p->role != CDB_ROLE_ANON;
}

int cdb_principal_require(const cdb_principal *p, cdb_error *err)
{
    return cdb_principal_known(p) ? 0 : cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Authentication required");
}

const char *cdb_principal_db_role(const cdb_principal *p)
{
    return p ? cdb_role_db_name(p->role) : NULL;
}

bool cdb_uuid_norm(const char *s, char out[37])
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
        out[i] = (char)tolower((unsigned char)s[i]);
    }
    out[36] = '\0';
    return true;
}

int cdb_principal_authorize_target(const cdb_principal *caller, const char *user_id, char id[37],
                                   cdb_error *err)
{
    int rc = cdb_principal_require(caller, err);
    if (rc < 0)
        return rc;
    if (!cdb_uuid_norm(user_id, id))
        return cdb_error_set(err, CDB_ERR_NOT_FOUND, "User not found");
    if (!cdb_principal_is_admin(caller) && strcmp(id, caller->user_id) != 0)
        return cdb_error_set(err, CDB_ERR_FORBIDDEN, "You may only act on your own account");
    return 0;
}
