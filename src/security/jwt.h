/*
 * jwt.h - access tokens: HS256 JWTs issued and verified with libjwt.
 *
 * The algorithm is pinned: a token whose header is anything but HS256
 * (none, RS*, ES*, HS384, ...) is refused before its signature is looked at.
 * Verification checks signature, iss, aud, exp, nbf and iat (each with
 * leeway_s of clock skew), and that sub, role, sid and jti are present.
 * Thread-safe, no I/O.
 */
#ifndef COREDB_JWT_H
#define COREDB_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "coredb/error.h"

typedef struct cdb_jwt_config {
    const unsigned char *secret;   /* HS256 key, >= 32 bytes */
    size_t secret_len;
    const char *issuer;            /* "iss", e.g. "coredb" */
    const char *audience;          /* "aud", e.g. "coredb-api" */
    int leeway_s;                  /* clock skew tolerated on exp/nbf/iat, >= 0
                                    * (the service passes JWT_CLOCK_SKEW) */
} cdb_jwt_config;

typedef struct cdb_token_claims {
    char sub[64];                  /* user id (uuid) */
    char role[16];                 /* admin | user | premium */
    char sid[64];                  /* session id (uuid) */
    char jti[64];                  /* token id */
    int64_t iat, nbf, exp;         /* epoch seconds */
} cdb_token_claims;

/*
 * Signs claims (iss and aud come from cfg) into *token (malloc'd, caller
 * frees). INTERNAL_ERROR on failure.
 */
int cdb_jwt_issue(const cdb_jwt_config *cfg, const cdb_token_claims *claims,
                  char **token, cdb_error *err);

/*
 * Verifies token at time now (epoch seconds) and fills *out. With leeway L
 * a token is refused from now >= exp + L (RFC 7519: "on or after"), and
 * while now < nbf - L or now < iat - L.
 * Errors: UNAUTHORIZED (malformed, bad signature, wrong alg/iss/aud, not yet
 * valid, missing claims) or TOKEN_EXPIRED. Messages never echo the token.
 */
int cdb_jwt_verify(const cdb_jwt_config *cfg, const char *token, int64_t now,
                   cdb_token_claims *out, cdb_error *err);

#endif
