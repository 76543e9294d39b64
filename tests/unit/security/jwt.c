/*
 * test_jwt.c - access tokens of jwt.h: round trip, clock checks with leeway
 * (JWT_CLOCK_SKEW: 0, 5 and 60 s at the exact edges of exp, nbf and iat),
 * the pinned algorithm (none, HS384, RS256 refused), forged and tampered
 * tokens, claim checks, garbage input, and a token written by PyJWT.
 *
 * Hostile tokens are built by hand (base64url + HMAC-SHA256 from libsodium)
 * so each one differs from a valid token in exactly the way under test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "security/jwt.h"

#define SECRET "unit-test-secret-0123456789abcdef!!"
#define NOW    INT64_C(1700000000)

static const cdb_jwt_config cfg = {
    .secret = (const unsigned char *)SECRET,
    .secret_len = sizeof(SECRET) - 1,
    .issuer = "coredb",
    .audience = "coredb-api",
    .leeway_s = 30,
};

static cdb_token_claims sample_claims(void)
{
    cdb_token_claims c = {
        .sub = "3f2b8c1e-5d4a-4e6b-9c7d-1a2b3c4d5e6f",
        .role = "user",
        .sid = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        .jti = "0b1c2d3e4f",
        .iat = NOW, .nbf = NOW, .exp = NOW + 900,
    };
    return c;
}

/* Appends base64url(data) to out. */
static void b64_append(char *out, size_t size, const void *data, size_t len)
{
    size_t used = strlen(out);
    assert_true(sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING)
                <= size - used);
    sodium_bin2base64(out + used, size - used, data, len,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* header.payload.HMAC-SHA256(secret) built by hand; caller frees. */
static char *forge(const char *header, const char *payload, const char *secret)
{
    size_t size = 4096;
    char *t = calloc(1, size);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;

    assert_non_null(t);
    b64_append(t, size, header, strlen(header));
    strcat(t, ".");
    b64_append(t, size, payload, strlen(payload));
    crypto_auth_hmacsha256_init(&st, (const unsigned char *)secret, strlen(secret));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)t, strlen(t));
    crypto_auth_hmacsha256_final(&st, mac);
    strcat(t, ".");
    b64_append(t, size, mac, sizeof(mac));
    return t;
}

#define HS256_HEADER "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define PAYLOAD_FMT                                                              \
    "{\"iss\":\"%s\",\"aud\":%s,\"sub\":\"u1\",\"role\":\"user\",\"sid\":\"s1\"," \
    "\"jti\":\"j1\",\"iat\":1700000000,\"nbf\":1700000000,\"exp\":1700000900}"

static int verify(const char *token, int64_t now, cdb_token_claims *out)
{
    cdb_error err;
    cdb_token_claims scratch;
    int rc;

    cdb_error_init(&err);
    rc = cdb_jwt_verify(&cfg, token, now, out ? out : &scratch, &err);
    assert_int_equal(rc, err.code);
    /* No message may echo a token. */
    if (token && strlen(token) > 8)
        assert_null(strstr(err.message, token));
    cdb_error_destroy(&err);
    return rc;
}

static int verify_forged(const char *header, const char *payload, const char *secret)
{
    char *t = forge(header, payload, secret);
    int rc = verify(t, NOW, NULL);
    free(t);
    return rc;
}

static char *issue(const cdb_token_claims *c)
{
    cdb_error err;
    char *t = NULL;

    cdb_error_init(&err);
    assert_int_equal(cdb_jwt_issue(&cfg, c, &t, &err), 0);
    assert_non_null(t);
    return t;
}

static void test_roundtrip(void **state)
{
    cdb_token_claims in = sample_claims(), out;
    char *t = issue(&in);

    memset(&out, 0, sizeof(out));
    assert_int_equal(verify(t, NOW + 5, &out), 0);
    assert_string_equal(out.sub, in.sub);
    assert_string_equal(out.role, in.role);
    assert_string_equal(out.sid, in.sid);
    assert_string_equal(out.jti, in.jti);
    assert_int_equal(out.iat, in.iat);
    assert_int_equal(out.nbf, in.nbf);
    assert_int_equal(out.exp, in.exp);
    free(t);
}

