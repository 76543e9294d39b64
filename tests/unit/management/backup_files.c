/*
 * management/backup_files.c - the manifest reader of BACKUP_DIR
 * (cdb__backup_manifest, cdb__backup_manifests) on a temporary directory:
 * a manifest must name its own file, because the retention cleanup builds
 * the paths it unlinks from that name. The cases below are what
 * fuzz/backup_manifest.c found ("name" changed by one byte was listed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "management/backup_internal.h"

#define NAME "coredb-20260101T000000000Z"

static char dir[64];
static cdb_config cfg;
static struct cdb_service svc;

static void write_manifest(const char *text)
{
    char path[128];
    snprintf(path, sizeof path, "%s/" NAME ".json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/cdb-unit-backup-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    cfg.backup_dir = dir;
    svc.cfg = &cfg;
    return 0;
}

static int teardown(void **state)
{
    char path[128];
    snprintf(path, sizeof path, "%s/" NAME ".json", dir);
    unlink(path);
    return rmdir(dir);
}

/* The manifest of NAME read alone and in the list: the code, and whether it is listed. */
static int read_back(bool *listed)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *m = NULL, *list = NULL;
    int rc = cdb__backup_manifest(&svc, NAME, &m, &err);
    json_decref(m);
    cdb_error_destroy(&err);
    cdb_error_init(&err);
    assert_int_equal(cdb__backup_manifests(&svc, &list, &err), 0);
    *listed = json_array_size(list) == 1;
    json_decref(list);
    cdb_error_destroy(&err);
    return rc;
}

static void test_manifest_naming_itself_is_listed(void **state)
{
    bool listed = false;
    write_manifest("{\"name\": \"" NAME "\", \"created_at\": \"2026-01-01T00:00:00Z\"}");
    assert_int_equal(read_back(&listed), 0);
    assert_true(listed);
}

static void test_manifest_naming_another_path_is_refused(void **state)
{
    static const char *const bad[] = {
        "{\"name\": \"../../victim\"}",
        "{\"name\": \"co#edb-20260101T000000000Z\"}",     /* the fuzzer's input, one byte changed */
        "{\"name\": \"coredb-20250101T000000000Z\"}",     /* another, valid, backup's name */
        "{\"name\": 7}",
        "{\"created_at\": \"2026-01-01T00:00:00Z\"}",     /* no name at all */
        "[\"" NAME "\"]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        bool listed = true;
        write_manifest(bad[i]);
        int rc = read_back(&listed);
        if (rc != CDB_ERR_BACKUP_INVALID || listed)
            fail_msg("%s: code %d, listed %d", bad[i], rc, listed);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_manifest_naming_itself_is_listed),
        cmocka_unit_test(test_manifest_naming_another_path_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
