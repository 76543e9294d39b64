/*
 * jwt.c - HS256 access tokens for jwt.h, signed and checked by libjwt.
 *
 * libjwt 1.10 verifies with whatever algorithm the token's header names, so
 * the header is vetted here first: the token must be exactly three non-empty
 * base64url segments, at most 8 KiB, and its header a JSON object (duplicate
 * keys refused, so no parser can read a different "alg" than we did) with
 * "alg" exactly "HS256", "typ" absent or "JWT" and no "crit". Only then does
 * libjwt check the signature, after which the claims are checked against cfg
 * and the clock. Every failure but expiry reads "Invalid token" or a short
 * claim-level reason; nothing from the token is ever echoed.
 */
#include "security/jwt.h"

#include <jansson.h>
#include <jwt.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_MAX      8192
#define HEADER_MAX     512    /* decoded header bytes; ours is 27 */
#define HS256_SIG_B64  43     /* 32 bytes, unpadded base64url */

int cdb_jwt_issue(const cdb_jwt_config *cfg, const cdb_token_claims *claims,
                  char **token, cdb_error *err)
{
    jwt_t *jwt = NULL;
    int rc = CDB_ERR_INTERNAL_ERROR;

    *token = NULL;
    if (!cfg->secret || cfg->secret_len == 0 || jwt_new(&jwt) != 0)
        goto out_free;
    if (jwt_add_grant(jwt, "iss", cfg->issuer) || jwt_add_grant(jwt, "aud", cfg->audience) ||
        jwt_add_grant(jwt, "sub", claims->sub) || jwt_add_grant(jwt, "role", claims->role) ||
        jwt_add_grant(jwt, "sid", claims->sid) || jwt_add_grant(jwt, "jti", claims->jti) ||
        jwt_add_grant_int(jwt, "iat", (long)claims->iat) ||
        jwt_add_grant_int(jwt, "nbf", (long)claims->nbf) ||
        jwt_add_grant_int(jwt, "exp", (long)claims->exp) ||
        jwt_set_alg(jwt, JWT_ALG_HS256, cfg->secret, (int)cfg->secret_len))
        goto out_free;
    *token = jwt_encode_str(jwt);
    if (*token)
        rc = 0;
out_free:
    jwt_free(jwt);
    if (rc)
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Token signing failed");
    return rc;
}

static bool is_b64url(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return len > 0;
}

