/*
 * workq.h - a fixed pool of worker threads running queued jobs in FIFO order.
 *
 * This is where everything that may block (libpq, disk, argon2id) runs, so
 * the HTTP event loops never do. A job is a function and an argument; it
 * reports back to whoever submitted it by its own means (the HTTP layer
 * posts a completion to the request's loop).
 */
#ifndef COREDB_WORKQ_H
#define COREDB_WORKQ_H

#include <stddef.h>

typedef struct cdb_workq cdb_workq;
typedef void (*cdb_work_fn)(void *arg);

/* Starts `threads` workers. NULL on failure. */
cdb_workq *cdb_workq_new(int threads);
/* Queues a job. 0, or -1 when the queue is shutting down. Thread-safe. */
int cdb_workq_submit(cdb_workq *q, cdb_work_fn fn, void *arg);
/* Jobs queued but not yet started (for metrics). */
size_t cdb_workq_backlog(cdb_workq *q);
/* Runs every queued job, then joins and frees the workers. */
void cdb_workq_free(cdb_workq *q);

#endif
