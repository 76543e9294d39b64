/*
 * timeutil.c - monotonic and wall clocks, ISO 8601 formatting.
 */
#include "core/timeutil.h"

#include <time.h>

int64_t cdb_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t cdb_mono_ms(void)
{
    return cdb_mono_us() / 1000;
}

int64_t cdb_wall_s(void)
{
    return (int64_t)time(NULL);
}

void cdb_iso_time(int64_t epoch_s, char *buf, size_t len)
{
    time_t t = (time_t)epoch_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void cdb_iso_now(char *buf, size_t len)
{
    cdb_iso_time(cdb_wall_s(), buf, len);
}
