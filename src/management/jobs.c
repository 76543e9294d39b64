/*
 * jobs.c - the background thread (session reaping, the Redis outbox, expiry
 * of the transaction ledger). Jobs are a static table of (name,
 * interval, function); the thread sleeps on a condvar so cdb_jobs_stop()
 * wakes it at once instead of waiting out an interval.
 */
#include "coredb/jobs.h"
#include "coredb/auth.h"
#include "coredb/data.h"
#include "coredb/log.h"
#include "coredb/timeutil.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

typedef int (*job_fn)(cdb_service *svc, cdb_error *err);

static int reap_sessions(cdb_service *svc, cdb_error *err)
{
    int reaped = 0;
    int rc = cdb_auth_reap_sessions(svc, &reaped, err);
    if (rc == 0 && reaped > 0)
        cdb_log_info("jobs.sessions_reaped", "ended %d idle or expired sessions", reaped);
    return rc;
}

/* Redis operations of committed transactions that Redis did not take yet. */
static int flush_outbox(cdb_service *svc, cdb_error *err)
{
    int applied = 0, pending = 0;
    int rc = cdb_data_outbox_flush(svc, &applied, &pending, err);
    if (rc == 0 && applied > 0)
        cdb_log_info("jobs.outbox_flushed", "applied %d pending Redis operations, %d left",
                     applied, pending);
    return rc;
}

/* Ledger rows past 24 h: their keys have expired, their outcomes are no longer answered. */
static int expire_ledger(cdb_service *svc, cdb_error *err)
{
    int deleted = 0;
    int rc = cdb_data_ledger_expire(svc, &deleted, err);
    if (rc == 0 && deleted > 0)
        cdb_log_info("jobs.ledger_expired", "deleted %d transaction ledger rows older than 24 h", deleted);
    return rc;
}

static const struct {
    const char *name;
    int interval_s;
    job_fn run;
} job_table[] = {
    {"reap_sessions", 60, reap_sessions},
    {"flush_outbox", 1, flush_outbox},
    {"expire_ledger", 60, expire_ledger},
};
#define NJOBS (sizeof job_table / sizeof job_table[0])

struct cdb_jobs {
    cdb_service *svc;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;           /* signalled by cdb_jobs_stop */
    bool stopping;
    int64_t next_run_ms[NJOBS];
};

static void *jobs_main(void *arg)
{
    cdb_jobs *jobs = arg;
    pthread_mutex_lock(&jobs->lock);
    while (!jobs->stopping) {
        int64_t now = cdb_mono_ms();
        for (size_t i = 0; i < NJOBS && !jobs->stopping; i++) {
            if (now < jobs->next_run_ms[i])
                continue;
            jobs->next_run_ms[i] = now + (int64_t)job_table[i].interval_s * 1000;
            pthread_mutex_unlock(&jobs->lock);
            cdb_error err;
            cdb_error_init(&err);
            if (job_table[i].run(jobs->svc, &err) < 0)
                cdb_log_warn("jobs.failed", "%s: %s: %s", job_table[i].name,
                             cdb_err_name(err.code), err.message);
            cdb_error_destroy(&err);
            pthread_mutex_lock(&jobs->lock);
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        if (!jobs->stopping)
            pthread_cond_timedwait(&jobs->wake, &jobs->lock, &until);
    }
    pthread_mutex_unlock(&jobs->lock);
    return NULL;
}

cdb_jobs *cdb_jobs_start(cdb_service *svc)
{
    cdb_jobs *jobs = calloc(1, sizeof *jobs);
    if (!jobs)
        return NULL;
    jobs->svc = svc;
    pthread_mutex_init(&jobs->lock, NULL);
    pthread_cond_init(&jobs->wake, NULL);
    /* first runs a little after start, not in the middle of it */
    for (size_t i = 0; i < NJOBS; i++)
        jobs->next_run_ms[i] = cdb_mono_ms() + 5000;
    if (pthread_create(&jobs->thread, NULL, jobs_main, jobs) != 0) {
        pthread_mutex_destroy(&jobs->lock);
        pthread_cond_destroy(&jobs->wake);
        free(jobs);
        return NULL;
    }
    return jobs;
}

void cdb_jobs_stop(cdb_jobs *jobs)
{
    if (!jobs)
        return;
    pthread_mutex_lock(&jobs->lock);
    jobs->stopping = true;
    pthread_cond_signal(&jobs->wake);
    pthread_mutex_unlock(&jobs->lock);
    pthread_join(jobs->thread, NULL);
    pthread_mutex_destroy(&jobs->lock);
    pthread_cond_destroy(&jobs->wake);
    free(jobs);
}