static void test_expiry_and_leeway(void **state)
{
    cdb_token_claims c = sample_claims();
    char *t;

    c.exp = NOW - 31;
    t = issue(&c);
    assert_int_equal(verify(t, NOW, NULL), CDB_ERR_TOKEN_EXPIRED);
    free(t);

    c.exp = NOW - 10;
    t = issue(&c);
    assert_int_equal(verify(t, NOW, NULL), 0);
    free(t);
}

/* The code of verifying t at now with a leeway of skew seconds. */
static int verify_skew(const char *t, int64_t now, int skew, char *msg, size_t msg_len)
{
    cdb_jwt_config c = cfg;
    cdb_token_claims out;
    cdb_error err;
    int rc;

    c.leeway_s = skew;
    cdb_error_init(&err);
    rc = cdb_jwt_verify(&c, t, now, &out, &err);
    assert_int_equal(rc, err.code);
    if (msg)
        snprintf(msg, msg_len, "%s", err.message);
    cdb_error_destroy(&err);
    return rc;
}

/* JWT_CLOCK_SKEW reaches exp, nbf and iat alike, with RFC 7519's bounds:
 * refused on or after exp + skew, before nbf - skew and iat - skew. */
static void test_clock_skew(void **state)
{
    cdb_token_claims c = sample_claims();
    char msg[256], *t;

    /* 1 s past exp: refused with no skew, accepted with 5 s (iat and nbf
     * well in the past, so only exp decides) */
    c.iat = c.nbf = NOW - 100;
    c.exp = NOW - 1;
    t = issue(&c);
    assert_int_equal(verify_skew(t, NOW, 0, msg, sizeof msg), CDB_ERR_TOKEN_EXPIRED);
    assert_string_equal(msg, "Access token expired");
    assert_int_equal(verify_skew(t, NOW, 5, NULL, 0), 0);
    /* the edges: exactly at exp + skew is already expired */
    assert_int_equal(verify_skew(t, NOW - 1, 0, NULL, 0), CDB_ERR_TOKEN_EXPIRED);
    assert_int_equal(verify_skew(t, NOW - 2, 0, NULL, 0), 0);
    assert_int_equal(verify_skew(t, NOW + 3, 5, NULL, 0), 0);
    assert_int_equal(verify_skew(t, NOW + 4, 5, NULL, 0), CDB_ERR_TOKEN_EXPIRED);
    free(t);

    /* nbf 1 s ahead: refused with no skew, accepted with 5 s, up to nbf - 5 */
    c = sample_claims();
    c.iat = NOW - 100;
    c.nbf = NOW + 1;
    t = issue(&c);
    assert_int_equal(verify_skew(t, NOW, 0, msg, sizeof msg), CDB_ERR_UNAUTHORIZED);
    assert_string_equal(msg, "Token not yet valid");
    assert_int_equal(verify_skew(t, NOW + 1, 0, NULL, 0), 0);
    assert_int_equal(verify_skew(t, NOW, 5, NULL, 0), 0);
    assert_int_equal(verify_skew(t, NOW - 4, 5, NULL, 0), 0);
    assert_int_equal(verify_skew(t, NOW - 5, 5, NULL, 0), CDB_ERR_UNAUTHORIZED);
    free(t);

    /* iat 1 s ahead (nbf now): the same rule */
    c = sample_claims();
    c.iat = NOW + 1;
    t = issue(&c);
    assert_int_equal(verify_skew(t, NOW, 0, msg, sizeof msg), CDB_ERR_UNAUTHORIZED);
    assert_string_equal(msg, "Token issued in the future");
    assert_int_equal(verify_skew(t, NOW, 5, NULL, 0), 0);
    free(t);

    /* the 60 s maximum: refused from exp + 60 on, accepted a second before */
    c = sample_claims();
    c.iat = c.nbf = NOW - 100;
    c.exp = NOW - 61;
    t = issue(&c);
    assert_int_equal(verify_skew(t, NOW, 60, NULL, 0), CDB_ERR_TOKEN_EXPIRED);
    assert_int_equal(verify_skew(t, NOW - 1, 60, NULL, 0), CDB_ERR_TOKEN_EXPIRED);
    assert_int_equal(verify_skew(t, NOW - 2, 60, NULL, 0), 0);
    free(t);
}

