/*
 * timeutil.h - clocks and timestamps used across the library.
 */
#ifndef COREDB_TIMEUTIL_H
#define COREDB_TIMEUTIL_H

#include <stdint.h>
#include <stddef.h>

/* Monotonic milliseconds / microseconds, for durations and deadlines. */
int64_t cdb_mono_ms(void);
int64_t cdb_mono_us(void);
/* Wall-clock seconds since the epoch. */
int64_t cdb_wall_s(void);
/* UTC ISO 8601 of the current time, "2024-01-15T10:30:00Z"; buf >= 32. */
void cdb_iso_now(char *buf, size_t len);
/* UTC ISO 8601 of an epoch second. */
void cdb_iso_time(int64_t epoch_s, char *buf, size_t len);

#endif
