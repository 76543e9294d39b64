/*
 * log.c - JSON-lines logger on stderr.
 *
 * The level is a process-wide atomic so the hot path (a disabled debug line)
 * costs one load. Each line is serialized first and written with a single
 * write(2), which keeps lines whole across threads without a lock.
 */
#include "coredb/log.h"
#include "core/timeutil.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static _Atomic int log_level = CDB_LOG_INFO;

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
    ssize_t unused = write(STDERR_FILENO, text, n + 1);
    (void)unused;
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
