/*
 * redis_sentinel.h - finding the Redis master through Redis Sentinel.
 *
 * The pool (redis.c) asks here for the master's address before every new
 * connection, so a failover is followed by the next reconnect. A set is
 * read-only after it is made and may be used from any thread.
 */
#ifndef COREDB_REDIS_SENTINEL_H
#define COREDB_REDIS_SENTINEL_H

#include <stddef.h>

#include "coredb/error.h"

#define CDB_SENTINEL_HOST_MAX 256

typedef struct cdb__sentinel_set cdb__sentinel_set;

/*
 * list: "host:port[,host:port...]" ([v6]:port allowed); master_name as in
 * the sentinels' `sentinel monitor`; password: AUTH to the sentinels, or
 * NULL. All copied. NULL + CONFIG_INVALID on a bad list.
 */
cdb__sentinel_set *cdb__sentinel_set_new(const char *list, const char *master_name,
                                         const char *password, cdb_error *err);
void cdb__sentinel_set_free(cdb__sentinel_set *s);

/*
 * Asks the sentinels in their order (each with timeout_ms to connect and to
 * answer) for the master's address and stops at the first valid answer:
 * 0 with host (CDB_SENTINEL_HOST_MAX bytes) and *port. Otherwise -1 with a
 * log-safe reason in why (never a password, never more than 80 bytes of
 * a sentinel's own text).
 */
int cdb__sentinel_master(const cdb__sentinel_set *s, int timeout_ms, char *host, int *port,
                         char *why, size_t whylen);

const char *cdb__sentinel_master_name(const cdb__sentinel_set *s);
/* The list as given, "host:port,..." (no secret in it). */
const char *cdb__sentinel_list(const cdb__sentinel_set *s);

#endif
