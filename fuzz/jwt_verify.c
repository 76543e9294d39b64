/*
 * jwt_verify.c - libFuzzer harness: the access-token verifier
 * (cdb_jwt_verify, src/security/jwt.c: shape and header checks, libjwt's
 * decode and HS256 signature, iss/aud, the integer and string claims, the
 * time checks), as every Authorization: Bearer value reaches it.
 *
 * The first byte picks the mode:
 *   even  the rest is the token as sent. Oracle: a token is accepted only
 *         when its signature is the fixture key's HMAC of its first two
 *         parts (a forged or altered token never passes).
 *   odd   the rest is "header JSON \xff claims JSON": the harness encodes
 *         and signs them with the fixture key, so the claim checks behind
 *         the signature are reached. Oracle: an accepted token's claims
 *         are non-empty, NUL-terminated and inside the time window.
 */
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "security/jwt.h"

#define NOW 1800000000
static const unsigned char key[] = "fuzz-secret-fuzz-secret-fuzz-secret-0123";
static const cdb_jwt_config cfg = {
    .secret = key, .secret_len = sizeof key - 1, .issuer = "coredb", .audience = "coredb-api", .leeway_s = 30,
};

/* base64url without padding of n bytes (malloc'd). */
static char *b64(const unsigned char *bin, size_t n)
{
    size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *out = malloc(cap);
    if (!out)
        abort();
    sodium_bin2base64(out, cap, bin, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

/* The fixture key's signature of signing_input (malloc'd base64url). */
static char *sign(const char *signing_input, size_t n)
{
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, sizeof key - 1);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)signing_input, n);
    crypto_auth_hmacsha256_final(&st, mac);
    return b64(mac, sizeof mac);
}

static void check_claims(const cdb_token_claims *c)
{
    if (!memchr(c->sub, 0, sizeof c->sub) || !c->sub[0] || !memchr(c->role, 0, sizeof c->role) || !c->role[0] ||
        !memchr(c->sid, 0, sizeof c->sid) || !c->sid[0] || !memchr(c->jti, 0, sizeof c->jti) || !c->jti[0] ||
        NOW - cfg.leeway_s >= c->exp || c->nbf > NOW + cfg.leeway_s || c->iat > NOW + cfg.leeway_s) {
        fprintf(stderr, "accepted claims out of bounds: exp %lld nbf %lld iat %lld\n", (long long)c->exp,
                (long long)c->nbf, (long long)c->iat);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    return sodium_init() < 0 ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 16384)
        return 0;
    bool signed_mode = data[0] & 1;
    data++, size--;
    char *token;
    if (!signed_mode) {
        token = malloc(size + 1);
        if (!token)
            abort();
        memcpy(token, data, size);
        token[size] = '\0';
    } else {
        const uint8_t *sep = memchr(data, 0xff, size);
        size_t hl = sep ? (size_t)(sep - data) : size;
        char *h = b64(data, hl);
        char *p = sep ? b64(sep + 1, size - hl - 1) : b64((const unsigned char *)"", 0);
        size_t n = strlen(h) + 1 + strlen(p);
        char *input = malloc(n + 1);
        if (!input)
            abort();
        snprintf(input, n + 1, "%s.%s", h, p);
        char *sig = sign(input, n);
        if (asprintf(&token, "%s.%s", input, sig) < 0)
            abort();
        free(h), free(p), free(input), free(sig);
    }
    cdb_token_claims claims;
    cdb_error err;
    cdb_error_init(&err);
    int rc = cdb_jwt_verify(&cfg, token, NOW, &claims, &err);
    if (rc == 0) {
        check_claims(&claims);
        const char *dot2 = strrchr(token, '.');
        char *sig = dot2 ? sign(token, (size_t)(dot2 - token)) : NULL;
        if (!sig || strcmp(sig, dot2 + 1) != 0) {
            fprintf(stderr, "a token whose signature is not the key's was accepted: %s\n", token);
            abort();
        }
        free(sig);
    } else if (rc != CDB_ERR_UNAUTHORIZED && rc != CDB_ERR_TOKEN_EXPIRED) {
        fprintf(stderr, "unexpected code %s\n", cdb_err_name((cdb_err)rc));
        abort();
    }
    cdb_error_destroy(&err);
    free(token);
    return 0;
}
