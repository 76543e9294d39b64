/*
 * error.h - the fixed set of coredb error codes and the error object every
 * library call fills on failure.
 *
 * Every fallible library function returns 0 on success or a negative cdb_err
 * and, when given a cdb_error, fills it with the code, a message that is safe
 * to show a client (never SQL, a stack or a secret) and optional details.
 * The HTTP layer maps a code to its status with cdb_err_http_status(); the
 * CLI prints the code's name.
 */
#ifndef COREDB_ERROR_H
#define COREDB_ERROR_H

#include <jansson.h>
#include <stdarg.h>

/* X(enum suffix, value, HTTP status). Values are stable: they are the ABI. */
#define CDB_ERROR_TABLE(X)                         \
    X(INTERNAL_ERROR,               -1, 500)       \
    X(INVALID_JSON,                 -2, 400)       \
    X(VALIDATION_FAILED,            -3, 400)       \
    X(UNKNOWN_COLUMN,               -4, 400)       \
    X(INVALID_FILTER,               -5, 400)       \
    X(UNAUTHORIZED,                 -6, 401)       \
    X(TOKEN_EXPIRED,                -7, 401)       \
    X(TOKEN_REVOKED,                -8, 401)       \
    X(INVALID_CREDENTIALS,          -9, 401)       \
    X(FORBIDDEN,                   -10, 403)       \
    X(NOT_FOUND,                   -11, 404)       \
    X(UNKNOWN_TABLE,               -12, 404)       \
    X(METHOD_NOT_ALLOWED,          -13, 405)       \
    X(NOT_ACCEPTABLE,              -14, 406)       \
    X(CONFLICT,                    -15, 409)       \
    X(MIGRATION_CHECKSUM_MISMATCH, -16, 409)       \
    X(PAYLOAD_TOO_LARGE,           -17, 413)       \
    X(UNSUPPORTED_MEDIA_TYPE,      -18, 415)       \
    X(BACKUP_INVALID,              -19, 422)       \
    X(RATE_LIMITED,                -20, 429)       \
    X(DATABASE_UNAVAILABLE,        -21, 503)       \
    X(POOL_EXHAUSTED,              -22, 503)       \
    X(CACHE_UNAVAILABLE,           -23, 503)       \
    X(DATABASE_TIMEOUT,            -24, 504)       \
    X(CONFIG_INVALID,              -25, 500)       \
    X(MIGRATION_FAILED,            -26, 500)       \
    X(MIGRATION_LOCKED,            -27, 409)       \
    X(TRANSACTION_OUTCOME_UNKNOWN, -28, 503)       \
    X(NOT_IMPLEMENTED,             -29, 501)       \
    X(IDEMPOTENCY_KEY_REUSED,      -30, 422)       \
    X(IDEMPOTENCY_KEY_IN_PROGRESS, -31, 409)       \
    X(MAINTENANCE,                 -32, 503)       \
    X(DATABASE_PRIVILEGE_MISSING,  -33, 503)       \
    X(DECRYPTION_FAILED,           -34, 422)       \
    X(BACKUP_STORAGE_UNAVAILABLE,  -35, 503)       \
    X(PRECONDITION_FAILED,         -36, 409)

typedef enum cdb_err {
    CDB_OK = 0,
#define CDB_ERR_ENUM_(name, value, status) CDB_ERR_##name = value,
    CDB_ERROR_TABLE(CDB_ERR_ENUM_)
#undef CDB_ERR_ENUM_
} cdb_err;

typedef struct cdb_error {
    cdb_err code;          /* CDB_OK when nothing failed */
    char    message[256];  /* client-safe text */
    json_t *details;       /* owned; NULL or a JSON object */
} cdb_error;

/* "VALIDATION_FAILED" for CDB_ERR_VALIDATION_FAILED; "OK" for CDB_OK. */
const char *cdb_err_name(cdb_err code);
/* The HTTP status for a code (500 for unknown codes). */
int cdb_err_http_status(cdb_err code);

void cdb_error_init(cdb_error *err);
/* Frees the details and resets to CDB_OK. */
void cdb_error_destroy(cdb_error *err);

/*
 * Sets code and printf-style message, replacing what was there (details
 * included: add details after setting); returns code
 * so callers can `return cdb_error_set(err, ...)`. err may be NULL.
 */
cdb_err cdb_error_set(cdb_error *err, cdb_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
cdb_err cdb_error_vset(cdb_error *err, cdb_err code, const char *fmt, va_list ap);

/*
 * An allocation failed: INTERNAL_ERROR "Out of memory" (docs/architecture.md,
 * "Out of memory"). Returns the code; err may be NULL. Allocates nothing.
 */
cdb_err cdb_error_oom(cdb_error *err);

/*
 * cdb_error_set plus details[key] = value (a string) when both are given:
 * the common "what failed, and which field" of validation errors.
 */
cdb_err cdb_error_set_detail(cdb_error *err, cdb_err code, const char *key, const char *value,
                             const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Adds details[key] = value (value reference is stolen). err may be NULL. */
void cdb_error_detail(cdb_error *err, const char *key, json_t *value);

/* Moves src into dst (dst's old details are freed, src is reset). */
void cdb_error_move(cdb_error *dst, cdb_error *src);

#endif
