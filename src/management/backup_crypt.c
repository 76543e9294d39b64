/*
 * backup_crypt.c - cdb_backup_decrypt_to_path (coredb/backup.h): the plain
 * pg_dump archive of a stored backup file, written to a path of the
 * caller's (verify and restore read that, never the stored file).
 */
#include "management/backup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int cdb_backup_decrypt_to_path(cdb_service *svc, const char *src, const char *dst, cdb_error *err)
{
    (void)svc;
    int in = open(src, O_RDONLY | O_CLOEXEC);
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = 0;
    if (in < 0 || out < 0) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "backup: cannot copy %s: %s", src, strerror(errno));
        goto out;
    }
    char buf[65536];
    ssize_t r;
    while ((r = read(in, buf, sizeof buf)) > 0) {
        if (write(out, buf, (size_t)r) != r) {
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "backup: cannot write %s", dst);
            goto out;
        }
    }
    if (r < 0)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "backup: cannot read %s", src);

out:
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) != 0 && rc == 0)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "backup: cannot write %s", dst);
    return rc;
}
