/*
 * result.h - the one result form of the library, the seed's dictionary
 * {status, error, timestamp, ...data}, built from a cdb_error and optional
 * data.
 *
 *   {"status": "success" | "error",
 *    "error": null | {"code": "NOT_FOUND", "message": "...", "details": {...}},
 *    "timestamp": "2024-01-15T10:30:00Z",
 *    ...the keys of data}
 *
 * The CLI prints it with --json; the HTTP error envelope is built around
 * cdb_result_error_object() of the same cdb_error, so the error a client
 * sees over HTTP and the one a script sees from the CLI cannot drift apart.
 *
 * Out of memory: both builders return NULL and leave their inputs untouched;
 * the caller reports INTERNAL_ERROR its own way. Thread-safe, no I/O.
 */
#ifndef COREDB_RESULT_H
#define COREDB_RESULT_H

#include <jansson.h>

#include "coredb/error.h"

/*
 * {"code", "message", "details"} of err, in that order; details is {} when
 * err has none (a copy of the reference, never of the object). err must not
 * be NULL. A new reference the caller owns (json_decref), or NULL on out of
 * memory.
 */
json_t *cdb_result_error_object(const cdb_error *err);

/*
 * The result form. err NULL or CDB_OK means success. data is borrowed: NULL,
 * or an object whose keys are copied in after status, error and timestamp;
 * a data key named "status", "error" or "timestamp" is dropped, so data can
 * never change the outcome a reader sees. Any other JSON value is kept whole
 * under "data". A new reference the caller owns, or NULL on out of memory.
 */
json_t *cdb_result_object(const cdb_error *err, json_t *data);

#endif
