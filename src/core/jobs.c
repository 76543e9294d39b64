/*
 * jobs.c - the background thread (jobs.h). Jobs are a table of (name,
 * interval, function, argument) filled by their owners; the thread sleeps
 * on a condvar so cdb_jobs_free() wakes it at once instead of waiting out
 * an interval.
 */
#include "core/jobs.h"
#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

typedef struct job {
    const char *name;
    int interval_s;
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
        int64_t now = cdb_mono_ms();
        for (size_t i = 0; i < jobs->n && !jobs->stopping; i++) {
            job *j = &jobs->table[i];
            if (now < j->next_run_ms)
                continue;
            j->next_run_ms = now + (int64_t)j->interval_s * 1000;
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
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        if (!jobs->stopping)
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
    pthread_mutex_init(&jobs->lock, NULL);
    pthread_cond_init(&jobs->wake, NULL);
    return jobs;
}

int cdb_jobs_add(cdb_jobs *jobs, const char *name, int interval_s, cdb_job_fn fn, void *arg)
{
    if (!jobs || jobs->running || jobs->n == CDB_JOBS_MAX)
        return -1;
    jobs->table[jobs->n++] = (job){.name = name, .interval_s = interval_s, .run = fn, .arg = arg};
    return 0;
}

int cdb_jobs_start(cdb_jobs *jobs)
{
    /* first runs a little after start, not in the middle of it */
    for (size_t i = 0; i < jobs->n; i++)
        jobs->table[i].next_run_ms = cdb_mono_ms() + 5000;
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
