/*
 * fsutil.c - small filesystem and string helpers of the embedded mode
 * (fsutil.h): the cluster (store/devdb.c) and the development secrets
 * (store/devsecrets.c) both lay out ./var with them.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"

char *cdb_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

/* var_dir made absolute: the config's default is the relative ./var. */
char *cdb_absolute_dir(const char *dir)
{
    if (dir[0] == '/')
        return strdup(dir);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    if (strncmp(dir, "./", 2) == 0)
        dir += 2;
    return cdb_xasprintf("%s/%s", cwd, dir);
}

/* Creates path and missing parents; the ones it creates get exactly mode. */
int cdb_mkdir_p(const char *path, mode_t mode)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, mode) == 0) {
            if (chmod(buf, mode) < 0)      /* undo the umask */
                return -1;
        } else if (errno != EEXIST) {
            return -1;
        } else {
            /* a file where the directory should be (found by tests/chaos: a
             * BACKUP_DIR that is a file passed here and failed later, in pg_dump) */
            struct stat st;
            if (stat(buf, &st) < 0)
                return -1;
            if (!S_ISDIR(st.st_mode)) {
                errno = ENOTDIR;
                return -1;
            }
        }
        *p = saved;
        if (saved == '\0')
            return 0;
    }
}

