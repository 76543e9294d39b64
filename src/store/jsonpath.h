/*
 * jsonpath.h - the JSON paths of the document store ("address.city"):
 * their syntax, checked once, and their split form. A path reaches SQL only
 * as a bound text[] parameter (doc #> $1::text[]), never spliced as text;
 * the syntax check exists to answer a bad path with a 400 naming the field.
 */
#ifndef COREDB_STORE_JSONPATH_H
#define COREDB_STORE_JSONPATH_H

#include <jansson.h>

#include "coredb/error.h"

#define CDB_PATH_DEPTH_MAX 16
#define CDB_PATH_SEGMENT_MAX 64
#define CDB_PATH_LEN_MAX 256

/*
 * Splits path (a JSON string) into *out, a PostgreSQL text[] literal
 * ("{address,city}", malloc'd) safe to bind as a parameter: 1..16 segments
 * of 1..64 characters of [A-Za-z0-9_-] joined by '.', 256 bytes at most.
 * VALIDATION_FAILED with details.field = field otherwise.
 */
int cdb_jsonpath_parse(const char *field, const json_t *path, char **out, cdb_error *err);

#endif
