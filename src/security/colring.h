/*
 * colring.h - the encrypted columns and their unwrapped keys as this
 * instance knows them (coredb.encryption_columns / _keys, migration 014),
 * for the data API's reads and writes. A snapshot is reference counted and
 * replaced whole: reloaded when older than CDB_COLRING_TTL_MS (so a setup or
 * rotation made by another instance is seen within that), at once after
 * cdb__colring_invalidate (this instance's own setup and rotation), and when
 * a value names a key version the snapshot does not have.
 */
#ifndef COREDB_SECURITY_COLRING_H
#define COREDB_SECURITY_COLRING_H

#include <stdbool.h>
#include <stddef.h>

#include "coredb/error.h"
#include "security/colcrypt.h"

typedef struct cdb_service cdb_service;
typedef struct cdb_colring cdb_colring;

#define CDB_COLRING_TTL_MS 2000
#define CDB_COLRING_VERSIONS 64

/* The type of a table's primary key, as encrypted values bind to its text. */
typedef enum cdb_pk_kind {
    CDB_PK_OTHER = 0,              /* not one setup accepts (the type was changed since): writes refused */
    CDB_PK_INT,                    /* smallint, integer, bigint */
    CDB_PK_UUID,
    CDB_PK_TEXT,                   /* text, varchar */
} cdb_pk_kind;

typedef struct cdb_enccol {
    char *table, *column, *pk;
    cdb_pk_kind pk_kind;
    char *pk_sequence;             /* serial or identity: its sequence (catalog text), else NULL */
    bool pk_identity_always;       /* GENERATED ALWAYS AS IDENTITY */
    bool pk_has_default;           /* any default (a uuid's is then drawn by coredb) */
    bool searchable;
    int current;                   /* the version new writes use */
    cdb_colkey *keys[CDB_COLRING_VERSIONS]; /* by version; [0] the blind-index key */
} cdb_enccol;

typedef struct cdb_colset {
    int refs;                      /* under the ring's lock */
    size_t n;
    cdb_enccol *cols;
} cdb_colset;

cdb_colring *cdb__colring_new(void);
void cdb__colring_free(cdb_colring *r);
/* The next cdb__colring_get reloads. */
void cdb__colring_invalidate(cdb_colring *r);
/*
 * The current snapshot (a reference: cdb__colring_put it). Empty when no
 * column is encrypted (or migration 014 is not applied). CONFIG_INVALID when
 * a key does not unwrap with DB_ENCRYPTION_KEY (or it is missing).
 */
cdb_colset *cdb__colring_get(cdb_service *svc, cdb_error *err);
void cdb__colring_put(cdb_service *svc, cdb_colset *s);
/*
 * The current snapshot if it is younger than CDB_COLRING_TTL_MS, else NULL
 * (also before the first load); never loads (the event loops: NULL sends the
 * request to a worker, which reloads). The loops thus never use a snapshot a
 * worker would refuse as too old. The job refresh_encryption_snapshot
 * (data/jobs.c, on a job thread of its own) reloads it every 500 ms
 * (cdb__colring_refresh), so it is fresh unless the database is slower
 * than a second; a failed reload keeps it, as
 * cdb__colring_get does.
 */
cdb_colset *cdb__colring_peek(cdb_service *svc);
/* Reloads now whatever the snapshot's age, on a connection of its own (the refresh job's thread only; a pooled one while the server refuses it), as cdb__colring_get does when it is stale. */
cdb_colset *cdb__colring_refresh(cdb_service *svc, cdb_error *err);
/* The column of s, or NULL. */
const cdb_enccol *cdb__colset_find(const cdb_colset *s, const char *table, const char *column);
/* Whether any column of table is encrypted. */
bool cdb__colset_has_table(const cdb_colset *s, const char *table);
/* The primary key the encrypted values of table are bound to, or NULL (no encrypted column). */
const char *cdb__colset_pk_of(const cdb_colset *s, const char *table);

#endif
