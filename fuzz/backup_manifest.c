/*
 * backup_manifest.c - libFuzzer harness: the backup manifest reader
 * (src/management/backup_files.c, backup.c included for its statics).
 * The input is written as BACKUP_DIR/coredb-20260101T000000000Z.json next
 * to a small archive, then read the ways coredb reads manifests:
 * cdb__backup_manifests (the list, the retention cleanup's input),
 * cdb_backup_list, cdb_backup_archive_path (restore, verify), and per
 * manifest cdb__backup_intact (name, sha256, size_bytes against the file)
 * and created_of (created_at).
 *
 * Oracles: every listed manifest names itself with a valid backup name
 * (the retention cleanup builds the paths it unlinks from that name, so
 * any other text would reach outside BACKUP_DIR); a failure is NOT_FOUND
 * or BACKUP_INVALID.
 */
#include <stdint.h>

#include "management/backup.c"

#define NAME "coredb-20260101T000000000Z"

static char dir[64];
static cdb_config cfg;
static struct cdb_service svc;

/* Removes the temporary BACKUP_DIR when the fuzzer exits (a crash leaves it, with the input). */
static void remove_dir(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/" NAME ".json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/" NAME ".dump", dir);
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    snprintf(dir, sizeof dir, "/tmp/cdb-fuzz-backup-XXXXXX");
    if (!mkdtemp(dir))
        abort();
    cfg.backup_dir = dir;
    svc.cfg = &cfg;
    char path[128];
    snprintf(path, sizeof path, "%s/" NAME ".dump", dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs("PGDMP fuzz archive", f) < 0 || fclose(f) != 0)
        abort();
    cdb_log_set_level(CDB_LOG_OFF);
    atexit(remove_dir);
    return 0;
}

static void check_code(int rc)
{
    if (rc != 0 && rc != CDB_ERR_NOT_FOUND && rc != CDB_ERR_BACKUP_INVALID) {
        fprintf(stderr, "unexpected code %s\n", cdb_err_name((cdb_err)rc));
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[128];
    snprintf(path, sizeof path, "%s/" NAME ".json", dir);
    FILE *f = fopen(path, "w");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();

    cdb_error err;
    cdb_error_init(&err);
    json_t *list = NULL, *m;
    size_t i;
    if (cdb__backup_manifests(&svc, &list, &err) != 0)
        abort();
    json_array_foreach(list, i, m) {
        const char *name = json_string_value(json_object_get(m, "name"));
        if (!cdb__backup_name_ok(name)) {
            fprintf(stderr, "a listed manifest names %s: the retention cleanup would unlink %s/%s.dump\n",
                    name ? name : "(nothing)", dir, name ? name : "(null)");
            abort();
        }
        (void)cdb__backup_intact(&svc, m);
        (void)created_of(m);
    }
    json_decref(list);

    json_t *out = NULL;
    if (cdb_backup_list(&svc, &out, &err) != 0)
        abort();
    json_decref(out);

    char *archive = NULL;
    json_t *manifest = NULL;
    int rc = cdb_backup_archive_path(&svc, NAME, &archive, &manifest, &err);
    check_code(rc);
    if (rc == 0) {
        (void)cdb__backup_intact(&svc, manifest);
        (void)created_of(manifest);
    }
    free(archive);
    json_decref(manifest);
    cdb_error_destroy(&err);
    return 0;
}
