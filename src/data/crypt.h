/*
 * crypt.h - the data API over encrypted columns (issue 11): what query.c
 * and the transaction path do so that reads return plaintext, writes
 * encrypt before PostgreSQL sees a value, and equality filters on a
 * searchable column go through its blind index. The keys come from the
 * instance's snapshot (security/colring.h).
 *
 * Binding. A value is bound to its row's primary key, so a write must know
 * the key before PostgreSQL does: an insert or upsert that sets an
 * encrypted column names the primary key in its data, an update that sets
 * one filters on the primary key alone ({pk: value} or {pk: {eq: value}}).
 * Anything else is refused (VALIDATION_FAILED / INVALID_FILTER saying why).
 */
#ifndef COREDB_DATA_CRYPT_H
#define COREDB_DATA_CRYPT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "coredb/error.h"
#include "security/colring.h"
#include "store/pool.h"

/* The member each row carries while the page is decrypted (removed after). */
#define CDB_CRYPT_PK_MEMBER "__cdb_pk"
/* The member a row gets naming the columns that did not decrypt (their value is null). */
#define CDB_CRYPT_FAILED_MEMBER "_decryption_failed"

/*
 * For a read of table: refuses order_by on an encrypted column and filters
 * on one that are not equality on a searchable column (INVALID_FILTER), and
 * gives *filters_out, a copy of filters with equality filters rewritten to
 * the blind-index column (NULL when nothing changed).
 */
int cdb__crypt_read_plan(const cdb_colset *cs, const char *table, const json_t *filters, const json_t *order,
                         json_t **filters_out, cdb_error *err);

/*
 * Decrypts the page part `"data":[rows...],...` (as query.c builds it, each
 * row with CDB_CRYPT_PK_MEMBER): *out is the same part with plaintext
 * values, the member and the blind-index columns removed (malloc'd).
 */
int cdb__crypt_read_page(const cdb_colset *cs, const char *table, const char *part, size_t len, char **out,
                         size_t *out_len, cdb_error *err);

typedef enum cdb_crypt_write_kind { CDB_CRYPT_INSERT, CDB_CRYPT_UPSERT, CDB_CRYPT_UPDATE } cdb_crypt_write_kind;

/*
 * For a write of table: *data_out is a copy of data with encrypted columns'
 * values encrypted (and their blind indexes set), NULL when the write sets
 * no encrypted column. The values are bound to the row's primary key in
 * the text PostgreSQL gives it (an upper-case uuid is bound as lower case):
 * an update's key comes from its filters; an insert's from data, or, when
 * data lacks it, coredb draws it first: a uuid at random, a serial or
 * identity key from its sequence (one nextval on a pooled connection;
 * *override_identity then says the INSERT needs OVERRIDING SYSTEM VALUE),
 * and *data_out carries it.
 */
int cdb__crypt_write_values(const cdb_colset *cs, cdb_pool *pool, const char *table, cdb_crypt_write_kind kind,
                            const json_t *data, const json_t *filters, json_t **data_out, bool *override_identity,
                            cdb_error *err);

/*
 * The checks a write of table needs beyond its values: an upsert that sets
 * an encrypted column must conflict on the primary key alone (another key
 * would update a row whose primary key differs from the one the value is
 * bound to), and no write may change the primary key of a row with
 * encrypted values (they would no longer decrypt). VALIDATION_FAILED.
 */
int cdb__crypt_write_check(const cdb_colset *cs, const char *table, const json_t *data, bool upsert,
                           bool update, const json_t *conflict_columns, bool sets_encrypted, cdb_error *err);

/* Whether name is the blind-index column of a searchable encrypted column of table (coredb sets it). */
bool cdb__crypt_is_blind_index(const cdb_colset *cs, const char *table, const char *name);

/* Decrypts the encrypted values of one returned row in place (needs its primary key member). */
void cdb__crypt_row(const cdb_colset *cs, const char *table, json_t *row, const json_t *plain_data);

#endif
