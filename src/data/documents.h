/*
 * documents.h - what the document store's query (doc_query.c) and
 * transaction operations (doc_tx.c) share (doc_common.c): finding a
 * collection's table in the registry, the WHERE clause of path filters,
 * and the checks of a document.
 */
#ifndef COREDB_DATA_DOCUMENTS_H
#define COREDB_DATA_DOCUMENTS_H

#include <jansson.h>

#include "coredb/documents.h"
#include "coredb/error.h"
#include "coredb/principal.h"
#include <stdint.h>
#include "data/sqlbuild.h"
#include "data/query_run.h"
#include "security/service_state.h"

/* The prefix of a collection's query-cache generation counter. */
#define CDB_DOC_GEN_PREFIX "documents:"

/*
 * True for "documents" and its alias "cosmosdb".
 */
bool cdb__doc_database(const json_t *db);

/*
 * The table of document collection `name` (a JSON string), from the
 * registry (coredb.collections), into table (64 bytes). UNKNOWN_TABLE
 * naming details.collection when there is none or it is not of kind
 * documents; VALIDATION_FAILED (field "collection") for a name that cannot
 * be one.
 */
int cdb__doc_collection(cdb_service *svc, const json_t *name, char table[64], cdb_error *err);

/* Appends " WHERE ..." (nothing for no filters) for filters on doc. */
int cdb__doc_where(cdb_sql *q, const json_t *filters, cdb_error *err);

/* A document or point id: 1..CDB_DOC_ID_MAX bytes of UTF-8 without NUL. */
bool cdb__doc_id_valid(const json_t *v);

/* op's n bound values (a NULL value binds SQL NULL), copied; for document and vector operations. */
struct tx_op;
int cdb__doc_op_params(struct tx_op *op, const char *const *values, int n, cdb_error *err);

/* Checks a document or patch: an object of at most max_bytes as compact JSON and CDB_DOC_MAX_DEPTH levels. */
int cdb__doc_check(const char *field, const json_t *doc, size_t max_bytes, cdb_error *err);

/* POST /data/query with a documents database (doc_query.c). */
int cdb__doc_query(cdb_service *svc, const cdb_principal *p, json_t *request, int64_t start_us,
                   char **body_out, cdb_error *err);

#endif
