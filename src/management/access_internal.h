/*
 * access_internal.h - what the three access operations (access_rls.c,
 * access_grants.c, access_owner.c) share, implemented in access.c: the
 * request's shape, finding a relation by its exact catalog name, what
 * counts as coredb's own, and what follows a commit or a failure
 * (catalog refresh, query cache, audit).
 */
#ifndef COREDB_MANAGEMENT_ACCESS_INTERNAL_H
#define COREDB_MANAGEMENT_ACCESS_INTERNAL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/access.h"
#include "management/admin_sql.h"

/* The tables coredb's migrations create in public (003 seed schema); the rest of its own live in schema coredb. */
#define CDB__ACCESS_OWN_TABLES "'users', 'projects', 'content_analysis', 'media_assets'"

/* SQL: namespace alias n is coredb's or the system's. */
#define CDB__ACCESS_SYSTEM_NS(n) \
    "(" n ".nspname IN ('coredb', 'information_schema') OR " n ".nspname LIKE 'pg\\_%')"

/*
 * SQL: relation c in namespace n is coredb's own: in a system schema or
 * coredb's, one of the public tables of its migrations, or a sequence or
 * other relation such a table owns (serial and identity columns).
 */
#define CDB__ACCESS_PROTECTED_REL(c, n)                                                                   \
    "(" CDB__ACCESS_SYSTEM_NS(n) " OR (" n ".nspname = 'public' AND " c ".relname IN (" CDB__ACCESS_OWN_TABLES \
    "))"                                                                                                  \
    " OR EXISTS (SELECT 1 FROM pg_depend pd JOIN pg_class pt ON pt.oid = pd.refobjid"                     \
    "  JOIN pg_namespace ptn ON ptn.oid = pt.relnamespace"                                                \
    "  WHERE pd.classid = 'pg_class'::regclass AND pd.refclassid = 'pg_class'::regclass"                  \
    "  AND pd.objid = " c ".oid AND pd.deptype IN ('a', 'i')"                                             \
    "  AND (ptn.nspname = 'coredb' OR (ptn.nspname = 'public' AND pt.relname IN (" CDB__ACCESS_OWN_TABLES \
    ")))))"

/* A relation as the catalog names it. */
typedef struct cdb__access_rel {
    char oid[16];
    char kind;                     /* pg_class.relkind */
    char *schema, *name, *owner;   /* malloc'd */
    char *qschema, *qname;         /* quoted (PQfreemem) */
} cdb__access_rel;

void cdb__access_rel_destroy(cdb__access_rel *rel);

/*
 * Finds "name" (in default_schema) or "schema.name" among relations whose
 * relkind is in kinds, by exact catalog names as bound parameters.
 * VALIDATION_FAILED (details.field) for a value that is not such a name,
 * NOT_FOUND for none, FORBIDDEN for one of coredb's own (see access.h).
 */
int cdb__access_rel_find(PGconn *conn, const char *field, const json_t *value,
                         const char *default_schema, const char *kinds, const char *kind_word,
                         cdb__access_rel *rel, cdb_error *err);

/*
 * The request must be a JSON object whose members are all in allowed
 * (NULL-terminated); VALIDATION_FAILED otherwise.
 */
int cdb__access_fields(const json_t *request, const char *const *allowed, cdb_error *err);

/* Optional boolean member: *out = its value or def; VALIDATION_FAILED for another type. */
int cdb__access_bool(const json_t *request, const char *key, bool def, bool *out, cdb_error *err);



#endif
