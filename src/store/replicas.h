/*
 * replicas.h - the read replicas of DATABASE_READ_URLS: one pool per
 * replica, each replica's sampled state (up, lagging, down; replay LSN and
 * lag) and the choice of one for a read.
 *
 * A sampler thread asks every replica, each DB_REPLICA_SAMPLE_MS, how far
 * it has replayed, and the primary how far it has written; a replica that
 * does not answer, is not a standby, or is further behind than
 * DB_REPLICA_MAX_LAG leaves the rotation and the same sampler brings it
 * back. Reads never wait for a sample: they read the last one. Every
 * function is thread-safe.
 */
#ifndef COREDB_STORE_REPLICAS_H
#define COREDB_STORE_REPLICAS_H

#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "store/pool.h"

typedef struct cdb_replicas cdb_replicas;

typedef enum cdb_replica_state {
    CDB_REPLICA_UNKNOWN,           /* not sampled yet: out of rotation */
    CDB_REPLICA_UP,                /* in rotation */
    CDB_REPLICA_LAGGING,           /* answers, but too far behind: out of rotation */
    CDB_REPLICA_DOWN,              /* unreachable or not a standby: out of rotation */
} cdb_replica_state;

typedef struct cdb_replicas_options {
    const char *urls;              /* DATABASE_READ_URLS, normalized, comma-separated */
    cdb_pool_options pool;         /* per replica; conninfo is ignored (each gets its URL) */
    cdb_pool *primary;             /* where pg_current_wal_lsn() is sampled; not owned */
    int max_lag_s;                 /* DB_REPLICA_MAX_LAG */
    int sample_ms;                 /* DB_REPLICA_SAMPLE_MS */
} cdb_replicas_options;

typedef struct cdb_replica_info {
    cdb_replica_state state;
    char label[128];               /* host:port, never the URL (it may hold a password) */
    const char *reason;            /* why it is out of rotation, static text; NULL when up */
    uint64_t replay_lsn;           /* last sampled pg_last_wal_replay_lsn(), 0 = unknown */
    uint64_t lag_bytes;
    double lag_seconds;
    int64_t sampled_ms_ago;        /* -1 = never sampled */
} cdb_replica_info;

typedef struct cdb_replicas_counts {
    uint64_t reads_primary;        /* routed reads served by the primary */
    uint64_t reads_replica;        /* routed reads served by a replica */
    uint64_t ryw_primary;          /* sent to the primary because every replica in rotation was behind the caller */
    uint64_t replica_failures;     /* reads a replica failed and the primary answered */
} cdb_replicas_counts;

/*
 * Opens one pool per URL (lazily: a replica that is down does not fail
 * this) and starts the sampler. NULL on invalid options or out of memory.
 */
cdb_replicas *cdb_replicas_new(const cdb_replicas_options *opt, cdb_error *err);
/* Stops the sampler and closes the pools; no replica connection may be in use. */
void cdb_replicas_free(cdb_replicas *r);

int cdb_replicas_count(const cdb_replicas *r);
cdb_pool *cdb_replicas_pool(cdb_replicas *r, int i);

/*
 * The replica a read whose caller last committed at min_lsn (0: never
 * wrote) should use, round robin over the replicas in rotation whose
 * sampled replay LSN has reached min_lsn; -1 = the primary. *behind (may be
 * NULL) says a replica was in rotation but behind min_lsn. *fresh (may be
 * NULL) says the chosen replica had also replayed fresh_lsn.
 */
int cdb_replicas_pick(cdb_replicas *r, uint64_t min_lsn, uint64_t fresh_lsn, bool *behind, bool *fresh);
/* True when at least one replica is in rotation (a caller LSN is worth fetching). */
bool cdb_replicas_any_up(cdb_replicas *r);
/* A read failed on replica i for want of a connection: out of rotation until sampled back. */
void cdb_replicas_report_failure(cdb_replicas *r, int i);
/* Counts a routed read (replica = -1: the primary); ryw: because of the caller's LSN. */
void cdb_replicas_count_read(cdb_replicas *r, int replica, bool ryw, bool failed_over);

void cdb_replicas_info(cdb_replicas *r, int i, cdb_replica_info *out);
void cdb_replicas_get_counts(cdb_replicas *r, cdb_replicas_counts *out);
const char *cdb_replica_state_name(cdb_replica_state s);

/* "16/B374D848" <-> 0x16B374D848; 0 on a malformed text. buf holds 20 bytes. */
uint64_t cdb_lsn_parse(const char *text);
void cdb_lsn_format(uint64_t lsn, char buf[20]);

#endif
