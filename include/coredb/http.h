/*
 * http.h - the HTTP/JSON front end (API.md) over a cdb_service.
 *
 * N event-loop threads (libevent evhttp) share one listening socket. Loops
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
 * Serves until SIGTERM or SIGINT, then stops accepting, lets in-flight
 * requests finish for up to SHUTDOWN_GRACE_MS and returns 0. Must be called
 * from the main thread; blocks those signals in every thread it starts.
 */
int cdb_http_server_run(cdb_http_server *srv);

void cdb_http_server_free(cdb_http_server *srv);

#endif
