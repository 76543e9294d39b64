/*
 * workq.c - fixed pool of worker threads over one FIFO job list.
 *
 * One mutex and one condvar guard the list; jobs are small heap nodes. A
 * job never learns which worker runs it. Shutdown sets `stopping`, wakes
 * everybody, and workers exit once the list is empty, so every job that
 * was accepted runs (callers rely on that to answer every request).
 */
#include "core/workq.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct workq_job {
    cdb_work_fn fn;
    void *arg;
    struct workq_job *next;
} workq_job;

struct cdb_workq {
    pthread_mutex_t lock;
    pthread_cond_t  ready;      /* signalled when a job is queued or on stop */
    workq_job *head, *tail;     /* queued jobs, oldest first */
    size_t backlog;
    bool stopping;
    int nthreads;
    pthread_t *threads;
};

static void *workq_main(void *arg)
{
    cdb_workq *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (!q->head && !q->stopping)
            pthread_cond_wait(&q->ready, &q->lock);
        workq_job *job = q->head;
        if (!job)
            break; /* stopping and drained */
        q->head = job->next;
        if (!q->head)
            q->tail = NULL;
        q->backlog--;
        pthread_mutex_unlock(&q->lock);
        job->fn(job->arg);
        free(job);
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

cdb_workq *cdb_workq_new(int threads)
{
    if (threads < 1)
        threads = 1;
    cdb_workq *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->threads = calloc((size_t)threads, sizeof *q->threads);
    if (!q->threads) {
        free(q);
        return NULL;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->ready, NULL);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&q->threads[i], NULL, workq_main, q) != 0)
            break;
        q->nthreads++;
    }
    if (q->nthreads == 0) {
        cdb_workq_free(q);
        return NULL;
    }
    return q;
}

int cdb_workq_submit(cdb_workq *q, cdb_work_fn fn, void *arg)
{
    workq_job *job = malloc(sizeof *job);
    if (!job)
        return -1;
    job->fn = fn;
    job->arg = arg;
    job->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->stopping) {
        pthread_mutex_unlock(&q->lock);
        free(job);
        return -1;
    }
    if (q->tail)
        q->tail->next = job;
    else
        q->head = job;
    q->tail = job;
    q->backlog++;
    pthread_cond_signal(&q->ready);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

size_t cdb_workq_backlog(cdb_workq *q)
{
    pthread_mutex_lock(&q->lock);
    size_t n = q->backlog;
    pthread_mutex_unlock(&q->lock);
    return n;
}

void cdb_workq_free(cdb_workq *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->lock);
    q->stopping = true;
    pthread_cond_broadcast(&q->ready);
    pthread_mutex_unlock(&q->lock);
    for (int i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->ready);
    free(q->threads);
    free(q);
}
