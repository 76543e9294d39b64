/*
 * redis_events.c - hiredis's asynchronous context on a libevent loop.
 *
 * hiredis 0.14's own adapter registers one-shot events: every reply costs
 * an epoll_ctl to stop watching the socket when the read event fires and
 * one to watch it again when hiredis asks for the next read, and every
 * command an epoll_ctl to watch for writability, a turn of the loop to learn
 * the socket is writable (it almost always is) and an epoll_ctl to stop.
 * This adapter keeps one persistent read event while hiredis wants to read,
 * and writes a command on a deferred callback of the same turn of the loop
 * (event_active: no system call), so the commands of one turn go out in one
 * write. The write event is watched only while a write did not finish, and
 * while the connection is being made (hiredis learns it is made from the
 * first writable event).
 */
#include "store/redis_events.h"

#include <stdbool.h>
#include <stdlib.h>

typedef struct redis_events {
    redisAsyncContext *context;
    struct event *read;         /* EV_READ | EV_PERSIST */
    struct event *write;        /* EV_WRITE, one-shot: a write left unfinished, or the connect */
    struct event *flush;        /* activated by hand: the write on this turn of the loop */
} redis_events;

/*
 * The attachment whose flush is running now (loop threads only, so one per
 * thread): hiredis asking to write again from inside that flush means the
 * socket did not take everything, so the next write waits for the write
 * event. Compared, never dereferenced: the flush may free the attachment.
 */
static _Thread_local const redis_events *flushing;

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    redis_events *e = arg;
    (void)fd;
    (void)what;
    redisAsyncHandleRead(e->context);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    redis_events *e = arg;
    (void)fd;
    (void)what;
    flushing = e;
    redisAsyncHandleWrite(e->context);
    flushing = NULL;
}

/* libevent touches epoll only when the event is not added yet (add) or is added (del). */
static void add_read(void *privdata)
{
    event_add(((redis_events *)privdata)->read, NULL);
}

static void del_read(void *privdata)
{
    event_del(((redis_events *)privdata)->read);
}

static void add_write(void *privdata)
{
    redis_events *e = privdata;
    if (flushing == e || !(e->context->c.flags & REDIS_CONNECTED))
        event_add(e->write, NULL);
    else
        event_active(e->flush, EV_WRITE, 1);   /* once per turn however many commands */
}

static void del_write(void *privdata)
{
    redis_events *e = privdata;
    event_del(e->write);
    event_del(e->flush);
}

void cdb__redis_events_cleanup(void *privdata)
{
    redis_events *e = privdata;
    if (e->read)
        event_free(e->read);
    if (e->write)
        event_free(e->write);
    if (e->flush)
        event_free(e->flush);
    free(e);
}

redisAsyncContext *cdb__redis_events_context(void *privdata)
{
    return ((redis_events *)privdata)->context;
}

int cdb__redis_events_attach(redisAsyncContext *ac, struct event_base *base)
{
    redis_events *e = calloc(1, sizeof *e);
    if (!e || ac->ev.data)
        goto fail;
    e->context = ac;
    e->read = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, on_read, e);
    e->write = event_new(base, ac->c.fd, EV_WRITE, on_write, e);
    e->flush = event_new(base, -1, 0, on_write, e);
    if (!e->read || !e->write || !e->flush)
        goto fail;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cdb__redis_events_cleanup;
    ac->ev.data = e;
    /* as hiredis's adapter: read, and the first writable event completes the connect */
    add_read(e);
    event_add(e->write, NULL);
    return 0;
fail:
    if (e)
        cdb__redis_events_cleanup(e);
    return -1;
}
