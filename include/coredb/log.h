/*
 * log.h - structured logging: one JSON object per line on stderr.
 *
 * Thread-safe; a line is written with one write so lines from different
 * threads never interleave. Callers must never pass secrets (passwords,
 * tokens, keys, connection strings with passwords) as fields or messages.
 */
#ifndef COREDB_LOG_H
#define COREDB_LOG_H

#include <jansson.h>
#include <stdbool.h>

typedef enum cdb_log_level {
    CDB_LOG_DEBUG = 0,
    CDB_LOG_INFO,
    CDB_LOG_WARN,
    CDB_LOG_ERROR,
    CDB_LOG_OFF,     /* for cdb_log_set_level only: nothing is logged */
} cdb_log_level;

/* Parses "debug|info|warn|warning|error" (case-insensitive); -1 if unknown. */
int cdb_log_level_parse(const char *s);
const char *cdb_log_level_name(cdb_log_level level);

void cdb_log_set_level(cdb_log_level level);
bool cdb_log_enabled(cdb_log_level level);

/* {"ts","level","event","msg"}. */
void cdb_log(cdb_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* {"ts","level","event", ...fields}; steals the reference to fields. */
void cdb_log_fields(cdb_log_level level, const char *event, json_t *fields);

#define cdb_log_debug(ev, ...) cdb_log(CDB_LOG_DEBUG, ev, __VA_ARGS__)
#define cdb_log_info(ev, ...)  cdb_log(CDB_LOG_INFO, ev, __VA_ARGS__)
#define cdb_log_warn(ev, ...)  cdb_log(CDB_LOG_WARN, ev, __VA_ARGS__)
#define cdb_log_error(ev, ...) cdb_log(CDB_LOG_ERROR, ev, __VA_ARGS__)

#endif