static void test_not_yet_valid(void **state)
{
    cdb_token_claims c = sample_claims();
    cdb_error err;
    cdb_token_claims out;
    char *t;

    c.nbf = NOW + 60;
    c.exp = NOW + 900;
    t = issue(&c);
    cdb_error_init(&err);
    assert_int_equal(cdb_jwt_verify(&cfg, t, NOW, &out, &err), CDB_ERR_UNAUTHORIZED);
    assert_string_equal(err.message, "Token not yet valid");
    cdb_error_destroy(&err);
    assert_int_equal(verify(t, NOW + 31, NULL), 0);   /* within leeway */
    free(t);

    c = sample_claims();
    c.iat = NOW + 120;
    t = issue(&c);
    assert_int_equal(verify(t, NOW, NULL), CDB_ERR_UNAUTHORIZED);
    free(t);
}

static void test_wrong_secret(void **state)
{
    cdb_token_claims c = sample_claims();
    cdb_jwt_config other = cfg;
    cdb_error err;
    char *t = NULL;

    other.secret = (const unsigned char *)"another-secret-of-32-bytes-or-more!!";
    other.secret_len = strlen((const char *)other.secret);
    cdb_error_init(&err);
    assert_int_equal(cdb_jwt_issue(&other, &c, &t, &err), 0);
    assert_int_equal(verify(t, NOW, NULL), CDB_ERR_UNAUTHORIZED);
    free(t);
}

static void test_alg_none(void **state)
{
    char payload[512], t[2048] = "";
    const char *hdr = "{\"alg\":\"none\",\"typ\":\"JWT\"}";

    snprintf(payload, sizeof(payload), PAYLOAD_FMT, "coredb", "\"coredb-api\"");
    b64_append(t, sizeof(t), hdr, strlen(hdr));
    strcat(t, ".");
    b64_append(t, sizeof(t), payload, strlen(payload));
    strcat(t, ".");
    assert_int_equal(verify(t, NOW, NULL), CDB_ERR_UNAUTHORIZED);
    /* Same with a signature tacked on. */
    assert_int_equal(verify_forged(hdr, payload, SECRET), CDB_ERR_UNAUTHORIZED);
}

static void test_other_algs_refused(void **state)
{
    char payload[512];

    snprintf(payload, sizeof(payload), PAYLOAD_FMT, "coredb", "\"coredb-api\"");
    /* Sanity: the hand-built HS256 token is accepted. */
    assert_int_equal(verify_forged(HS256_HEADER, payload, SECRET), 0);
    assert_int_equal(verify_forged("{\"alg\":\"HS384\",\"typ\":\"JWT\"}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"alg\":\"HS512\"}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"alg\":\"ES256\"}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"alg\":\"hs256\"}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"typ\":\"JWT\"}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"alg\":\"HS256\",\"typ\":\"JOSE+JSON\"}", payload,
                                   SECRET), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("{\"alg\":\"HS256\",\"alg\":\"none\"}", payload, SECRET),
                     CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("[\"HS256\"]", payload, SECRET), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged("not json", payload, SECRET), CDB_ERR_UNAUTHORIZED);
}

