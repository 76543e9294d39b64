/*
 * devsecrets.c - the development secrets of the zero-configuration mode
 * (devsecrets.h): JWT secret, master key and first admin, generated once
 * into <var_dir>/secrets.env (mode 0600) and read back on every start.
 */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "coredb/log.h"
#include "core/fsutil.h"
#include "store/devsecrets.h"

/* ---- development secrets ---- */

enum { SECRET_JWT, SECRET_KEY, SECRET_ADMIN_EMAIL, SECRET_ADMIN_PASSWORD, SECRET_COUNT };

static const struct secret_spec {
    const char *name;
    size_t      nbytes;    /* random bytes; 0 for a fixed value */
    int         variant;   /* sodium base64 variant */
    const char *fixed;
} secret_specs[SECRET_COUNT] = {
    [SECRET_JWT] = {"JWT_SECRET", 64, sodium_base64_VARIANT_URLSAFE_NO_PADDING, NULL},
    [SECRET_KEY] = {"DB_ENCRYPTION_KEY", 32, sodium_base64_VARIANT_ORIGINAL, NULL},
    [SECRET_ADMIN_EMAIL] = {"COREDB_ADMIN_EMAIL", 0, 0, "admin@coredb.local"},
    [SECRET_ADMIN_PASSWORD] = {"COREDB_ADMIN_PASSWORD", 24,
                               sodium_base64_VARIANT_URLSAFE_NO_PADDING, NULL},
};

static void free_secret(char **s)
{
    if (*s) {
        sodium_memzero(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

static char *generate_secret(const struct secret_spec *spec)
{
    if (spec->fixed)
        return strdup(spec->fixed);
    unsigned char bin[64];
    size_t len = sodium_base64_ENCODED_LEN(spec->nbytes, spec->variant);
    char *out = malloc(len);
    if (!out)
        return NULL;
    randombytes_buf(bin, spec->nbytes);
    sodium_bin2base64(out, len, bin, spec->nbytes, spec->variant);
    sodium_memzero(bin, sizeof bin);
    return out;
}

/* Reads NAME=value lines we know into vals; a missing file is empty. With
 * fix_mode a file readable by others is made 0600. */
static int read_secrets(const char *path, char *vals[SECRET_COUNT], bool fix_mode, cdb_error *err)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot read %s: %s",
                             path, strerror(errno));
    }
    int rc = 0;
    struct stat st;
    if (fix_mode && fstat(fileno(f), &st) == 0 && (st.st_mode & 077)) {
        cdb_log_warn("devdb.secrets", "%s was readable by others; mode set to 0600", path);
        if (fchmod(fileno(f), 0600) < 0) {
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot chmod %s: %s",
                               path, strerror(errno));
            goto out_file;
        }
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        char *eq = strchr(line, '=');
        if (line[0] == '#' || !eq)
            continue;
        *eq = '\0';
        for (int i = 0; i < SECRET_COUNT; i++) {
            if (strcmp(line, secret_specs[i].name) != 0 || eq[1] == '\0')
                continue;
            free_secret(&vals[i]);
            vals[i] = strdup(eq + 1);
            if (!vals[i]) {
                rc = cdb_error_oom(err);
                goto out_line;
            }
        }
    }
out_line:
    if (line) {
        sodium_memzero(line, cap);
        free(line);
    }
out_file:
    fclose(f);
    return rc;
}

