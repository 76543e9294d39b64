/*
 * tx_internal.h - what the two halves of POST /data/transaction share:
 * validating and building a request (tx_parse.c) and running it (tx.c).
 * See the top of tx.c for the design.
 */
#ifndef COREDB_DATA_TX_INTERNAL_H
#define COREDB_DATA_TX_INTERNAL_H
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data_internal.h"
#include "store/ledger.h"
#include "data/sqlbuild.h"
#include "data/crypt.h"
#include "coredb/data.h"
#include "coredb/log.h"
#include "store/pg.h"
#include "store/outbox.h"
#include "store/qcache.h"
#include "core/timeutil.h"

#define TX_MAX_OPS 100
#define TX_MAX_GEN CDB_OUTBOX_MAX_GEN /* tables one transaction may change, cascades included */
#define GEN_KEY_LEN CDB_OUTBOX_GEN_KEY_LEN

typedef enum op_kind { OP_INSERT, OP_UPDATE, OP_DELETE, OP_UPSERT, OP_SET, OP_DEL, OP_EXPIRE, OP_INCR } op_kind;

/* The operations' names as requests spell them, by op_kind. */
extern const char *const cdb__tx_op_names[];

/* One operation of the request, validated. Strings not owned point into the request. */
typedef struct tx_op {
    op_kind kind;
    const cdb_table *table;        /* PostgreSQL: the catalog's table */
    json_t *values;                /* PostgreSQL: the request's "data" (borrowed) */
    char *sql;                     /* PostgreSQL: the statement, owned */
    char **params;                 /* PostgreSQL: owned, nparams of them (NULL = SQL NULL) */
    int nparams;
    bool rows;                     /* PostgreSQL: RETURNING row JSON, else the count only */
    const char *key;               /* Redis: as the caller named it */
    char *full_key;                /* Redis: in the caller's namespace, owned */
    const char *value;             /* set */
    int ttl;                       /* set (0: none), expire */
    json_t *data;                  /* the result's data, owned */
    const char *status;            /* "success" | "pending" | "failed" */
    char *refusal;                 /* "failed": what Redis said, owned */
    json_t *enc_values;            /* PostgreSQL: values with encrypted columns encrypted, owned, or NULL */
    json_t *enc_filters;           /* PostgreSQL: filters through blind indexes, owned, or NULL */
    bool doc;                      /* a document operation (doc_tx.c): table is NULL */
    char gen[96];                  /* doc: the collection's cache generation name */
} tx_op;

/* One coredb.redis_outbox row of this transaction; seq = index + 1. */
typedef struct outbox_row {
    const char *op;
    const char *key;
    const char *value;
    int ttl;
    tx_op *from;                   /* NULL for a generation bump */
} outbox_row;

typedef struct tx {
    cdb_service *svc;
    const cdb_principal *caller;
    cdb_catalog *cat;              /* ref'd on the first PostgreSQL op */
    cdb_colset *cs;                /* encrypted columns, ref'd on the first write of values */
    char id[37];
    tx_op ops[TX_MAX_OPS];
    int nops;
    int pg_ops[TX_MAX_OPS];        /* indexes into ops of the PostgreSQL ops, in order */
    int npg;
    outbox_row rows[TX_MAX_OPS + TX_MAX_GEN]; /* the Redis ops and one bump per table changed */
    int nrows;
    char gen_keys[TX_MAX_GEN][GEN_KEY_LEN];
    int ngen;
    int64_t started_ms;
    const char *key;               /* Idempotency-Key or NULL (borrowed from the caller) */
    char scope[37];                /* its scope: the caller's user id */
    char hash[CDB_LEDGER_HASH_LEN]; /* the request's keyed hash (store/ledger.h) */
    char *stored;                  /* keyed: the answer committed with the ledger row, owned */
    char *final;                   /* keyed: the answer with Redis results, once stored too, owned */
} tx;

/* A transaction run on an event loop (tx_loop.h): built in tx.c, its outbox applied by tx_loop.c. */
typedef struct cdb__tx_apply cdb__tx_apply;
struct cdb__tx_loop {
    tx *t;
    cdb_sql outbox;                /* the outbox rows' INSERT */
    const char *settings[3];       /* the prelude's: database role, user id, role name */
    const char *ledger[2];
    const char *claim[3];          /* keyed: the key's claim (scope, key, request hash) */
    const char *keyed_ledger[6];   /* keyed: the ledger row with the stored answer (commit_keyed's) */
    cdb__tx_apply *apply;          /* tx_loop.c's state while it applies the outbox, owned */
};

/* Fails operation i (0-based) with details.operation and details.field. */
static inline int op_fail(cdb_error *err, int i, cdb_err code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static inline int op_fail(cdb_error *err, int i, cdb_err code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cdb_error_vset(err, code, fmt, ap);
    va_end(ap);
    cdb_error_detail(err, "operation", json_integer(i + 1));
    if (field)
        cdb_error_detail(err, "field", json_string(field));
    return code;
}

/* Adds details.operation to an error another module filled. */
static inline int op_tag(cdb_error *err, int i, int rc)
{
    cdb_error_detail(err, "operation", json_integer(i + 1));
    return rc;
}

/*
 * Validates the whole request into t (its operations' statements built,
 * the outbox rows planned) before any connection is taken, so a bad
 * operation costs no database work. Needs t->svc, t->caller and the cache
 * namespace (the generation keys are named here).
 */
int cdb__tx_parse_request(tx *t, json_t *request, cdb_error *err);
/* Row as Redis took it (applied, or refused for good): its operation's status and value in the answer. */
void cdb__tx_row_report(const tx *t, outbox_row *row, cdb_outbox_rc rc, const char *why, json_t *value);
/* The answer, serialized as it is sent (and stored, keyed); malloc'd, NULL when out of memory. */
char *cdb__tx_response_text(tx *t);
/* Keyed: the answer with the Redis results replaces the stored one ($1 transaction id, $2 answer). */
#define CDB__TX_LEDGER_FINAL_SQL "UPDATE coredb.tx_ledger SET response = $2 WHERE transaction_id = $1::uuid"

/*
 * Validates operation i, of database "documents", into t->ops[i] (doc_tx.c,
 * coredb/documents.h): its statement, params and generation name.
 */
int cdb__doc_tx_op(tx *t, int i, json_t *o, cdb_error *err);

/* The same for database "vectors" (vec_tx.c, coredb/vectors.h): upsert, delete. */
int cdb__vec_tx_op(tx *t, int i, json_t *o, cdb_error *err);

#endif