static void test_tampered_payload(void **state)
{
    cdb_token_claims c = sample_claims();
    char *t = issue(&c), *dot1 = strchr(t, '.'), *dot2 = strchr(dot1 + 1, '.');
    char payload[1024], forged[2048] = "";
    unsigned char raw[1024];
    size_t raw_len;
    char *role;

    assert_int_equal(sodium_base642bin(raw, sizeof(raw) - 1, dot1 + 1, (size_t)(dot2 - dot1 - 1),
                                       NULL, &raw_len, NULL,
                                       sodium_base64_VARIANT_URLSAFE_NO_PADDING), 0);
    raw[raw_len] = '\0';
    role = strstr((char *)raw, "\"role\":\"user\"");
    assert_non_null(role);
    snprintf(payload, sizeof(payload), "%.*s\"role\":\"admin\"%s", (int)(role - (char *)raw),
             (char *)raw, role + strlen("\"role\":\"user\""));

    memcpy(forged, t, (size_t)(dot1 - t + 1));
    b64_append(forged, sizeof(forged), payload, strlen(payload));
    strcat(forged, dot2);
    assert_int_equal(verify(forged, NOW, NULL), CDB_ERR_UNAUTHORIZED);

    /* A flipped signature character is refused too. */
    t[strlen(t) - 2] = t[strlen(t) - 2] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(t, NOW, NULL), CDB_ERR_UNAUTHORIZED);
    free(t);
}

static void test_claim_checks(void **state)
{
    char payload[512];
    const char *p;

    snprintf(payload, sizeof(payload), PAYLOAD_FMT, "someone-else", "\"coredb-api\"");
    assert_int_equal(verify_forged(HS256_HEADER, payload, SECRET), CDB_ERR_UNAUTHORIZED);
    snprintf(payload, sizeof(payload), PAYLOAD_FMT, "coredb", "\"other-api\"");
    assert_int_equal(verify_forged(HS256_HEADER, payload, SECRET), CDB_ERR_UNAUTHORIZED);
    snprintf(payload, sizeof(payload), PAYLOAD_FMT, "coredb", "[\"x\",\"coredb-api\"]");
    assert_int_equal(verify_forged(HS256_HEADER, payload, SECRET), 0);
    snprintf(payload, sizeof(payload), PAYLOAD_FMT, "coredb", "[\"x\",\"y\"]");
    assert_int_equal(verify_forged(HS256_HEADER, payload, SECRET), CDB_ERR_UNAUTHORIZED);
    snprintf(payload, sizeof(payload), PAYLOAD_FMT, "coredb", "7");
    assert_int_equal(verify_forged(HS256_HEADER, payload, SECRET), CDB_ERR_UNAUTHORIZED);

    /* Missing or mistyped claims. */
    p = "{\"iss\":\"coredb\",\"aud\":\"coredb-api\",\"sub\":\"u1\",\"role\":\"user\","
        "\"jti\":\"j1\",\"iat\":1700000000,\"nbf\":1700000000,\"exp\":1700000900}";
    assert_int_equal(verify_forged(HS256_HEADER, p, SECRET), CDB_ERR_UNAUTHORIZED);
    p = "{\"iss\":\"coredb\",\"aud\":\"coredb-api\",\"sub\":\"u1\",\"role\":\"user\","
        "\"sid\":\"s1\",\"jti\":\"j1\",\"iat\":1700000000,\"nbf\":1700000000}";
    assert_int_equal(verify_forged(HS256_HEADER, p, SECRET), CDB_ERR_UNAUTHORIZED);
    p = "{\"iss\":\"coredb\",\"aud\":\"coredb-api\",\"sub\":\"u1\",\"role\":\"user\","
        "\"sid\":\"s1\",\"jti\":\"j1\",\"iat\":1700000000,\"nbf\":1700000000,"
        "\"exp\":\"4102444800\"}";
    assert_int_equal(verify_forged(HS256_HEADER, p, SECRET), CDB_ERR_UNAUTHORIZED);
    /* A string nbf must not read as 0 (libjwt's jwt_get_grant_int does). */
    p = "{\"iss\":\"coredb\",\"aud\":\"coredb-api\",\"sub\":\"u1\",\"role\":\"user\","
        "\"sid\":\"s1\",\"jti\":\"j1\",\"iat\":1700000000,\"nbf\":\"9999999999\","
        "\"exp\":1700000900}";
    assert_int_equal(verify_forged(HS256_HEADER, p, SECRET), CDB_ERR_UNAUTHORIZED);
    p = "{\"iss\":\"coredb\",\"aud\":\"coredb-api\",\"sub\":\"u1\",\"role\":\"user\","
        "\"sid\":\"s1\",\"jti\":\"j1\",\"iat\":1700000000,\"exp\":1700000900}";
    assert_int_equal(verify_forged(HS256_HEADER, p, SECRET), CDB_ERR_UNAUTHORIZED);
    p = "{\"iss\":\"coredb\",\"aud\":\"coredb-api\",\"sub\":\"u1\",\"role\":\"superuser-role-x\","
        "\"sid\":\"s1\",\"jti\":\"j1\",\"iat\":1700000000,\"nbf\":1700000000,"
        "\"exp\":1700000900}";
    assert_int_equal(verify_forged(HS256_HEADER, p, SECRET), CDB_ERR_UNAUTHORIZED);
    p = "{\"iss\":\"coredb\",\"aud\":\"coredb-api\",\"sub\":42,\"role\":\"user\","
        "\"sid\":\"s1\",\"jti\":\"j1\",\"iat\":1700000000,\"nbf\":1700000000,"
        "\"exp\":1700000900}";
    assert_int_equal(verify_forged(HS256_HEADER, p, SECRET), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify_forged(HS256_HEADER, "[]", SECRET), CDB_ERR_UNAUTHORIZED);
}

