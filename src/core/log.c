/*
 * log.c - JSON-lines logger on stderr.
 *
 * The level is a process-wide atomic so the hot path (a disabled debug line)
 * costs one load. Each line is serialized first and written with a single
 * write(2) (up to PIPE_BUF bytes, which a pipe keeps whole across threads
 * without a lock).
 *
 * A destination that stops reading (a log shipper that hangs, a full pipe,
 * a terminal on hold) must not stop the service: a blocking write(2) would
 * hold the thread that logs, and soon every worker and the loops. So a line
 * is written only when poll(2) says stderr takes it within LOG_WAIT_MS;
 * otherwise it is dropped and counted (coredb_log_lines_dropped_total).
 */
#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static _Atomic int log_level = CDB_LOG_INFO;

/* How long a line waits for a destination that does not take it at once. */
#define LOG_WAIT_MS 50

/* Set by a drop, cleared by a line that goes through: while the destination is stalled, lines do
   not wait for it at all (one wait per stall, not one per line). */
static atomic_bool log_stalled;

/* Writes buf to stderr in pieces a writable pipe takes without blocking; false when it was dropped. */
static bool write_line(const char *buf, size_t len)
{
    struct pollfd p = {.fd = STDERR_FILENO, .events = POLLOUT};
    size_t off = 0;
    while (off < len) {
        int ready;
        do
            ready = poll(&p, 1, atomic_load(&log_stalled) ? 0 : LOG_WAIT_MS);
        while (ready < 0 && errno == EINTR);
        ssize_t w = -1;
        if (ready == 1 && (p.revents & POLLOUT)) {
            size_t piece = len - off < PIPE_BUF ? len - off : PIPE_BUF;
            w = write(STDERR_FILENO, buf + off, piece);
        }
        if (w <= 0) {
            atomic_store(&log_stalled, true); /* a longer line than PIPE_BUF may then end cut short */
            return false;
        }
        off += (size_t)w;
    }
    atomic_store(&log_stalled, false);
    return true;
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int cdb_log_level_parse(const char *s)
{
    if (!s)
        return -1;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return CDB_LOG_WARN;
    return -1;
}

const char *cdb_log_level_name(cdb_log_level level)
{
    return (level >= CDB_LOG_DEBUG && level <= CDB_LOG_ERROR) ? level_names[level] : "info";
}

void cdb_log_set_level(cdb_log_level level)
{
    atomic_store(&log_level, (int)level);
}

bool cdb_log_enabled(cdb_log_level level)
{
    return (int)level >= atomic_load(&log_level);
}

void cdb_log_fields(cdb_log_level level, const char *event, json_t *fields)
{
    if (!cdb_log_enabled(level)) {
        json_decref(fields);
        return;
    }
    char ts[32];
    cdb_iso_now(ts, sizeof ts);
    json_t *line = json_object();
    json_object_set_new(line, "ts", json_string(ts));
    json_object_set_new(line, "level", json_string(cdb_log_level_name(level)));
    json_object_set_new(line, "event", json_string(event));
    if (fields)
        json_object_update(line, fields);
    json_decref(fields);
    /* 15 significant digits: a value rounded to 0.564 prints as 0.564, not 0.56399999999999995 */
    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(line);
    if (!text)
        return;
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL; we write n + 1 bytes and never read it as a string */
    if (!write_line(text, n + 1))
        cdb__metrics_inc(CDB_M_LOG_DROPPED);
    free(text);
}

void cdb_log(cdb_log_level level, const char *event, const char *fmt, ...)
{
    if (!cdb_log_enabled(level))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *fields = json_object();
    json_object_set_new(fields, "msg", json_string(msg));
    cdb_log_fields(level, event, fields);
}
