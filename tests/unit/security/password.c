/*
 * security/password.c - password.h: argon2id round trip and re-hash detection,
 * seed-era bcrypt hashes written by Python's bcrypt ($2b$, and the same hash
 * as $2a$ and $2y$), unknown formats, and the burn used for unknown emails.
 * Parameters are libsodium's minimum so the suite stays fast.
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

#include "security/password.h"

static const cdb_password_params fast = { .opslimit = 1, .memlimit = 8192 * 1024 };
static const cdb_password_params slower = { .opslimit = 2, .memlimit = 8192 * 1024 };

#define PW "correct horse"

/* bcrypt.hashpw(b"correct horse", bcrypt.gensalt(4)) from python3-bcrypt. */
#define BCRYPT_TAIL "$04$KeV1XmFJAfij1q/.GptpyO4ghNl0L2r7kAe3JsVVy8HIahMiA5p1m"

static void test_argon2id_roundtrip(void **state)
{
    char hash[CDB_PASSWORD_HASH_MAX];
    cdb_error err;
    bool rehash = true;

    cdb_error_init(&err);
    assert_int_equal(cdb_password_hash(&fast, PW, strlen(PW), hash, &err), 0);
    assert_memory_equal(hash, "$argon2id$", 10);
    assert_true(cdb_password_verify(&fast, hash, PW, strlen(PW), &rehash));
    assert_false(rehash);
    assert_false(cdb_password_verify(&fast, hash, "correct horsf", strlen(PW), &rehash));
    assert_false(cdb_password_verify(&fast, hash, PW, strlen(PW) - 1, NULL));
    assert_false(cdb_password_verify(&fast, hash, "", 0, NULL));

    /* Other parameters still verify, but ask for a re-hash. */
    assert_true(cdb_password_verify(&slower, hash, PW, strlen(PW), &rehash));
    assert_true(rehash);
}

static void test_argon2id_binary_password(void **state)
{
    static const char pw[] = { 'a', '\0', 'b', '\xff' };
    char hash[CDB_PASSWORD_HASH_MAX];

    assert_int_equal(cdb_password_hash(&fast, pw, sizeof(pw), hash, NULL), 0);
    assert_true(cdb_password_verify(&fast, hash, pw, sizeof(pw), NULL));
    assert_false(cdb_password_verify(&fast, hash, pw, 1, NULL));
}

static void test_bad_params(void **state)
{
    const cdb_password_params tiny = { .opslimit = 1, .memlimit = 1024 };
    char hash[CDB_PASSWORD_HASH_MAX];
    cdb_error err;

    cdb_error_init(&err);
    assert_int_equal(cdb_password_hash(&tiny, PW, strlen(PW), hash, &err),
                     CDB_ERR_CONFIG_INVALID);
    assert_int_equal(err.code, CDB_ERR_CONFIG_INVALID);
}

static void test_bcrypt_variants(void **state)
{
    static const char *hashes[] = { "$2b" BCRYPT_TAIL, "$2a" BCRYPT_TAIL, "$2y" BCRYPT_TAIL };

    for (size_t i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++) {
        bool rehash = false;

        assert_true(cdb_password_verify(&fast, hashes[i], PW, strlen(PW), &rehash));
        assert_true(rehash);
        rehash = false;
        assert_false(cdb_password_verify(&fast, hashes[i], "Correct horse", strlen(PW), &rehash));
        assert_true(rehash);
        /* An embedded NUL must not match the prefix crypt would see. */
        assert_false(cdb_password_verify(&fast, hashes[i], PW "\0x", strlen(PW) + 2, NULL));
    }
    /* $2x$ is the buggy-era variant we never accept. */
    assert_false(cdb_password_verify(&fast, "$2x" BCRYPT_TAIL, PW, strlen(PW), NULL));
}

static void test_bcrypt_long_password(void **state)
{
    /* bcrypt.hashpw(b"x" * 80, bcrypt.gensalt(4)): bcrypt reads 72 bytes. */
    static const char *hash = "$2b$04$W2OCd5NXdRjEoJhVtOma3eh9MnvQc78wQS.0tTr/SO6orkuEr1sLi";
    char pw[81];

    memset(pw, 'x', 80);
    pw[80] = '\0';
    assert_true(cdb_password_verify(&fast, hash, pw, 80, NULL));
    assert_false(cdb_password_verify(&fast, hash, pw, 71, NULL));
}

static void test_unknown_formats(void **state)
{
    static const char *bad[] = {
        "", "$1$abc$def", "$5$rounds=1000$salt$hash", "plaintext", "correct horse",
        "$argon2i$v=19$m=8192,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$garbage", "$2b$04$short", "$2b$",
    };
    char long_hash[300];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool rehash = false;

        assert_false(cdb_password_verify(&fast, bad[i], PW, strlen(PW), &rehash));
        assert_true(rehash);
    }
    assert_false(cdb_password_verify(&fast, NULL, PW, strlen(PW), NULL));
    memset(long_hash, 'a', sizeof(long_hash) - 1);
    memcpy(long_hash, "$2b$04$", 7);
    long_hash[sizeof(long_hash) - 1] = '\0';
    assert_false(cdb_password_verify(&fast, long_hash, PW, strlen(PW), NULL));
}

static void test_burn(void **state)
{
    /* Twice with the same parameters (cached dummy), then with others. */
    cdb_password_burn(&fast, PW, strlen(PW));
    cdb_password_burn(&fast, "", 0);
    cdb_password_burn(&slower, PW, strlen(PW));
}

/* The length rule both coredb's users and database users follow. */
static void test_check_length(void **state)
{
    (void)state;
    cdb_error err;
    cdb_error_init(&err);
    assert_int_equal(cdb_password_check_length("0123456789", 10, 10, "password", &err), 0);
    assert_int_equal(cdb_password_check_length("012345678", 9, 10, "new_password", &err),
                     CDB_ERR_VALIDATION_FAILED);
    assert_string_equal(json_string_value(json_object_get(err.details, "field")), "new_password");
    assert_non_null(strstr(err.message, "at least 10 characters"));
    /* characters, not bytes: ten two-byte letters pass, nine do not */
    const char *ten = "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";
    assert_int_equal(cdb_password_check_length(ten, 20, 10, "password", &err), 0);
    assert_int_equal(cdb_password_check_length(ten + 2, 18, 10, "password", &err), CDB_ERR_VALIDATION_FAILED);
    /* an embedded NUL (JSON length longer than strlen) and an over-long one */
    assert_int_equal(cdb_password_check_length("0123456789\0x", 12, 1, "password", &err),
                     CDB_ERR_VALIDATION_FAILED);
    char *big = malloc(CDB_PASSWORD_MAX_BYTES + 2);
    memset(big, 'a', CDB_PASSWORD_MAX_BYTES + 1);
    big[CDB_PASSWORD_MAX_BYTES + 1] = '\0';
    assert_int_equal(cdb_password_check_length(big, CDB_PASSWORD_MAX_BYTES + 1, 1, "password", &err),
                     CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(cdb_password_check_length(big + 1, CDB_PASSWORD_MAX_BYTES, 1, "password", &err), 0);
    free(big);
    cdb_error_destroy(&err);
}

int main(void)
{
    /* the library's one sodium_init() is in cdb_service_open, which these tests do not call */
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argon2id_roundtrip),
        cmocka_unit_test(test_argon2id_binary_password),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_bcrypt_variants),
        cmocka_unit_test(test_bcrypt_long_password),
        cmocka_unit_test(test_unknown_formats),
        cmocka_unit_test(test_burn),
        cmocka_unit_test(test_check_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
