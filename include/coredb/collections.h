/*
 * collections.h - the registry of document and vector collections (issue
 * 15): creating, listing and dropping them. Admin only (FORBIDDEN;
 * UNAUTHORIZED for an anonymous caller). Blocking: call from worker threads.
 *
 * A collection `name` (1..58 characters of a-z, 0-9, '_', not starting with
 * a digit or pg_) is one row of coredb.collections (migration 015) and one
 * table coredb.coll_<name>. The name in the registry is the key the data API
 * uses; the table name is only ever read from the registry and quoted.
 *
 * Table layout, kind "documents":
 *   id            text PRIMARY KEY (1..255 bytes)
 *   user_id       uuid NOT NULL DEFAULT coredb.current_user_id()   (owner)
 *   partition_key text: GENERATED from doc at the registered path (doc #>> path),
 *                 NULL when the collection has none
 *   doc           jsonb NOT NULL (an object)
 *   etag          text NOT NULL (changes on every write)
 *   created_at, updated_at timestamptz
 *   GIN index on doc (jsonb_path_ops), btree on partition_key.
 * Kind "vectors" (the vector operations are built on this, elsewhere):
 *   id            text PRIMARY KEY
 *   user_id       uuid NOT NULL DEFAULT coredb.current_user_id()
 *   vector        real[] NOT NULL, CHECK one dimension of exactly
 *                 `dimensions` elements
 *   payload       jsonb NOT NULL DEFAULT '{}'
 *   etag, created_at, updated_at as for documents; GIN index on payload.
 *   The registry row records dimensions (1..4096), metric (cosine, l2, dot),
 *   vector_index ("exact" or "hnsw") with hnsw_m, hnsw_ef_construction,
 *   hnsw_ef_search, and version. An hnsw collection's table has the
 *   statement trigger coredb_version (coredb.collection_version_bump(),
 *   SECURITY DEFINER) adding 1 to version per write statement.
 * Row-level security on both, as `coredb table expose` sets it: policies
 * coredb_admin (every row), coredb_rows (permissive) and the RESTRICTIVE
 * coredb_own_user_id (user_id = coredb.current_user_id()) for coredb_user
 * and coredb_premium and their _ro counterparts.
 */
#ifndef COREDB_COLLECTIONS_H
#define COREDB_COLLECTIONS_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/* Longest collection name: the table name coll_<name> must fit in 63 bytes. */
#define CDB_COLLECTION_NAME_MAX 58
#define CDB_VECTOR_DIMENSIONS_MAX 4096

/*
 * Creates a collection. request: {"name", "kind": "documents"|"vectors",
 * "partition_key"?: path (documents), "dimensions"?: 1..4096 (vectors,
 * required), "metric"?: "cosine" (default) | "l2" | "dot" (vectors),
 * "index"?: "exact" (default) | "hnsw" (vectors), "hnsw"?: {"m"?: 4..64
 * (16), "ef_construction"?: 8..1000 (200), "ef_search"?: 10..2000 (100)}
 * (index "hnsw" only)}.
 * VALIDATION_FAILED naming the field for bad input; CONFLICT when the
 * name is taken. Audited as collection.create. *out: the collection as
 * cdb_collections_list shows it.
 */
int cdb_collections_create(cdb_service *svc, const cdb_principal *caller, json_t *request,
                           json_t **out, cdb_error *err);

/*
 * {"collections": [{"name", "kind", "table", "schema": "coredb",
 * "partition_key"|null, "dimensions"|null, "metric"|null, "created_at",
 * "index"|null, "hnsw": {"m", "ef_construction", "ef_search"}|null, "version",
 * "count" (rows, every owner's)}]}, by name.
 */
int cdb_collections_list(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

/* Drops a collection and its table (every document in it). NOT_FOUND when there is none.
 * Audited as collection.drop. *out: {"name", "dropped": true}. */
int cdb_collections_drop(cdb_service *svc, const cdb_principal *caller, const char *name,
                         json_t **out, cdb_error *err);

#endif
