/*
 * jobs.c - the background thread (jobs.h). Jobs are a table of (name,
 * interval, function, argument) filled by their owners; the thread sleeps
 * on a condvar so cdb_jobs_free() wakes it at once instead of waiting out
 * an interval.
 *
 * Timing is on the monotonic clock throughout, and the thread sleeps until
 * the earliest job is due: a 1 s job runs every second. (It used to sleep a
 * fixed second on the wall clock and compare with the monotonic one; a wake
 * a hair early skipped a tick, so 1 s jobs ran every 2 s, and the loops saw
 * the encrypted columns' snapshot reach its 2 s age: bench/RESULTS.md.)
 */
#include "core/jobs.h"
#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

typedef struct job {
    const char *name;
    int interval_ms;
    int first_ms;                  /* first run this long after cdb_jobs_start */
    cdb_job_fn run;
    void *arg;
    int64_t next_run_ms;
} job;

struct cdb_jobs {
    job table[CDB_JOBS_MAX];
    size_t n;
    pthread_t thread;
    bool running;                  /* the thread exists */
    pthread_mutex_t lock;
    pthread_cond_t wake;           /* signalled by cdb_jobs_free */
    bool stopping;
};

static void *jobs_main(void *arg)
{
    cdb_jobs *jobs = arg;
    pthread_mutex_lock(&jobs->lock);
    while (!jobs->stopping) {
        int64_t due = INT64_MAX;
        for (size_t i = 0; i < jobs->n && !jobs->stopping; i++) {
            job *j = &jobs->table[i];
            int64_t now = cdb_mono_ms();   /* per job: one that ran long does not shift the next */
            if (now >= j->next_run_ms) {
                j->next_run_ms = now + j->interval_ms;
                pthread_mutex_unlock(&jobs->lock);
                cdb_error err;
                cdb_error_init(&err);
                int64_t started_us = cdb_mono_us();
                bool ok = j->run(j->arg, &err) >= 0;
                cdb__metrics_op(CDB_MOP_JOB, j->name, ok, cdb_mono_us() - started_us);
                if (!ok)
                    cdb_log_warn("jobs.failed", "%s: %s: %s", j->name, cdb_err_name(err.code), err.message);
                cdb_error_destroy(&err);
                pthread_mutex_lock(&jobs->lock);
            }
            if (j->next_run_ms < due)
                due = j->next_run_ms;
        }
        if (jobs->stopping || due == INT64_MAX)
            break;
        int64_t wait_ms = due - cdb_mono_ms();
        if (wait_ms <= 0)
            continue;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&jobs->wake, &jobs->lock, &until);
    }
    pthread_mutex_unlock(&jobs->lock);
    return NULL;
}

cdb_jobs *cdb_jobs_new(void)
{
    cdb_jobs *jobs = calloc(1, sizeof *jobs);
    if (!jobs)
        return NULL;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);   /* the clock cdb_mono_ms reads */
    pthread_mutex_init(&jobs->lock, NULL);
    pthread_cond_init(&jobs->wake, &attr);
    pthread_condattr_destroy(&attr);
    return jobs;
}

int cdb_jobs_add_ms(cdb_jobs *jobs, const char *name, int interval_ms, int first_ms, cdb_job_fn fn, void *arg)
{
    if (!jobs || jobs->running || jobs->n == CDB_JOBS_MAX || interval_ms < 1 || first_ms < 0)
        return -1;
    jobs->table[jobs->n++] = (job){.name = name, .interval_ms = interval_ms, .first_ms = first_ms,
                                   .run = fn, .arg = arg};
    return 0;
}

int cdb_jobs_add(cdb_jobs *jobs, const char *name, int interval_s, cdb_job_fn fn, void *arg)
{
    /* first runs a little after start, not in the middle of it */
    if (interval_s < 1 || interval_s > INT_MAX / 1000)
        return -1;
    return cdb_jobs_add_ms(jobs, name, interval_s * 1000, CDB_JOBS_FIRST_MS, fn, arg);
}

int cdb_jobs_start(cdb_jobs *jobs)
{
    for (size_t i = 0; i < jobs->n; i++)
        jobs->table[i].next_run_ms = cdb_mono_ms() + jobs->table[i].first_ms;
    if (pthread_create(&jobs->thread, NULL, jobs_main, jobs) != 0)
        return -1;
    jobs->running = true;
    return 0;
}

void cdb_jobs_free(cdb_jobs *jobs)
{
    if (!jobs)
        return;
    if (jobs->running) {
        pthread_mutex_lock(&jobs->lock);
        jobs->stopping = true;
        pthread_cond_signal(&jobs->wake);
        pthread_mutex_unlock(&jobs->lock);
        pthread_join(jobs->thread, NULL);
    }
    pthread_mutex_destroy(&jobs->lock);
    pthread_cond_destroy(&jobs->wake);
    free(jobs);
}
