/*
 * backup_verify.c - cdb_backup_verify (coredb/backup.h): three levels, each
 * run only when the one before passed:
 *   checksum  the file's SHA-256 and size against its manifest;
 *   toc       pg_restore --list reads the archive's table of contents;
 *   restore   pg_restore into a scratch database (dropped afterwards,
 *             whatever happened) whose per-table row counts must equal the
 *             manifest's, which were taken in the dump's snapshot.
 * The restore leaves out event triggers (the TOC list given to pg_restore
 * -L drops them): creating one needs a superuser, and they hold no rows.
 */
#include "management/backup_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "coredb/audit.h"
#include "coredb/log.h"
#include "store/pg.h"

#define TOC_TIMEOUT_S 300
#define RESTORE_TIMEOUT_S 3600

static const char *const LEVELS[] = {"checksum", "toc", "restore"};

/* TOC lines without event triggers, written to list_path. */
static int filter_toc(const char *toc_path, const char *list_path, int *entries)
{
    FILE *in = fopen(toc_path, "r"), *out = fopen(list_path, "w");
    char line[4096];
    int rc = in && out ? 0 : -1;
    *entries = 0;
    while (rc == 0 && fgets(line, sizeof line, in)) {
        if (strstr(line, " EVENT TRIGGER "))
            continue;
        if (line[0] != ';')
            (*entries)++;
        fputs(line, out);
    }
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        rc = -1;
    return rc;
}

/* Restores archive into a new database and compares its counts with want. */
static int test_restore(cdb_service *svc, const char *archive, const char *list_path, json_t *want,
                        cdb_error *err)
{
    char db[64];
    snprintf(db, sizeof db, "coredb_verify_%d_%u", (int)getpid(), (unsigned)randombytes_uniform(1000000));
    char *create = cdb_xasprintf("CREATE DATABASE \"%s\"", db);
    char *drop = cdb_xasprintf("DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", db);
    json_t *got = json_object();
    PGconn *admin = NULL, *scratch = NULL;
    PGresult *res = NULL;
    bool created = false;
    int rc = 0;

    if (!create || !drop || !got) {
        rc = cdb_error_oom(err);
        goto out;
    }
    admin = PQconnectdb(svc->conninfo);
    if (PQstatus(admin) != CONNECTION_OK) {
        rc = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "verify: cannot connect to PostgreSQL");
        goto out;
    }
    res = PQexec(admin, create);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = cdb_pg_error_from_result(admin, res, err);
        cdb_error_detail(err, "check", json_string("restore"));
        goto out;
    }
    created = true;
    const char *args[] = {"--no-owner", "--no-acl", "--single-transaction", "--no-password", "-L", list_path,
                          "-d", db, archive, NULL};
    if (cdb__backup_run(svc, "pg_restore", args, NULL, RESTORE_TIMEOUT_S, err) < 0) {
        char why[sizeof err->message];
        snprintf(why, sizeof why, "%s", err->message);
        rc = cdb_error_set_detail(err, CDB_ERR_BACKUP_INVALID, "check", "restore",
                                  "Backup invalid: the test restore failed: %s", why);
        goto out;
    }
    const char *keys[] = {"dbname", "dbname", NULL};
    const char *vals[] = {svc->conninfo, db, NULL};
    scratch = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(scratch) != CONNECTION_OK) {
        rc = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "verify: cannot connect to the scratch database");
        goto out;
    }
    if ((rc = cdb__backup_count_rows(scratch, got, err)) < 0)
        goto out;
    if (!json_equal(got, want)) {
        const char *key;
        json_t *v;
        const char *which = "(a table)";
        json_object_foreach(want, key, v) if (!json_equal(v, json_object_get(got, key))) {
            which = key;
            break;
        }
        rc = cdb_error_set_detail(err, CDB_ERR_BACKUP_INVALID, "check", "restore",
                                  "Backup invalid: the restored row counts differ from the manifest (%s)", which);
    }

out:
    PQfinish(scratch);
    PQclear(res);
    if (created) {
        res = PQexec(admin, drop);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            cdb_log_warn("backup.scratch_left", "could not drop %s: %s", db, PQerrorMessage(admin));
        PQclear(res);
    }
    PQfinish(admin);
    json_decref(got);
    free(create);
    free(drop);
    return rc;
}

