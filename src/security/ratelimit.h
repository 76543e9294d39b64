/*
 * ratelimit.h - request quotas (GCRA) and login-failure counters.
 *
 * With Redis, state is shared by every coredb instance: one atomic round
 * trip per check (a Lua script run with EVALSHA). Without Redis, or while it
 * is down, an in-process table does the same job for this instance alone.
 * Thread-safe.
 */
#ifndef COREDB_RATELIMIT_H
#define COREDB_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "store/redis.h"

typedef struct cdb_ratelimit cdb_ratelimit;

typedef struct cdb_rl_result {
    bool allowed;
    int limit;                     /* the quota (requests per second, or per window) */
    int remaining;                 /* requests left right now */
    double retry_after_s;          /* when refused: wait this long */
    double reset_after_s;          /* until the bucket is full / the window ends */
} cdb_rl_result;

/*
 * The pure GCRA step (exposed for unit tests). tat_us is the stored
 * theoretical arrival time (0 = none), updated in place when allowed.
 * rate per second, burst = requests allowed at once (>= 1).
 */
void cdb_gcra_step(int64_t now_us, int64_t *tat_us, int rate, int burst, cdb_rl_result *out);

/* redis may be NULL. Does not own redis. */
cdb_ratelimit *cdb_ratelimit_new(cdb_redis *redis);
void cdb_ratelimit_free(cdb_ratelimit *rl);

/*
 * One request against key's quota of `rate` per second with burst `burst`.
 * Never fails: if Redis is down it falls back to the in-process table.
 */
void cdb_ratelimit_check(cdb_ratelimit *rl, const char *key, int rate, int burst,
                         cdb_rl_result *out);

/*
 * The same check sent without blocking (the event loops' asynchronous
 * Redis: http/loop_admit.c). _command fills cmd with the EVALSHA to send
 * for key; false when there is no Redis, no limit or the script is not
 * loaded yet (then use cdb_ratelimit_check, which loads it). The command
 * points into cmd and key: keep both until it is sent. _reply reads what
 * Redis answered (NULL: no answer); false when it cannot be used (an error
 * reply such as NOSCRIPT, which ran nothing): then cdb_ratelimit_check.
 */
typedef struct cdb_rl_command {
    const char *argv[6];
    int argc;
    char sha[41], interval[24], burst[16];
} cdb_rl_command;
bool cdb_ratelimit_gcra_command(cdb_ratelimit *rl, const char *key, int rate, int burst,
                                cdb_rl_command *cmd);
bool cdb_ratelimit_gcra_reply(cdb_ratelimit *rl, const redisReply *reply, int rate, cdb_rl_result *out);

/*
 * Fixed-window counters (login failures). _count reads the count of the
 * current window; _hit adds one and returns the new count; _clear resets.
 * *reset_after_s (may be NULL) gets the seconds left in the window.
 */
int64_t cdb_ratelimit_window_count(cdb_ratelimit *rl, const char *key, int window_s,
                                   double *reset_after_s);
int64_t cdb_ratelimit_window_hit(cdb_ratelimit *rl, const char *key, int window_s);
void    cdb_ratelimit_window_clear(cdb_ratelimit *rl, const char *key);

#endif