/* The shape and header checks that run before libjwt sees the token. */
static bool header_acceptable(const char *token)
{
    size_t len = strnlen(token, TOKEN_MAX + 1);
    const char *dot1, *dot2, *alg, *typ;
    unsigned char raw[HEADER_MAX];
    size_t raw_len;
    json_t *hdr;
    bool ok;

    if (len > TOKEN_MAX)
        return false;
    dot1 = memchr(token, '.', len);
    dot2 = dot1 ? memchr(dot1 + 1, '.', (size_t)(token + len - dot1 - 1)) : NULL;
    if (!dot2 || !is_b64url(token, (size_t)(dot1 - token)) ||
        !is_b64url(dot1 + 1, (size_t)(dot2 - dot1 - 1)) ||
        strlen(dot2 + 1) != HS256_SIG_B64 || !is_b64url(dot2 + 1, HS256_SIG_B64))
        return false;
    if (sodium_base642bin(raw, sizeof(raw), token, (size_t)(dot1 - token), NULL, &raw_len,
                          NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return false;
    hdr = json_loadb((const char *)raw, raw_len, JSON_REJECT_DUPLICATES, NULL);
    alg = json_string_value(json_object_get(hdr, "alg"));
    typ = json_string_value(json_object_get(hdr, "typ"));
    ok = json_is_object(hdr) && alg && strcmp(alg, "HS256") == 0 &&
         (!json_object_get(hdr, "typ") || (typ && strcmp(typ, "JWT") == 0)) &&
         !json_object_get(hdr, "crit");
    json_decref(hdr);
    return ok;
}

/* aud may be one string or an array of strings (RFC 7519 4.1.3). */
static bool audience_matches(jwt_t *jwt, const char *audience)
{
    const char *aud = jwt_get_grant(jwt, "aud");
    char *js;
    json_t *arr, *v;
    size_t i;
    bool found = false;

    if (aud)
        return strcmp(aud, audience) == 0;
    js = jwt_get_grants_json(jwt, "aud");
    if (!js)
        return false;
    arr = json_loads(js, JSON_DECODE_ANY, NULL);
    free(js);
    json_array_foreach(arr, i, v) {
        if (json_is_string(v) && strcmp(json_string_value(v), audience) == 0)
            found = true;
    }
    json_decref(arr);
    return found;
}

/* Copies a present, non-empty string claim that fits dst. */
static bool copy_claim(jwt_t *jwt, const char *name, char *dst, size_t size)
{
    const char *v = jwt_get_grant(jwt, name);
    size_t len = v ? strlen(v) : 0;

    if (len == 0 || len >= size)
        return false;
    memcpy(dst, v, len + 1);
    return true;
}

/*
 * Reads an integer claim; false when absent or not a JSON integer. Not
 * jwt_get_grant_int: libjwt 1.10 answers 0 without an error for a claim of
 * another type, which would turn "nbf":"9999999999" into nbf 0.
 */
static bool int_claim(jwt_t *jwt, const char *name, int64_t *out)
{
    char *js = jwt_get_grants_json(jwt, name);
    json_t *v = js ? json_loads(js, JSON_DECODE_ANY, NULL) : NULL;
    bool ok = json_is_integer(v);

    if (ok)
        *out = json_integer_value(v);
    json_decref(v);
    free(js);
    return ok;
}

int cdb_jwt_verify(const cdb_jwt_config *cfg, const char *token, int64_t now,
                   cdb_token_claims *out, cdb_error *err)
{
    jwt_t *jwt = NULL;
    const char *iss;
    cdb_token_claims c;
    int rc;

    memset(&c, 0, sizeof(c));
    if (!cfg->secret || cfg->secret_len == 0) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Token key not configured");
        goto out_free;
    }
    if (!token || !header_acceptable(token) ||
        jwt_decode(&jwt, token, cfg->secret, (int)cfg->secret_len) != 0 ||
        jwt_get_alg(jwt) != JWT_ALG_HS256) {
        rc = cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Invalid token");
        goto out_free;
    }
    iss = jwt_get_grant(jwt, "iss");
    if (!iss || strcmp(iss, cfg->issuer) != 0) {
        rc = cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Invalid token issuer");
        goto out_free;
    }
    if (!audience_matches(jwt, cfg->audience)) {
        rc = cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Invalid token audience");
        goto out_free;
    }
    if (!int_claim(jwt, "exp", &c.exp) || !int_claim(jwt, "nbf", &c.nbf) ||
        !int_claim(jwt, "iat", &c.iat) || !copy_claim(jwt, "sub", c.sub, sizeof(c.sub)) ||
        !copy_claim(jwt, "role", c.role, sizeof(c.role)) ||
        !copy_claim(jwt, "sid", c.sid, sizeof(c.sid)) ||
        !copy_claim(jwt, "jti", c.jti, sizeof(c.jti))) {
        rc = cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Token missing required claims");
        goto out_free;
    }
    /* RFC 7519 4.1.4: not accepted "on or after" exp, so >=. Written as
     * now - leeway so that a huge signed exp cannot overflow. */
    if (now - cfg->leeway_s >= c.exp) {
        rc = cdb_error_set(err, CDB_ERR_TOKEN_EXPIRED, "Access token expired");
        goto out_free;
    }
    if (c.nbf > now + cfg->leeway_s) {
        rc = cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Token not yet valid");
        goto out_free;
    }
    if (c.iat > now + cfg->leeway_s) {
        rc = cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Token issued in the future");
        goto out_free;
    }
    *out = c;
    rc = 0;
out_free:
    jwt_free(jwt);
    return rc;
}
