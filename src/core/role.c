/*
 * role.c - names of the application roles and the database roles they run
 * as (role.h). The database role names are the migrations' (002).
 */
#include <string.h>

#include "coredb/role.h"

static const char *const role_names[] = {
    [CDB_ROLE_ANON] = "anonymous",
    [CDB_ROLE_USER] = "user",
    [CDB_ROLE_PREMIUM] = "premium",
    [CDB_ROLE_ADMIN] = "admin",
};

const char *cdb_role_name(cdb_role role)
{
    return (unsigned)role < sizeof role_names / sizeof *role_names ? role_names[role] : "anonymous";
}

int cdb_role_parse(const char *name)
{
    for (int r = CDB_ROLE_USER; name && r <= CDB_ROLE_ADMIN; r++)
        if (strcmp(name, role_names[r]) == 0)
            return r;
    return -1;
}

const char *cdb_role_db_name(cdb_role role)
{
    switch (role) {
    case CDB_ROLE_ADMIN:   return "coredb_admin";
    case CDB_ROLE_PREMIUM: return "coredb_premium";
    case CDB_ROLE_USER:    return "coredb_user";
    default:               return NULL;
    }
}
