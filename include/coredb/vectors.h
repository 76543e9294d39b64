/*
 * vectors.h - the vector store (issue 15): points (id, vector, payload,
 * owner) in vector collections (coredb/collections.h), served through the
 * data API of coredb/data.h with `database: "vectors"`. Points live in
 * PostgreSQL (coredb.coll_<name>: vector real[] of exactly `dimensions`
 * elements, payload jsonb), so they take part in the same transactions as
 * tables, documents and Redis keys, under the same row-level security: a
 * user sees and writes only the points they own, an admin all of them.
 *
 * cdb_data_transaction operations with database "vectors":
 *   upsert {collection, vector, payload?, id?}  overwrites the point of that
 *          id (a new uuid without one); payload a JSON object (default {}).
 *          Upserting onto an id another user owns: 403 FORBIDDEN.
 *   delete {collection, id}   404 NOT_FOUND when the caller sees no such point.
 *   Each result is {"rows": [{"id", "payload", "etag", "created_at",
 *   "updated_at"}], "count"}.
 *
 * cdb_data_query, {database: "vectors", collection, query_type: "search",
 * vector, k?, filter?, min_score?, with_payload?, with_vector?, exact?}:
 *   vector       the query, `dimensions` finite numbers (float32 range)
 *   k            1..CDB_VECTOR_K_MAX (default 10)
 *   filter       path filters on the payload, as documents' filters
 *                (coredb/documents.h); applied before ranking
 *   min_score    only points scoring at least this
 *   with_payload default true; with_vector default false
 *   exact        default false; true: an hnsw collection is scanned exactly
 *   -> {"data": [{"id", "score", "payload"?, "vector"?}], "count", "index",
 *      "execution_time_ms", "cached": false}, best score first (ties by id);
 *      "index" is the path that answered, "exact" or "hnsw", and
 *      "index_build_ms" is there when the request built/updated the index.
 * The score, higher = closer, by the collection's metric:
 *   cosine  cosine similarity x.q / (|x| |q|) in [-1, 1]; 0 for a stored
 *           zero vector; a zero query vector is VALIDATION_FAILED
 *   l2      the negative Euclidean distance -|x - q| (0 = identical)
 *   dot     the dot product x.q
 * Search on an "exact" collection (collections.h) is exact: the candidates (the points the caller may see, filter
 * applied) are named by PostgreSQL under the caller's role (id, etag), their
 * vectors come from coredb's in-memory copy while each row's etag is
 * unchanged (read again otherwise), and coredb ranks them in C (float32,
 * contiguous, a bounded heap of k). A write that bypasses coredb must change
 * the row's etag for a search to see its new vector.
 * On an "hnsw" collection the search is approximate: an in-process hnswlib
 * index per instance and collection, holding every point, kept fresh by
 * the registry's version counter (a statement trigger counts the writes;
 * the index catches up before a search when it moved, so any committed
 * write is seen, however it was made). The index names max(k, ef_search)
 * candidates; PostgreSQL, as the caller, keeps those the caller may see
 * that pass the filter; they are scored exactly (same scores as the exact
 * path), min_score applies, the best k are the answer. Fewer than k while
 * the index holds more: 4x the candidates, up to 3 times, then the exact
 * path. Only recall is approximate (measured in bench/RESULTS.md).
 * Bad input (wrong dimension, a non-number, a number outside float32, k out
 * of range, ...) is VALIDATION_FAILED naming the field.
 */
#ifndef COREDB_VECTORS_H
#define COREDB_VECTORS_H

#include "coredb/data.h"

#define CDB_VECTOR_K_MAX 1000
/* = CDB_VECTOR_DIMENSIONS_MAX of collections.h (management), which data may not include */
#define CDB_VECTOR_DIM_MAX 4096

#endif
