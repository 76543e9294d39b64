/*
 * backup_files.c - the files of BACKUP_DIR (backup_internal.h): names,
 * paths, checksums and manifests. A name is checked against the one
 * pattern cdb_backup_create produces before any path is built from it, so
 * nothing a caller sends ('/', "..") can reach outside BACKUP_DIR.
 */
#include "management/backup_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "coredb/log.h"
#include "store/pg.h"

#define PREFIX "coredb-"
#define NAME_LEN (sizeof PREFIX - 1 + 8 + 1 + 9 + 1)

bool cdb__backup_name_ok(const char *name)
{
    if (!name || strlen(name) != NAME_LEN || strncmp(name, PREFIX, sizeof PREFIX - 1) != 0)
        return false;
    const char *p = name + sizeof PREFIX - 1;
    for (int i = 0; i < 18; i++, p++) {
        if (i == 8) {
            if (*p != 'T')
                return false;
        } else if (*p < '0' || *p > '9') {
            return false;
        }
    }
    return *p == 'Z';
}

char *cdb__backup_path(const cdb_service *svc, const char *name, const char *suffix)
{
    return cdb_xasprintf("%s/%s%s", svc->cfg->backup_dir, name, suffix);
}

int cdb__backup_dir(const cdb_service *svc, cdb_error *err)
{
    if (cdb_mkdir_p(svc->cfg->backup_dir, 0700) < 0)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "BACKUP_DIR %s: %s", svc->cfg->backup_dir,
                             strerror(errno));
    return 0;
}

int cdb__backup_sha256(const char *path, char hex[65], long long *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    unsigned char buf[65536];
    long long total = 0;
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) {
        crypto_hash_sha256_update(&st, buf, (unsigned long long)r);
        total += r;
    }
    int saved = errno;
    close(fd);
    if (r < 0) {
        errno = saved;
        return -1;
    }
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, digest);
    sodium_bin2hex(hex, 65, digest, sizeof digest);
    *size = total;
    return 0;
}

int cdb__backup_manifest(const cdb_service *svc, const char *name, json_t **out, cdb_error *err)
{
    *out = NULL;
    if (!cdb__backup_name_ok(name))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "name",
                                    "backup name: coredb-YYYYMMDDTHHMMSSmmmZ as listed");
    char *path = cdb__backup_path(svc, name, ".json");
    if (!path)
        return cdb_error_oom(err);
    json_error_t jerr;
    json_t *m = json_load_file(path, 0, &jerr);
    bool exists = access(path, F_OK) == 0;
    free(path);
    /* A manifest must name its own file: the retention cleanup builds the
     * paths it unlinks from this member, so any other text (found by
     * fuzz/backup_manifest.c: "../x", another backup, none) is refused. */
    const char *own = json_string_value(json_object_get(m, "name"));
    if (!m || !json_is_object(m) || !own || strcmp(own, name) != 0) {
        json_decref(m);
        if (!exists)
            return cdb_error_set(err, CDB_ERR_NOT_FOUND, "No backup named %s", name);
        return cdb_error_set(err, CDB_ERR_BACKUP_INVALID, "The manifest of %s is unreadable", name);
    }
    *out = m;
    return 0;
}

static int by_name_desc(const void *a, const void *b)
{
    return strcmp(*(char *const *)b, *(char *const *)a);
}

int cdb__backup_manifests(const cdb_service *svc, json_t **out, cdb_error *err)
{
    *out = NULL;
    json_t *list = json_array();
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    if (!list)
        return cdb_error_oom(err);
    DIR *d = opendir(svc->cfg->backup_dir);
    if (!d) {
        if (errno != ENOENT)
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "BACKUP_DIR %s: %s", svc->cfg->backup_dir,
                               strerror(errno));
        goto out;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len != NAME_LEN + 5 || strcmp(de->d_name + NAME_LEN, ".json") != 0)
            continue;
        char *name = strndup(de->d_name, NAME_LEN);
        if (!name || !cdb__backup_name_ok(name)) {
            free(name);
            continue;
        }
        if (n == cap) {
            char **grown = realloc(names, (cap = cap ? cap * 2 : 16) * sizeof *grown);
            if (!grown) {
                free(name);
                closedir(d);
                rc = cdb_error_oom(err);
                goto out;
            }
            names = grown;
        }
        names[n++] = name;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof *names, by_name_desc);
    for (size_t i = 0; i < n; i++) {
        json_t *m = NULL;
        cdb_error ignore;
        cdb_error_init(&ignore);
        if (cdb__backup_manifest(svc, names[i], &m, &ignore) == 0)
            json_array_append_new(list, m);
        cdb_error_destroy(&ignore);
    }

out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc < 0)
        json_decref(list);
    else
        *out = list;
    return rc;
}

bool cdb__backup_intact(const cdb_service *svc, json_t *manifest)
{
    const char *name = json_string_value(json_object_get(manifest, "name"));
    const char *sha = json_string_value(json_object_get(manifest, "sha256"));
    if (!cdb__backup_name_ok(name) || !sha)
        return false;
    char *path = cdb__backup_path(svc, name, ".dump");
    char hex[65];
    long long size = 0;
    bool ok = path && cdb__backup_sha256(path, hex, &size) == 0 && strcmp(hex, sha) == 0 &&
              size == json_integer_value(json_object_get(manifest, "size_bytes"));
    free(path);
    return ok;
}

static const char TABLES_SQL[] =
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname || '.' || c.relname"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'"
    " ORDER BY 2";

/* Every table's row count, in the transaction's snapshot. */
int cdb__backup_count_rows(PGconn *conn, json_t *tables, cdb_error *err)
{
    PGresult *list = NULL;
    int rc = cdb_pg_exec(conn, TABLES_SQL, 0, NULL, &list, err);
    for (int i = 0; rc == 0 && i < PQntuples(list); i++) {
        char *sql = cdb_xasprintf("SELECT count(*) FROM %s", PQgetvalue(list, i, 0));
        PGresult *res = NULL;
        if (!sql)
            rc = cdb_error_oom(err);
        else if ((rc = cdb_pg_exec(conn, sql, 0, NULL, &res, err)) == 0)
            json_object_set_new(tables, PQgetvalue(list, i, 1),
                                json_integer(strtoll(PQgetvalue(res, 0, 0), NULL, 10)));
        PQclear(res);
        free(sql);
    }
    PQclear(list);
    return rc;
}

