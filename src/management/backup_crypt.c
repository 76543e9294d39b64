/*
 * backup_crypt.c - encryption at rest of backup archives (BACKUP_ENCRYPT)
 * and cdb_backup_decrypt_to_path (coredb/backup.h).
 *
 * Format of an encrypted file: the 8 bytes "CDBENC1\n", the 24-byte
 * libsodium secretstream (XChaCha20-Poly1305) header, then chunks of at
 * most CHUNK plaintext bytes, each CHUNK + ABYTES long except the last,
 * which carries the FINAL tag. A flipped bit fails a chunk's MAC; a
 * truncated file ends without FINAL; both are BACKUP_INVALID.
 *
 * The key is derived (crypto_kdf, context "cdbbackp", subkey 1) from the
 * 32-byte DB_ENCRYPTION_KEY, so no other use of the master key ever sees
 * the same key.
 */
#include "management/backup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAGIC "CDBENC1\n"
#define MAGIC_LEN 8
#define CHUNK 65536

/* The master key (64 hex digits or base64, any variant) as 32 bytes. */
static int master_key(const cdb_service *svc, unsigned char key[32], cdb_error *err)
{
    const char *s = svc->cfg->db_encryption_key;
    size_t len = 0;
    static const int variants[] = {sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
                                   sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};
    if (!s || !*s)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "BACKUP_ENCRYPT needs DB_ENCRYPTION_KEY");
    if (strlen(s) == 64 && sodium_hex2bin(key, 32, s, 64, NULL, &len, NULL) == 0 && len == 32)
        return 0;
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++)
        if (sodium_base642bin(key, 32, s, strlen(s), NULL, &len, NULL, variants[i]) == 0 && len == 32)
            return 0;
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "DB_ENCRYPTION_KEY is not a 32-byte key");
}

static int backup_key(const cdb_service *svc, unsigned char key[crypto_secretstream_xchacha20poly1305_KEYBYTES],
                      cdb_error *err)
{
    unsigned char master[32];
    int rc = master_key(svc, master, err);
    if (rc == 0)
        crypto_kdf_derive_from_key(key, crypto_secretstream_xchacha20poly1305_KEYBYTES, 1, "cdbbackp", master);
    sodium_memzero(master, sizeof master);
    return rc;
}

static bool write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Reads up to n bytes (fewer only at end of file). */
static ssize_t read_full(int fd, unsigned char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static bool is_encrypted(int fd)
{
    unsigned char magic[MAGIC_LEN];
    bool yes = pread(fd, magic, MAGIC_LEN, 0) == MAGIC_LEN && memcmp(magic, MAGIC, MAGIC_LEN) == 0;
    return yes;
}

int cdb__backup_encrypt(const cdb_service *svc, const char *src, const char *dst, cdb_error *err)
{
    unsigned char key[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    unsigned char header[crypto_secretstream_xchacha20poly1305_HEADERBYTES];
    crypto_secretstream_xchacha20poly1305_state st;
    int in = -1, out = -1;
    unsigned char *in_buf = malloc(CHUNK), *out_buf = malloc(CHUNK + crypto_secretstream_xchacha20poly1305_ABYTES);
    int rc = in_buf && out_buf ? backup_key(svc, key, err) : cdb_error_oom(err);
    if (rc < 0) {
        free(in_buf);
        free(out_buf);
        return rc;
    }
    in = open(src, O_RDONLY | O_CLOEXEC);
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (in < 0 || out < 0)
        goto io_error;
    crypto_secretstream_xchacha20poly1305_init_push(&st, header, key);
    if (!write_all(out, (const unsigned char *)MAGIC, MAGIC_LEN) || !write_all(out, header, sizeof header))
        goto io_error;
    /* one chunk of look-ahead so that the last one gets the FINAL tag */
    ssize_t n = read_full(in, in_buf, CHUNK);
    for (;;) {
        if (n < 0)
            goto io_error;
        unsigned char next_first;
        ssize_t peek = n == CHUNK ? read_full(in, &next_first, 1) : 0;
        if (peek < 0)
            goto io_error;
        unsigned char tag = peek == 0 ? crypto_secretstream_xchacha20poly1305_TAG_FINAL : 0;
        unsigned long long clen;
        crypto_secretstream_xchacha20poly1305_push(&st, out_buf, &clen, in_buf, (unsigned long long)n, NULL, 0,
                                                   tag);
        if (!write_all(out, out_buf, (size_t)clen))
            goto io_error;
        if (tag)
            break;
        in_buf[0] = next_first;
        ssize_t more = read_full(in, in_buf + 1, CHUNK - 1);
        n = more < 0 ? -1 : more + 1;
    }
    if (fsync(out) < 0)
        goto io_error;
    goto out;

io_error:
    rc = cdb__backup_storage_error(err, "encrypting the archive", dst, errno);
out:
    sodium_memzero(key, sizeof key);
    free(in_buf);
    free(out_buf);
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) != 0 && rc == 0)
        rc = cdb__backup_storage_error(err, "writing the archive", dst, errno);
    return rc;
}