static int write_all(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Replaces path atomically: a crash leaves the old file or the new one. */
static int write_secrets(const char *dir, const char *path, char *const vals[SECRET_COUNT],
                         cdb_error *err)
{
    int rc = -1;
    char *tmp = cdb_xasprintf("%s.tmp.%ld", path, (long)getpid());
    if (!tmp)
        return cdb_error_oom(err);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        goto out_tmp;
    bool ok = fchmod(fd, 0600) == 0 &&
              write_all(fd, "# coredb development secrets: generated once, keep private\n") == 0;
    for (int i = 0; ok && i < SECRET_COUNT; i++)
        if (vals[i])
            ok = write_all(fd, secret_specs[i].name) == 0 && write_all(fd, "=") == 0 &&
                 write_all(fd, vals[i]) == 0 && write_all(fd, "\n") == 0;
    ok = ok && fsync(fd) == 0;
    if (close(fd) < 0 || !ok || rename(tmp, path) < 0) {
        int saved = errno;
        unlink(tmp);
        errno = saved;
        goto out_tmp;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {             /* make the rename itself durable */
        fsync(dfd);
        close(dfd);
    }
    rc = 0;
out_tmp:
    if (rc < 0)
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot write %s: %s", path, strerror(errno));
    free(tmp);
    return rc;
}

/* Fills the NULL secret fields of cfg from <var_dir>/secrets.env and marks
 * their source; with generate, creates and saves those the file lacks. */
static int fill_secrets(cdb_config *cfg, const char *var_dir, bool generate, cdb_error *err)
{
    char *vals[SECRET_COUNT] = {0};
    char **fields[SECRET_COUNT] = {
        [SECRET_JWT] = &cfg->jwt_secret,
        [SECRET_KEY] = &cfg->db_encryption_key,
        [SECRET_ADMIN_EMAIL] = &cfg->admin_email,
        [SECRET_ADMIN_PASSWORD] = &cfg->admin_password,
    };
    bool need[SECRET_COUNT];
    bool admin = !cfg->admin_email && !cfg->admin_password;
    for (int i = 0; i < SECRET_COUNT; i++)
        need[i] = (i == SECRET_ADMIN_EMAIL || i == SECRET_ADMIN_PASSWORD) ? admin : !*fields[i];

    int rc = 0;
    char *dir = cdb_absolute_dir(var_dir);
    char *path = dir ? cdb_xasprintf("%s/secrets.env", dir) : NULL;
    if (!path) {
        rc = cdb_error_oom(err);
        goto out_free;
    }
    if (generate && cdb_mkdir_p(dir, 0755) < 0) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot create %s: %s",
                           dir, strerror(errno));
        goto out_free;
    }
    if ((rc = read_secrets(path, vals, generate, err)) < 0)
        goto out_free;

    bool generated = false;
    for (int i = 0; i < SECRET_COUNT; i++) {
        if (!need[i] || vals[i] || !generate)
            continue;
        if (!(vals[i] = generate_secret(&secret_specs[i]))) {
            rc = cdb_error_oom(err);
            goto out_free;
        }
        generated = true;
    }
    if (generated && (rc = write_secrets(dir, path, vals, err)) < 0)
        goto out_free;

    for (int i = 0; i < SECRET_COUNT; i++) {
        if (need[i] && vals[i]) {
            *fields[i] = vals[i];   /* ownership moves to cfg */
            vals[i] = NULL;
            cdb_config_set_source(cfg, secret_specs[i].name, CDB_CONFIG_SECRETS_FILE);
        }
    }
    if (generate)
        cdb_log_info("devdb.secrets", "development secrets in %s (mode 0600)", path);
out_free:
    for (int i = 0; i < SECRET_COUNT; i++)
        free_secret(&vals[i]);
    free(path);
    free(dir);
    return rc;
}

int cdb_devsecrets_load(cdb_config *cfg, const char *var_dir, cdb_error *err)
{
    return fill_secrets(cfg, var_dir, true, err);
}

int cdb_devsecrets_peek(cdb_config *cfg, const char *var_dir, cdb_error *err)
{
    return fill_secrets(cfg, var_dir, false, err);
}

char *cdb_devsecrets_path(const char *var_dir)
{
    char *dir = cdb_absolute_dir(var_dir);
    char *path = dir ? cdb_xasprintf("%s/secrets.env", dir) : NULL;
    free(dir);
    return path;
}
