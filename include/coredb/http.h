/*
 * http.h - the HTTP/JSON front end (API.md) over a cdb_service.
 *
 * N event-loop threads (libevent, src/http/conn.c) share one listening socket. Loops
 * parse, negotiate and route; anything that blocks runs on the worker queue
 * and its response is handed back to the loop that owns the connection.
 */
#ifndef COREDB_HTTP_H
#define COREDB_HTTP_H

#include "coredb/error.h"
#include "coredb/service.h"

typedef struct cdb_http_server cdb_http_server;

/* Binds HOST:PORT (fails with a clear message when the port is taken). */
cdb_http_server *cdb_http_server_new(cdb_service *svc, cdb_error *err);

/*
 * Blocks the stop signals of cdb_http_server_run (SIGTERM, SIGINT, and
 * SIGHUP unless it is ignored, as under nohup) in the calling thread.
 * Call it first in main(), before cdb_service_open or anything else that
 * starts a thread: threads inherit the mask, and a stop signal delivered to
 * a thread that does not block it kills the process at once, without
 * closing the service (an embedded PostgreSQL would be left running until
 * the next coredb on the same var_dir adopts it). Returns 0 or -1.
 */
int cdb_http_block_stop_signals(void);

/*
 * Serves until a stop signal, then stops accepting, lets in-flight
 * requests finish for up to SHUTDOWN_GRACE_MS (another stop signal ends
 * that wait at once) and returns 0; the caller then frees the server and
 * closes the service. Call from the main thread, with the stop signals
 * blocked in every thread (cdb_http_block_stop_signals); signals that
 * arrive after it returns stay blocked, so the caller's cleanup runs.
 */
int cdb_http_server_run(cdb_http_server *srv);

void cdb_http_server_free(cdb_http_server *srv);

#endif
