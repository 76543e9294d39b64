/*
 * sqlbuild.h - building one SQL statement with bound parameters from a
 * structured request (internal to src/data).
 *
 * The only text that reaches SQL comes from the catalog (identifiers, quoted
 * with double quotes doubled) or from this file's fixed fragments; every
 * value is a $n parameter. Shared by the query and transaction paths.
 */
#ifndef COREDB_SQLBUILD_H
#define COREDB_SQLBUILD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "store/catalog.h"
#include "coredb/error.h"

#define CDB_SQL_MAX_PARAMS 2048  /* per statement; PostgreSQL allows 65535 */
#define CDB_SQL_MAX_IN     1000  /* values of one "in" filter */

typedef struct cdb_sql {
    char *text;                  /* NUL-terminated statement, owned */
    size_t len, cap;
    /* owned, grown on demand (16, 32, ... up to CDB_SQL_MAX_PARAMS) so that
     * building a statement costs what it uses, not 16 KiB of pointers */
    char **params;               /* NULL = SQL NULL */
    int nparams, pcap;
    bool oom;                    /* an append failed: the statement is unusable */
} cdb_sql;

void cdb_sql_init(cdb_sql *q);
void cdb_sql_destroy(cdb_sql *q);
/* Re-initializes q for another statement (keeps nothing). */
void cdb_sql_reset(cdb_sql *q);

void cdb_sql_append(cdb_sql *q, const char *fragment);
/* Appends "name" with embedded double quotes doubled. */
void cdb_sql_ident(cdb_sql *q, const char *name);
/* Appends "schema"."table". */
void cdb_sql_table(cdb_sql *q, const char *schema, const char *table);
/* Adds a parameter (copied; NULL = SQL NULL) and appends $n. -1 when full. */
int cdb_sql_param(cdb_sql *q, const char *value);
/* Moves src's parameters to dst, which has none (dst's text unchanged). */
void cdb_sql_take_params(cdb_sql *dst, cdb_sql *src);

/*
 * The text form of a JSON value bound to column c: strings as they are,
 * numbers and booleans in their JSON spelling, objects/arrays as JSON text
 * (only for JSON columns), null → *out NULL. A type that cannot fit the
 * column (object for a number column, ...) → VALIDATION_FAILED naming field.
 * Strings with NUL bytes are refused.
 */
int cdb_sql_value_text(const json_t *v, const cdb_column *c, const char *field,
                       char **out, cdb_error *err);

/*
 * Appends " WHERE ..." for filters (a JSON object column -> value or
 * {op: value}; ops eq neq gt gte lt lte in like ilike is_null), or nothing
 * for NULL/empty filters. Columns must exist in t with CDB_PRIV_SELECT
 * (filters read them) → UNKNOWN_COLUMN (details.column); a bad operator,
 * value type or shape → INVALID_FILTER (details.column, details.operator).
 * like/ilike only on text columns; in takes a non-empty array (≤ 1000).
 */
int cdb_sql_where(cdb_sql *q, const cdb_table *t, const json_t *filters, cdb_error *err);

#endif