static void test_garbage(void **state)
{
    char *big = malloc(10 * 1024 + 1);

    assert_non_null(big);
    memset(big, 'a', 10 * 1024);
    big[10 * 1024] = '\0';
    assert_int_equal(verify(NULL, NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("a.b", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("a.b.c", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("a.b.c.d", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("...", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify(big, NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("e30=.e30=.e30=", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("!!!.@@@.###", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(verify("Bearer x.y.z", NOW, NULL), CDB_ERR_UNAUTHORIZED);
    free(big);
}

/* Written by PyJWT 2.6: jwt.encode({...}, SECRET, algorithm="HS256"). */
static void test_pyjwt_interop(void **state)
{
    static const char *t =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJjb3JlZGIiLCJhdWQiOiJjb3JlZGItYXBp"
        "Iiwic3ViIjoiM2YyYjhjMWUtNWQ0YS00ZTZiLTljN2QtMWEyYjNjNGQ1ZTZmIiwicm9sZSI6InByZW1p"
        "dW0iLCJzaWQiOiI5YThiN2M2ZC01ZTRmLTRhM2ItOGMyZC0xZTBmOWE4YjdjNmQiLCJqdGkiOiJweWp3"
        "dC0xIiwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.O3pT"
        "7T64U4cevtTKt_YnMqsfnpxeJCo6bR5ssNkgZzk";
    /* aud as an array that contains ours. */
    static const char *t_arr =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJjb3JlZGIiLCJhdWQiOlsib3RoZXIiLCJj"
        "b3JlZGItYXBpIl0sInN1YiI6InUiLCJyb2xlIjoidXNlciIsInNpZCI6InMiLCJqdGkiOiJqIiwiaWF0"
        "IjoxNzAwMDAwMDAwLCJuYmYiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.krucVNi3Cc38tBwQ"
        "z7-tO68hcPcBgLD0-ejBr_sx36U";
    cdb_token_claims out;

    assert_int_equal(verify(t, NOW + 100, &out), 0);
    assert_string_equal(out.sub, "3f2b8c1e-5d4a-4e6b-9c7d-1a2b3c4d5e6f");
    assert_string_equal(out.role, "premium");
    assert_string_equal(out.sid, "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d");
    assert_string_equal(out.jti, "pyjwt-1");
    assert_int_equal(out.exp, INT64_C(4102444800));
    assert_int_equal(verify(t_arr, NOW + 100, &out), 0);
    assert_string_equal(out.role, "user");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_expiry_and_leeway),
        cmocka_unit_test(test_clock_skew),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_other_algs_refused),
        cmocka_unit_test(test_tampered_payload),
        cmocka_unit_test(test_claim_checks),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_pyjwt_interop),
    };
    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
