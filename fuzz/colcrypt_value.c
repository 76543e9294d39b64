/*
 * colcrypt_value.c - libFuzzer harness: the decoders of column encryption
 * (src/security/colcrypt.c), which read text PostgreSQL hands back and the
 * configured keys: cdb__colval_is_encrypted and cdb__colval_decrypt on any
 * value text ("cdb1:<version>:<base64>"), cdb__colkey_unwrap on a stored
 * wrapped key, cdb__colcrypt_master on DB_ENCRYPTION_KEY's text.
 *
 * The input is "pk \0 text". Oracles: decrypting arbitrary text fails with
 * DECRYPTION_FAILED and never names the value; a value encrypted here
 * (the text as plaintext, bound to pk) decrypts back to the same bytes
 * with its own pk and fails with another pk or column (values cannot be
 * moved between rows); an arbitrary wrapped key never unwraps.
 */
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "security/colcrypt.h"

static unsigned char master[CDB_COLKEY_BYTES];
static cdb_colkey *key;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (sodium_init() < 0)
        abort();
    memset(master, 0x5a, sizeof master);
    key = cdb__colkey_new(3);
    if (!key)
        abort();
    memset(key->key, 0x33, CDB_COLKEY_BYTES);   /* fixed, so a seed can hold a real value */
    return 0;
}

static void expect_fail(char *plain, const cdb_error *err, const char *why)
{
    if (plain || err->code != CDB_ERR_DECRYPTION_FAILED) {
        fprintf(stderr, "colcrypt oracle: %s (code %d)\n", why, err->code);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *in = malloc(size + 1);
    if (!in)
        abort();
    memcpy(in, data, size);
    in[size] = '\0';
    const char *nul = memchr(in, '\0', size);
    const char *pk = nul ? in : "42";
    const char *text = nul ? nul + 1 : in;
    size_t text_len = size - (size_t)(text - in);
    cdb_error err;
    int version = 0;

    (void)cdb__colval_is_encrypted(text, &version);
    cdb_error_init(&err);
    size_t len = 0;
    char *plain = cdb__colval_decrypt(key, "notes", "body", pk, text, &len, &err);
    if (!plain && err.code != CDB_ERR_DECRYPTION_FAILED)
        abort();
    if (!plain && strncmp(text, CDB_COLVAL_PREFIX, 5) == 0 && strlen(text) >= 12 && strstr(err.message, text))
        abort();   /* the message names the place, never the value */
    free(plain);
    cdb_error_destroy(&err);

    char *value = cdb__colval_encrypt(key, "notes", "body", pk, text, text_len);
    if (!value)
        abort();
    cdb_error_init(&err);
    plain = cdb__colval_decrypt(key, "notes", "body", pk, value, &len, &err);
    if (!plain || len != text_len || memcmp(plain, text, len) != 0) {
        fprintf(stderr, "colcrypt oracle: the round trip lost the value\n");
        abort();
    }
    free(plain);
    cdb_error_destroy(&err);
    char *other_pk = NULL;   /* pk with one more character: always another row */
    if (asprintf(&other_pk, "%sx", pk) < 0)
        abort();
    cdb_error_init(&err);
    expect_fail(cdb__colval_decrypt(key, "notes", "body", other_pk, value, &len, &err), &err,
                "a value moved to another row decrypts");
    cdb_error_destroy(&err);
    free(other_pk);
    cdb_error_init(&err);
    expect_fail(cdb__colval_decrypt(key, "notes", "title", pk, value, &len, &err), &err,
                "a value moved to another column decrypts");
    cdb_error_destroy(&err);
    free(value);

    cdb_error_init(&err);
    cdb_colkey *k = cdb__colkey_unwrap(master, text, 1, "notes", "body", &err);
    if (k) {
        fprintf(stderr, "colcrypt oracle: arbitrary text unwrapped as a data key\n");
        abort();
    }
    cdb_error_destroy(&err);
    unsigned char out[CDB_COLKEY_BYTES];
    cdb_error_init(&err);
    (void)cdb__colcrypt_master(text, "DB_ENCRYPTION_KEY", out, &err);
    cdb_error_destroy(&err);
    free(in);
    return 0;
}