/* BACKUP_INVALID naming the failed level: "Backup invalid: NAME: what". */
static int fail(cdb_error *err, json_t *checks, const char *level, const char *name, const char *what)
{
    json_object_set_new(checks, level, json_string("failed"));
    cdb_error_set_detail(err, CDB_ERR_BACKUP_INVALID, "check", level, "Backup invalid: %s: %s", name, what);
    return CDB_ERR_BACKUP_INVALID;
}

static int verify(cdb_service *svc, const char *name, json_t **out, cdb_error *err)
{
    json_t *manifest = NULL, *checks = json_object();
    char *archive = NULL, *plain = NULL, *toc = NULL, *list = NULL;
    int rc, entries = 0;
    *out = NULL;

    if (!checks)
        return cdb_error_oom(err);
    for (size_t i = 0; i < 3; i++)
        json_object_set_new(checks, LEVELS[i], json_string("not_run"));
    if ((rc = cdb_backup_archive_path(svc, name, &archive, &manifest, err)) < 0)
        goto out;
    if (!cdb__backup_intact(svc, manifest)) {
        rc = fail(err, checks, "checksum", name, "the file does not match its checksum or size");
        goto out;
    }
    json_object_set_new(checks, "checksum", json_string("passed"));

    /* own names per run: two verifies of one backup must not share files */
    unsigned run = randombytes_random();
    plain = cdb_xasprintf("%s/.%s.verify-%08x.dump", svc->cfg->backup_dir, name, run);
    toc = cdb_xasprintf("%s/.%s.verify-%08x.toc", svc->cfg->backup_dir, name, run);
    list = cdb_xasprintf("%s/.%s.verify-%08x.list", svc->cfg->backup_dir, name, run);
    if (!plain || !toc || !list) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_backup_decrypt_to_path(svc, archive, plain, err)) < 0) {
        json_object_set_new(checks, "toc", json_string("failed"));
        cdb_error_detail(err, "check", json_string("toc"));
        goto out;
    }
    const char *args[] = {"--list", plain, NULL};
    cdb_error toc_err;
    cdb_error_init(&toc_err);
    rc = cdb__backup_run(svc, "pg_restore", args, toc, TOC_TIMEOUT_S, &toc_err);
    if (rc == 0 && (filter_toc(toc, list, &entries) < 0 || entries == 0))
        rc = -1;
    if (rc < 0) {
        rc = fail(err, checks, "toc", name, "pg_restore cannot read the archive's table of contents");
        cdb_error_detail(err, "reason", json_string(toc_err.message[0] ? toc_err.message : "no entries"));
        cdb_error_destroy(&toc_err);
        goto out;
    }
    cdb_error_destroy(&toc_err);
    json_object_set_new(checks, "toc", json_string("passed"));

    if ((rc = test_restore(svc, plain, list, json_object_get(manifest, "tables"), err)) < 0) {
        json_object_set_new(checks, "restore", json_string("failed"));
        goto out;
    }
    json_object_set_new(checks, "restore", json_string("passed"));
    if (!(*out = json_pack("{s:s, s:b, s:O, s:i}", "name", name, "valid", 1, "checks", checks, "toc_entries",
                           entries)))
        rc = cdb_error_oom(err);

out:
    if (rc < 0 && rc == CDB_ERR_BACKUP_INVALID)
        cdb_error_detail(err, "checks", json_incref(checks));
    if (plain)
        unlink(plain);
    if (toc)
        unlink(toc);
    if (list)
        unlink(list);
    free(plain);
    free(toc);
    free(list);
    free(archive);
    json_decref(manifest);
    json_decref(checks);
    return rc;
}

int cdb_backup_verify(cdb_service *svc, const cdb_principal *caller, const char *name, json_t **out,
                      cdb_error *err)
{
    int rc = verify(svc, name, out, err);
    cdb_error outcome = {.code = (cdb_err)rc};
    cdb_audit_record(svc, caller, "backup.verify", name, NULL, &outcome);
    return rc;
}
