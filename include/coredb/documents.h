/*
 * documents.h - the document store (issue 15): JSON documents in
 * collections (coredb/collections.h), served through the data API of
 * coredb/data.h with `database: "documents"` (`"cosmosdb"` is an alias).
 * The store lives in PostgreSQL (one table per collection, layout in
 * collections.h), so documents take part in the same transactions as
 * tables and Redis keys, under the same row-level security: a user sees
 * and writes only the documents they own (user_id), an admin all of them.
 *
 * cdb_data_query, {database: "documents", collection, filters?, select?,
 * order_by?, pagination?}:
 *   filters   {path: value} (eq) or {path: {op: value, ...}}; op one of
 *             eq neq gt gte lt lte in exists contains. A path is
 *             "address.city": 1..16 names of [A-Za-z0-9_-] joined by '.'.
 *             An object value is read as operators: compare an object with
 *             {"eq": {...}}. gt/gte/lt/lte take a number or a string and
 *             match only values of that JSON type; in takes a non-empty array
 *             (at most 1000); exists takes true/false (a JSON null exists);
 *             contains is JSON containment (@>): an array contains a scalar
 *             element, an object a sub-object. neq matches a missing path.
 *   select    [path, ...]: each row is {"id", "etag", <path>: value|null}
 *             instead of the whole {"id", "partition_key", "doc", "etag",
 *             "created_at", "updated_at"}.
 *   order_by  {path, direction} or a list of them; ties broken by id.
 *   pagination and the result cache as for tables (data.h); the cache's
 *   generation counter is per collection ("documents:<name>").
 *
 * cdb_data_transaction operations with database "documents":
 *   insert  {collection, document, id?}   id: the given one, else the
 *           document's "id" member when a string, else a new uuid. An id
 *           taken already: 409 CONFLICT.
 *   upsert  {collection, document, id?}   overwrites the document of that id.
 *   replace {collection, id, document, if_match?}
 *   patch   {collection, id, patch, if_match?}   JSON merge patch (RFC 7396)
 *   delete  {collection, id, if_match?}
 *   replace/patch/delete of an id the caller cannot see: 404 NOT_FOUND;
 *   if_match differing from the document's etag: 409 PRECONDITION_FAILED.
 *   Each result is {"rows": [{"id", "partition_key", "doc", "etag",
 *   "created_at", "updated_at"}], "count"}; every write changes the etag.
 * Limits: a document (or patch) of at most DOC_MAX_BYTES (default
 * CDB_DOC_MAX_BYTES) as compact
 * JSON and CDB_DOC_MAX_DEPTH levels of nesting (VALIDATION_FAILED naming the
 * field); bad paths are VALIDATION_FAILED naming the field. The document a
 * patch produces is measured by PostgreSQL as jsonb text (a space after each
 * ':' and ',' more than compact JSON), so a document filled to the last
 * bytes may take no patch; too large is VALIDATION_FAILED naming "patch".
 */
#ifndef COREDB_DOCUMENTS_H
#define COREDB_DOCUMENTS_H

#include "coredb/data.h"

/* DOC_MAX_BYTES's default (configuration.md) */
#define CDB_DOC_MAX_BYTES (2 * 1024 * 1024)
#define CDB_DOC_MAX_DEPTH 32
#define CDB_DOC_ID_MAX 255
/* = CDB_COLLECTION_NAME_MAX of collections.h (management), which data may not include */
#define CDB_DOC_COLLECTION_NAME_MAX 58

#endif
