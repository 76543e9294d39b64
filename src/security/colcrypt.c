/*
 * colcrypt.c - column encryption's keys and value format (colcrypt.h):
 * libsodium's XChaCha20-Poly1305 (IETF) for data keys and values, keyed
 * BLAKE2b for blind indexes. Nothing here touches PostgreSQL.
 */
#include "security/colcrypt.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG crypto_aead_xchacha20poly1305_ietf_ABYTES

/* "prefix|table|column|tail" (malloc'd): the associated data that binds a value or key to its place. */
static char *bind_ad(const char *prefix, const char *table, const char *column, const char *tail)
{
    size_t n = strlen(prefix) + strlen(table) + strlen(column) + strlen(tail) + 4;
    char *ad = malloc(n);
    if (ad)
        snprintf(ad, n, "%s|%s|%s|%s", prefix, table, column, tail);
    return ad;
}

int cdb__colcrypt_master(const char *text, const char *var, unsigned char out[CDB_COLKEY_BYTES],
                         cdb_error *err)
{
    static const int variants[] = {sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
                                   sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};
    size_t len = 0;
    if (!text || !*text)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s is not set", var);
    if (strlen(text) == 64 && sodium_hex2bin(out, CDB_COLKEY_BYTES, text, 64, NULL, &len, NULL) == 0 &&
        len == CDB_COLKEY_BYTES)
        return 0;
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++)
        if (sodium_base642bin(out, CDB_COLKEY_BYTES, text, strlen(text), NULL, &len, NULL, variants[i]) == 0 &&
            len == CDB_COLKEY_BYTES)
            return 0;
    sodium_memzero(out, CDB_COLKEY_BYTES);
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s is not a 32-byte key (base64 or hex)", var);
}

static cdb_colkey *colkey_alloc(int version)
{
    cdb_colkey *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    /* sodium_malloc: guard pages, mlocked, never swapped out */
    if (!(k->key = sodium_malloc(CDB_COLKEY_BYTES))) {
        free(k);
        return NULL;
    }
    k->version = version;
    return k;
}

cdb_colkey *cdb__colkey_new(int version)
{
    cdb_colkey *k = colkey_alloc(version);
    if (k)
        crypto_aead_xchacha20poly1305_ietf_keygen(k->key);
    return k;
}

void cdb__colkey_free(cdb_colkey *k)
{
    if (!k)
        return;
    sodium_free(k->key);           /* zeroes before unmapping */
    free(k);
}

char *cdb__colkey_wrap(const unsigned char master[CDB_COLKEY_BYTES], const cdb_colkey *k,
                       const char *table, const char *column)
{
    unsigned char buf[NONCE + CDB_COLKEY_BYTES + TAG];
    char ver[16];
    char *hex = malloc(sizeof buf * 2 + 1), *ad = NULL;
    snprintf(ver, sizeof ver, "%d", k->version);
    if (!hex || !(ad = bind_ad("cdbkey1", table, column, ver))) {
        free(hex);
        return NULL;
    }
    randombytes_buf(buf, NONCE);
    crypto_aead_xchacha20poly1305_ietf_encrypt(buf + NONCE, NULL, k->key, CDB_COLKEY_BYTES,
                                               (const unsigned char *)ad, strlen(ad), NULL, buf, master);
    sodium_bin2hex(hex, sizeof buf * 2 + 1, buf, sizeof buf);
    free(ad);
    return hex;
}

cdb_colkey *cdb__colkey_unwrap(const unsigned char master[CDB_COLKEY_BYTES], const char *hex,
                               int version, const char *table, const char *column, cdb_error *err)
{
    unsigned char buf[NONCE + CDB_COLKEY_BYTES + TAG];
    size_t len = 0;
    char ver[16];
    char *ad = NULL;
    cdb_colkey *k = NULL;

    snprintf(ver, sizeof ver, "%d", version);
    if (!hex || sodium_hex2bin(buf, sizeof buf, hex, strlen(hex), NULL, &len, NULL) != 0 || len != sizeof buf) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "The stored data key %d of %s.%s is damaged", version,
                      table, column);
        goto out;
    }
    if (!(ad = bind_ad("cdbkey1", table, column, ver)) || !(k = colkey_alloc(version))) {
        cdb_error_oom(err);
        goto out;
    }
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(k->key, NULL, NULL, buf + NONCE, sizeof buf - NONCE,
                                                   (const unsigned char *)ad, strlen(ad), buf, master) != 0) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                      "DB_ENCRYPTION_KEY does not unwrap the data key %d of %s.%s (wrong master key?)",
                      version, table, column);
        cdb__colkey_free(k);
        k = NULL;
    }