static int decrypt(const cdb_service *svc, int in, int out, const char *src, cdb_error *err)
{
    unsigned char key[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    unsigned char header[crypto_secretstream_xchacha20poly1305_HEADERBYTES];
    crypto_secretstream_xchacha20poly1305_state st;
    unsigned char *in_buf = malloc(CHUNK + crypto_secretstream_xchacha20poly1305_ABYTES), *out_buf = malloc(CHUNK);
    int rc = in_buf && out_buf ? backup_key(svc, key, err) : cdb_error_oom(err);
    if (rc < 0) {
        free(in_buf);
        free(out_buf);
        return rc;
    }
    bool final = false;
    if (lseek(in, MAGIC_LEN, SEEK_SET) < 0 || read_full(in, header, sizeof header) != (ssize_t)sizeof header ||
        crypto_secretstream_xchacha20poly1305_init_pull(&st, header, key) != 0)
        goto invalid;
    for (;;) {
        ssize_t n = read_full(in, in_buf, CHUNK + crypto_secretstream_xchacha20poly1305_ABYTES);
        if (n < 0)
            goto invalid;
        if (n == 0)
            break;
        if (final)
            goto invalid;   /* bytes after the last chunk */
        unsigned long long plen;
        unsigned char tag;
        if (crypto_secretstream_xchacha20poly1305_pull(&st, out_buf, &plen, &tag, in_buf, (unsigned long long)n,
                                                       NULL, 0) != 0)
            goto invalid;
        if (!write_all(out, out_buf, (size_t)plen)) {
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "backup: cannot write the decrypted archive");
            goto out;
        }
        final = tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL;
    }
    if (final)
        goto out;

invalid:
    rc = cdb_error_set(err, CDB_ERR_BACKUP_INVALID, "Backup invalid: %s does not decrypt (damaged, truncated or "
                       "another key)", strrchr(src, '/') ? strrchr(src, '/') + 1 : src);
out:
    sodium_memzero(key, sizeof key);
    free(in_buf);
    free(out_buf);
    return rc;
}

int cdb_backup_decrypt_to_path(cdb_service *svc, const char *src, const char *dst, cdb_error *err)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = 0;
    if (in < 0 || out < 0) {
        rc = cdb__backup_storage_error(err, "copying the archive", src, errno);
        goto out;
    }
    if (is_encrypted(in)) {
        rc = decrypt(svc, in, out, src, err);
        goto out;
    }
    char buf[65536];
    ssize_t r;
    while ((r = read(in, buf, sizeof buf)) > 0) {
        if (!write_all(out, (const unsigned char *)buf, (size_t)r)) {
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
    if (rc < 0)
        unlink(dst);
    return rc;
}
