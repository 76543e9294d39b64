/*
 * redis_events.h - hiredis's asynchronous context on a libevent loop: the
 * adapter redis_async.c attaches in place of hiredis's own
 * (adapters/libevent.h), which costs four epoll_ctl calls and an extra
 * turn of the loop for every command (see redis_events.c).
 */
#ifndef COREDB_STORE_REDIS_EVENTS_H
#define COREDB_STORE_REDIS_EVENTS_H

#include <event2/event.h>
#include <hiredis/async.h>

/*
 * Attaches ac to base (loop thread only, as every call on ac). The adapter's
 * memory is released by hiredis through ac->ev.cleanup; a caller that wraps
 * that hook calls cdb__redis_events_cleanup(ac->ev.data) from its wrapper.
 * -1 out of memory (nothing attached; the caller frees ac).
 */
int cdb__redis_events_attach(redisAsyncContext *ac, struct event_base *base);

/* The context an attachment (ac->ev.data) belongs to. */
redisAsyncContext *cdb__redis_events_context(void *privdata);

/* The adapter's cleanup hook: frees its events. */
void cdb__redis_events_cleanup(void *privdata);

#endif
