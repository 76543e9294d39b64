/*
 * fsutil.h - filesystem and string helpers of the embedded mode. Results
 * are malloc'd (caller frees); NULL when out of memory.
 */
#ifndef COREDB_CORE_FSUTIL_H
#define COREDB_CORE_FSUTIL_H

#include <sys/types.h>

char *cdb_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* dir made absolute against the working directory ("./var" -> "/cwd/var"). */
char *cdb_absolute_dir(const char *dir);
/* Creates path and missing parents; the ones it creates get exactly mode. -1 + errno on failure. */
int cdb_mkdir_p(const char *path, mode_t mode);

#endif
