/*
 * security/colcrypt.c - colcrypt.h: the master key's forms, data keys wrapped
 * and unwrapped (wrong master key, moved key refused), values round trip,
 * a value moved to another row or column refused (the swap attack), tampering
 * refused, fresh nonces, and the blind index's equality.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "../../../src/security/colcrypt.c"

#define HEXKEY "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

static void test_master_forms(void **state)
{
    unsigned char a[32], b[32];
    char b64[64];
    cdb_error err;
    (void)state;
    cdb_error_init(&err);
    assert_int_equal(cdb__colcrypt_master(HEXKEY, "K", a, &err), 0);
    assert_int_equal(a[31], 0x1f);
    sodium_bin2base64(b64, sizeof b64, a, 32, sodium_base64_VARIANT_ORIGINAL);
    assert_int_equal(cdb__colcrypt_master(b64, "K", b, &err), 0);
    assert_memory_equal(a, b, 32);
    assert_int_equal(cdb__colcrypt_master("short", "DB_ENCRYPTION_KEY", b, &err), CDB_ERR_CONFIG_INVALID);
    assert_non_null(strstr(err.message, "DB_ENCRYPTION_KEY"));
    cdb_error_destroy(&err); cdb_error_init(&err);
    assert_int_equal(cdb__colcrypt_master("", "K", b, &err), CDB_ERR_CONFIG_INVALID);
    cdb_error_destroy(&err); cdb_error_init(&err);
}

static void test_wrap_unwrap(void **state)
{
    unsigned char m[32], m2[32];
    cdb_error err;
    (void)state;
    cdb_error_init(&err);
    randombytes_buf(m, 32);
    randombytes_buf(m2, 32);
    cdb_colkey *k = cdb__colkey_new(3);
    char *w = cdb__colkey_wrap(m, k, "users", "ssn");
    assert_non_null(w);
    cdb_colkey *u = cdb__colkey_unwrap(m, w, 3, "users", "ssn", &err);
    assert_non_null(u);
    assert_memory_equal(u->key, k->key, 32);
    cdb__colkey_free(u);
    assert_null(cdb__colkey_unwrap(m2, w, 3, "users", "ssn", &err));   /* wrong master key */
    assert_int_equal(err.code, CDB_ERR_CONFIG_INVALID);
    cdb_error_destroy(&err); cdb_error_init(&err);
    assert_null(cdb__colkey_unwrap(m, w, 4, "users", "ssn", &err));    /* other version */
    cdb_error_destroy(&err); cdb_error_init(&err);
    assert_null(cdb__colkey_unwrap(m, w, 3, "users", "email", &err));  /* other column */
    cdb_error_destroy(&err); cdb_error_init(&err);
    assert_null(cdb__colkey_unwrap(m, "zz", 3, "users", "ssn", &err)); /* damaged */
    cdb_error_destroy(&err); cdb_error_init(&err);
    free(w);
    cdb__colkey_free(k);
}

static void test_value_roundtrip_and_swap(void **state)
{
    cdb_error err;
    size_t len = 0;
    int v = 0;
    (void)state;
    cdb_error_init(&err);
    cdb_colkey *k = cdb__colkey_new(2);
    char *c1 = cdb__colval_encrypt(k, "users", "ssn", "7", "123-45-6789", 11);
    char *c2 = cdb__colval_encrypt(k, "users", "ssn", "7", "123-45-6789", 11);
    assert_non_null(c1);
    assert_string_not_equal(c1, c2);                                   /* fresh nonce */
    assert_true(cdb__colval_is_encrypted(c1, &v));
    assert_int_equal(v, 2);
    assert_null(strstr(c1, "123-45"));
    char *p = cdb__colval_decrypt(k, "users", "ssn", "7", c1, &len, &err);
    assert_string_equal(p, "123-45-6789");
    assert_int_equal(len, 11);
    free(p);
    /* swap: same ciphertext, another row or column */
    assert_null(cdb__colval_decrypt(k, "users", "ssn", "8", c1, &len, &err));
    assert_int_equal(err.code, CDB_ERR_DECRYPTION_FAILED);
    assert_null(strstr(err.message, "123"));
    cdb_error_destroy(&err); cdb_error_init(&err);
    assert_null(cdb__colval_decrypt(k, "users", "name", "7", c1, &len, &err));
    cdb_error_destroy(&err); cdb_error_init(&err);
    /* tampering */
    c1[strlen(c1) - 3] = c1[strlen(c1) - 3] == 'A' ? 'B' : 'A';
    assert_null(cdb__colval_decrypt(k, "users", "ssn", "7", c1, &len, &err));
    cdb_error_destroy(&err); cdb_error_init(&err);
    /* not our form, or another version */
    assert_false(cdb__colval_is_encrypted("plain", NULL));
    assert_false(cdb__colval_is_encrypted("cdb1:x:abc", NULL));
    assert_null(cdb__colval_decrypt(k, "users", "ssn", "7", "cdb1:1:AAAA", &len, &err));
    cdb_error_destroy(&err); cdb_error_init(&err);
    /* empty plaintext */
    char *e = cdb__colval_encrypt(k, "t", "c", "1", "", 0);
    p = cdb__colval_decrypt(k, "t", "c", "1", e, &len, &err);
    assert_string_equal(p, "");
    free(p);
    free(e);
    free(c1);
    free(c2);
    cdb__colkey_free(k);
}

static void test_blind(void **state)
{
    char a[33], b[33], c[33], d[33];
    (void)state;
    cdb_colkey *k = cdb__colkey_new(0), *k2 = cdb__colkey_new(0);
    cdb__colval_blind(k, "x", 1, a);
    cdb__colval_blind(k, "x", 1, b);
    cdb__colval_blind(k, "y", 1, c);
    cdb__colval_blind(k2, "x", 1, d);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, d);
    assert_int_equal(strlen(a), 32);
    cdb__colkey_free(k);
    cdb__colkey_free(k2);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_master_forms),
        cmocka_unit_test(test_wrap_unwrap),
        cmocka_unit_test(test_value_roundtrip_and_swap),
        cmocka_unit_test(test_blind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