out:
    free(ad);
    return k;
}

bool cdb__colval_is_encrypted(const char *text, int *version)
{
    char *end = NULL;
    if (!text || strncmp(text, CDB_COLVAL_PREFIX, sizeof CDB_COLVAL_PREFIX - 1) != 0)
        return false;
    const char *p = text + sizeof CDB_COLVAL_PREFIX - 1;
    if (*p < '1' || *p > '9')
        return false;
    long v = strtol(p, &end, 10);
    if (*end != ':' || v < 1 || v > 1000000)
        return false;
    if (version)
        *version = (int)v;
    return true;
}

char *cdb__colval_encrypt(const cdb_colkey *k, const char *table, const char *column, const char *pk,
                          const char *plain, size_t len)
{
    size_t blen = NONCE + len + TAG;
    size_t b64 = sodium_base64_ENCODED_LEN(blen, sodium_base64_VARIANT_ORIGINAL);
    unsigned char *buf = malloc(blen);
    char *ad = bind_ad("cdb1", table, column, pk), *out = malloc(b64 + 32);
    if (!buf || !ad || !out) {
        free(out);
        out = NULL;
        goto done;
    }
    randombytes_buf(buf, NONCE);   /* 192-bit random nonce: no counter to keep */
    crypto_aead_xchacha20poly1305_ietf_encrypt(buf + NONCE, NULL, (const unsigned char *)plain, len,
                                               (const unsigned char *)ad, strlen(ad), NULL, buf, k->key);
    int n = snprintf(out, 32, CDB_COLVAL_PREFIX "%d:", k->version);
    sodium_bin2base64(out + n, b64, buf, blen, sodium_base64_VARIANT_ORIGINAL);
done:
    free(buf);
    free(ad);
    return out;
}

char *cdb__colval_decrypt(const cdb_colkey *k, const char *table, const char *column, const char *pk,
                          const char *value, size_t *len, cdb_error *err)
{
    int version = 0;
    unsigned char *buf = NULL, *plain = NULL;
    char *ad = NULL;
    size_t blen = 0;
    unsigned long long plen = 0;

    if (!cdb__colval_is_encrypted(value, &version) || version != k->version) {
        cdb_error_set_detail(err, CDB_ERR_DECRYPTION_FAILED, "column", column,
                             "A value of %s.%s could not be decrypted", table, column);
        return NULL;
    }
    const char *b64 = strchr(value + sizeof CDB_COLVAL_PREFIX - 1, ':') + 1;
    size_t cap = strlen(b64) / 4 * 3 + 3;
    if (!(buf = malloc(cap)) || !(ad = bind_ad("cdb1", table, column, pk))) {
        cdb_error_oom(err);
        goto out;
    }
    if (sodium_base642bin(buf, cap, b64, strlen(b64), NULL, &blen, NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
        blen < NONCE + TAG || !(plain = malloc(blen - NONCE - TAG + 1)) ||
        crypto_aead_xchacha20poly1305_ietf_decrypt(plain, &plen, NULL, buf + NONCE, blen - NONCE,
                                                   (const unsigned char *)ad, strlen(ad), buf, k->key) != 0) {
        free(plain);
        plain = NULL;
        /* the message names the place, never the value */
        cdb_error_set_detail(err, CDB_ERR_DECRYPTION_FAILED, "column", column,
                             "A value of %s.%s could not be decrypted (altered, or moved from another row "
                             "or column)", table, column);
        goto out;
    }
    plain[plen] = '\0';
    if (len)
        *len = (size_t)plen;
out:
    free(buf);
    free(ad);
    return (char *)plain;
}

void cdb__colval_blind(const cdb_colkey *k, const char *plain, size_t len, char out[33])
{
    unsigned char sub[crypto_generichash_KEYBYTES], h[16];
    /* a subkey of its own: the index key never equals the encryption key */
    crypto_kdf_derive_from_key(sub, sizeof sub, 2, "cdbblind", k->key);
    crypto_generichash(h, sizeof h, (const unsigned char *)plain, len, sub, sizeof sub);
    sodium_memzero(sub, sizeof sub);
    sodium_bin2hex(out, 33, h, sizeof h);
}
